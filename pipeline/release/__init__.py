"""The reproducible IS4 release: official layout, card, Croissant, checksums, archive, verification."""

from is4.pipeline.release.archive import VerifyReport, safe_extract, verify_release, write_archive
from is4.pipeline.release.build import build_release
from is4.pipeline.release.croissant import validate_croissant
from is4.pipeline.release.figures import box_area_figure
from is4.pipeline.release.hf import load_as_hf_dataset
from is4.pipeline.release.layout import ReleaseError

__all__ = [
    "ReleaseError",
    "VerifyReport",
    "box_area_figure",
    "build_release",
    "load_as_hf_dataset",
    "safe_extract",
    "validate_croissant",
    "verify_release",
    "write_archive",
]
