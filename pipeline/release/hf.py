"""Hugging Face datasets: the schema of `hf/instances.parquet` and loading a release as a `datasets.Dataset`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from is4.pipeline.release.archive import check_rel
from is4.pipeline.release.layout import HF_PARQUET, SAMPLE_RATE, ReleaseError

HF_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("label", pa.string()),
        pa.field("clip_id", pa.string()),
        pa.field("style", pa.string()),
        pa.field("reused", pa.bool_()),
        # Plain `string`, not `large_string`: datasets casts string paths to Image/Audio, not large strings.
        pa.field("image", pa.string()),
        pa.field("audio", pa.string()),
        pa.field("mask", pa.string()),
        pa.field("gt_box", pa.list_(pa.int64())),
    ]
)


def hf_features(decode_audio: bool = True) -> Any:
    """The `datasets.Features` of `hf/instances.parquet`."""
    from datasets import Audio, Features, Image, Value

    try:
        from datasets import List

        box = List(Value("int64"), length=4)
    except ImportError:  # datasets < 4
        from datasets import Sequence

        box = Sequence(Value("int64"), length=4)
    return Features(
        {
            "instance_id": Value("string"),
            "image_id": Value("string"),
            "category": Value("string"),
            "label": Value("string"),
            "clip_id": Value("string"),
            "style": Value("string"),
            "reused": Value("bool"),
            "image": Image(),
            "audio": Audio(sampling_rate=SAMPLE_RATE, decode=decode_audio),
            "mask": Image(),
            "gt_box": box,
        }
    )


def load_as_hf_dataset(release_dir: str | Path, decode_audio: bool = True) -> Any:
    """The release as a `datasets.Dataset`: image and mask are `Image()`, audio `Audio(sampling_rate=16000)`.

    `hf/instances.parquet` keeps paths relative to the release; they are made absolute in a temporary copy that
    `datasets.load_dataset("parquet", ...)` reads into memory, so nothing depends on the working directory and no
    cache is left behind. `decode_audio=False` gives `{"path", "bytes"}` audio (decoding needs torchcodec).
    """
    import datasets

    root = Path(release_dir).resolve()
    source = root / HF_PARQUET
    if not source.is_file():
        raise ReleaseError(f"{root}: no {HF_PARQUET}")
    table = pq.read_table(source)
    for col in ("image", "audio", "mask"):
        idx = table.schema.get_field_index(col)
        paths = [
            None if p is None else str(root / check_rel(p, f"{source} column {col}"))
            for p in table.column(col).to_pylist()
        ]
        table = table.set_column(idx, pa.field(col, pa.string()), pa.array(paths, type=pa.string()))
    with tempfile.TemporaryDirectory(prefix="is4-hf-") as tmp:
        data_file = Path(tmp) / "instances.parquet"
        pq.write_table(table, data_file)
        return datasets.load_dataset(
            "parquet",
            data_files=str(data_file),
            split="train",
            features=hf_features(decode_audio),
            keep_in_memory=True,
            cache_dir=str(Path(tmp) / "cache"),
        )
