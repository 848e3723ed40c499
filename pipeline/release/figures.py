"""The dataset card's figures (matplotlib), as deterministic PNG bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from is4.pipeline.release.encoders import png_bytes


def box_area_figure(area_fractions: list[float]) -> bytes:
    """Histogram of box area / frame area, as deterministic PNG bytes (Agg, no pyplot state)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"font.family": "DejaVu Sans", "path.simplify": True}):
        fig = Figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        ax.hist(area_fractions, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
        ax.set_xlabel("box area / frame area")
        ax.set_ylabel("instances")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("IS4 box-area distribution")
        fig.tight_layout()
        return png_bytes(fig)


def categories_figure(counts: dict[str, int]) -> bytes:
    """Horizontal bar chart of instances per category, as deterministic PNG bytes."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = sorted(counts)
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}):
        fig = Figure(figsize=(6, max(2.0, 0.22 * len(names) + 1.0)))
        ax = fig.add_subplot()
        ax.barh(range(len(names)), [counts[n] for n in names], color="#55a868")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("instances")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("IS4 instances per category")
        fig.tight_layout()
        return png_bytes(fig)


GALLERY_IMAGES = 6
_OBJECT_COLOURS = ("#e8474c", "#3b8bd9")  # first and second object of an image (categories in sorted order)


def sample_gallery(samples: list[tuple[Any, list[tuple[str, Any, list[int]]]]]) -> bytes:
    """A grid of frames, each with its objects' masks (one colour per object), boxes and category names.

    `samples`: (frame as an RGB array, [(category, boolean mask array, [x1, y1, x2, y2]), ...]) per image.
    Deterministic PNG bytes.
    """
    import matplotlib
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cols = min(3, len(samples))
    rows = -(-len(samples) // cols)
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}):
        fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
        for i, (frame, objects) in enumerate(samples):
            ax = fig.add_subplot(rows, cols, i + 1)
            shown = np.asarray(frame, dtype=float) / 255.0
            names = []
            for (category, mask, box), colour in zip(objects, _OBJECT_COLOURS):
                rgb = np.asarray(to_rgb(colour))
                m = np.asarray(mask, dtype=bool)
                shown[m] = 0.55 * shown[m] + 0.45 * rgb
                x1, y1, x2, y2 = box
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=2, ec=colour))
                ax.text(x1 + 2, y1 + 2, category, color="white", fontsize=8, va="top", backgroundcolor=colour)
                names.append(category)
            ax.imshow(shown, interpolation="nearest")
            ax.set_title(" + ".join(names), fontsize=9)
            ax.set_axis_off()
        fig.tight_layout()
        return png_bytes(fig)
