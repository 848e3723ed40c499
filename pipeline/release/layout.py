"""What the release modules share: the error they raise and the fixed names of the released layout."""

from __future__ import annotations

from pathlib import Path

from is4.manifests.errors import FatalError

SAMPLE_RATE = 16_000
HF_PARQUET = "hf/instances.parquet"
# The manifests shipped byte for byte; `clips` is shipped as the subset the instances use.
COPIED_MANIFESTS = ("categories", "images", "verification", "annotations", "instances")
CC_BY_4 = "https://creativecommons.org/licenses/by/4.0/"
RELEASES_DIR = "releases"
MASK_THRESHOLD = 127  # a released mask pixel is object where its value is > 127


def release_paths(workdir: Path, version: str) -> tuple[Path, Path]:
    """`WORK/releases/is4-<version>` and its archive `WORK/releases/is4-<version>.tar.gz`."""
    target = Path(workdir) / RELEASES_DIR / f"is4-{version}"
    return target, target.with_name(f"{target.name}.tar.gz")


class ReleaseError(FatalError, ValueError):
    """A release cannot be built from this work directory, or a release/archive is unsafe or malformed."""
