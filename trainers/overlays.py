"""Overlay sheets: a PNG grid of a run's maps on a release (image, map, ground truth, IoU), one per evaluated epoch.

Rows are instances: the first `rows` of the ground truth's order (the same ones every epoch, so sheets compare);
columns: the frame, the map as scored (resized to 224×224 by the protocol) over the frame, the ground-truth region
over the frame; each row's title gives the instance, its IoU and adaptive IoU (those of `is4 eval
--per-instance`). Drawn with matplotlib's Agg backend, without the date in the PNG (same maps, same bytes).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.evaluate import Scored
from is4.pipeline.evaluation.formats import FileFinder
from is4.pipeline.evaluation.predictions import NpzMaps, prepare_map

SHEET_ROWS = 8


def overlay_sheet(release: str | Path, predictions: str | Path, scored: Scored, *, rows: int = SHEET_ROWS) -> bytes:
    """The PNG bytes of the overlay sheet of `predictions` (scored as `scored`) on `release` (module doc)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    release = Path(release)
    truth, protocol = scored.truth, scored.protocol
    finder = FileFinder(release if release.is_dir() else release.parent)
    n = min(rows, len(truth))
    full, _ = truth.regions(0, n)
    s = metrics.FRAME
    fig = Figure(figsize=(6.6, 2.3 * n), dpi=80)
    axes = fig.subplots(n, 3, squeeze=False)
    with NpzMaps(predictions) as source:
        for i in range(n):
            iid = truth.instance_ids[i]
            frame_path = finder.find(f"visual_frames/{iid}.jpg")
            if frame_path is not None:
                with Image.open(frame_path) as im:
                    frame = np.asarray(im.convert("RGB").resize((s, s), Image.Resampling.BILINEAR))
            else:
                frame = np.full((s, s, 3), 127, np.uint8)
            heat = np.asarray(prepare_map(source.read(iid), protocol), dtype=np.float64)
            region = full[i].reshape(s, s)
            iou, adaptive = scored.per_instance["iou"][i], scored.per_instance["iou_adaptive"][i]
            a_img, a_map, a_gt = axes[i]
            a_img.imshow(frame)
            a_img.set_title(iid, fontsize=8)
            a_map.imshow(frame)
            a_map.imshow(heat, cmap="jet", alpha=0.5)
            a_map.set_title(f"map  IoU {iou:.2f} (adaptive {adaptive:.2f})", fontsize=8)
            a_gt.imshow(frame)
            a_gt.imshow(np.ma.masked_where(~region, region), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            a_gt.set_title(f"ground truth ({truth.gt})", fontsize=8)
            for ax in axes[i]:
                ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
