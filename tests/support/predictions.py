"""A synthetic two-disc release with oracle, centre and swapped prediction files (the predictions view's tests and
the App's browser test use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from is4.pipeline.evaluation.evaluate import write_baseline_predictions
from is4.pipeline.evaluation.formats import load_ground_truth
from is4.trainers import synthetic


def make_predictions(root: Path, n_images: int = 4) -> tuple[Path, dict[str, Path]]:
    """A synthetic release and its oracle, centre and swapped prediction files."""
    release = synthetic.write_release(root / "IS4", n_images)
    files = write_baseline_predictions(release, root / "baselines")
    truth = load_ground_truth(release, "box")
    ids = truth.instance_ids
    assert truth.image_ids is not None
    with np.load(files["oracle_box"]) as oracle:
        by_image: dict[str, list[str]] = {}
        for iid, image_id in zip(ids, truth.image_ids):
            by_image.setdefault(image_id, []).append(iid)
        swapped = {iid: oracle[next(o for o in by_image[img] if o != iid)] for iid, img in zip(ids, truth.image_ids)}
    np.savez(root / "swapped.npz", **swapped)
    return release, {"oracle": files["oracle_box"], "centre": files["centre"], "swapped": root / "swapped.npz"}
