"""The VGGSound and VGG-SS class lists shipped as package data (CC BY 4.0, see `is4/data/ATTRIBUTION.md`)."""

from __future__ import annotations

import csv
import io
from functools import lru_cache
from importlib import resources


def _data_text(name: str) -> str:
    return resources.files("is4").joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def vggsound_classes() -> tuple[dict[str, str], ...]:
    """The 309 VGGSound classes as rows with `label`, `clips` and `group`."""
    return tuple(csv.DictReader(io.StringIO(_data_text("vggsound_classes.csv"))))


@lru_cache(maxsize=1)
def vggsound_labels() -> tuple[str, ...]:
    """The 309 VGGSound class labels."""
    return tuple(row["label"] for row in vggsound_classes())


@lru_cache(maxsize=1)
def vggss_labels() -> tuple[str, ...]:
    """The 221 labels of the VGG-SS localisation test set."""
    return tuple(line.strip() for line in _data_text("vggss_classes.txt").splitlines() if line.strip())
