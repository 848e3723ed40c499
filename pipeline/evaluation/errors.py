"""The evaluation harness's error and warning, and how it names offending items in a message."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from is4.manifests.errors import FatalError

SHOW = 5  # offending items named in a message


class EvaluationError(FatalError, ValueError):
    """Ground truth or predictions cannot be scored; `instances` names the offending instances (if any)."""

    def __init__(self, message: str, instances: Sequence[str] = ()):
        super().__init__(message)
        self.instances = list(instances)


class EvaluationWarning(UserWarning):
    """Something was ignored or is suspicious (maps for other instances, constant maps, boxes off the frame)."""


def few(items: Sequence, describe: Callable | None = None) -> str:
    """The first SHOW items, comma-separated, and how many more there are."""
    shown = [describe(item) if describe else str(item) for item in list(items)[:SHOW]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", … ({more} more)" if more > 0 else "")
