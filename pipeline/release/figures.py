"""The dataset card's figures (matplotlib), as deterministic PNG bytes."""

from __future__ import annotations

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
