"""Row factories: complete, valid manifest rows to write in a test's work directory."""

from __future__ import annotations

from typing import Any

import pandas as pd

from is4.manifests.schema import CLIPS


def clip_row(row: int, **overrides: Any) -> dict[str, Any]:
    """A complete, valid `clips` row; every optional column null unless overridden."""
    ytid = f"abcdefghij{row % 10}"
    record: dict[str, Any] = {name: None for name in CLIPS.column_names}
    record.update(
        row=row,
        clip_id=f"{ytid}_{row:06d}",
        ytid=ytid,
        start_sec=row,
        label="dog barking",
        split="train",
        status="ok",
        retryable=False,
        attempts=1,
    )
    record.update(overrides)
    return record


def clips_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(CLIPS.column_names))


def sample_frame() -> pd.DataFrame:
    return clips_frame(
        clip_row(
            3,
            source_path="sources/c.mp4",
            source_bytes=123_456,
            frame_width=224,
            frame_height=224,
            frame_path="frames/c.jpg",
            source_audio_sec=10.0,
            peak_dbfs=-3.5,
        ),
        clip_row(1, status="failed", reason="unavailable: private video", retryable=True, attempts=3),
        clip_row(
            2,
            clip_id=None,
            ytid="bad id",
            start_sec=None,
            label="nope",
            status="invalid",
            reason="invalid-ytid: 'bad id'",
        ),
    )
