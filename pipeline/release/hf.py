"""Hugging Face datasets: `hf/instances.parquet` (media embedded), the card's YAML block, and loading a release.

The parquet file embeds the frame, the mask and the wav as `{"bytes", "path"}` structs, the storage of
`datasets.Image`/`datasets.Audio`, so `datasets.load_dataset("<release dir or Hub repo>")` returns typed columns
without resolving any path. `datasets` decodes audio only through torchcodec (which needs system FFmpeg libraries),
so the card declares the audio column `Audio(sampling_rate=16000, decode=False)`: a row's audio is the wav's bytes and
its path, read with any wav reader (`read_wav_bytes`, or `scipy.io.wavfile`); with torchcodec installed,
`ds.cast_column("audio", Audio(sampling_rate=16000))` decodes it.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from is4.pipeline.release.layout import HF_PARQUET, SAMPLE_RATE, ReleaseError

HF_SPLIT = "test"  # IS4 is an evaluation benchmark: the whole release is its test split

_MEDIA = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("label", pa.string()),
        pa.field("clip_id", pa.string()),
        pa.field("style", pa.string()),
        pa.field("reused", pa.bool_()),
        pa.field("image", _MEDIA),
        pa.field("audio", _MEDIA),
        pa.field("mask", _MEDIA),
        pa.field("gt_box", pa.list_(pa.int64(), 4)),
    ]
)

# The `features` of the card's `dataset_info`, in `datasets`' YAML form (`Features._to_yaml_list`).
HF_YAML_FEATURES: list[dict[str, Any]] = [
    {"name": "instance_id", "dtype": "string"},
    {"name": "image_id", "dtype": "string"},
    {"name": "category", "dtype": "string"},
    {"name": "label", "dtype": "string"},
    {"name": "clip_id", "dtype": "string"},
    {"name": "style", "dtype": "string"},
    {"name": "reused", "dtype": "bool"},
    {"name": "image", "dtype": "image"},
    {"name": "audio", "dtype": {"audio": {"sampling_rate": SAMPLE_RATE, "decode": False}}},
    {"name": "mask", "dtype": "image"},
    {"name": "gt_box", "list": "int64", "length": 4},
]


def media(root: Path, rel: str) -> dict[str, Any]:
    """The `{"bytes", "path"}` struct of the release file `rel` (path relative to the release root)."""
    return {"bytes": (root / rel).read_bytes(), "path": rel}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def card_metadata(title: str, instances: int, parquet_bytes: int) -> dict[str, Any]:
    """The card's YAML block: what the Hub and `datasets.load_dataset` read (configs, features, licence, tasks).

    The split's row count (which `datasets` checks on loading) and the parquet file's size enter `datasets`' cache
    key: without them two releases of the same name (the demo's and the paper's `is4-0.1.0`) would share one cache
    entry, and loading the second would return the first's rows.
    """
    return {
        "pretty_name": title,
        "license": "cc-by-4.0",
        "language": ["en"],
        "task_categories": ["image-segmentation", "object-detection", "audio-classification"],
        "tags": ["audio-visual", "sound-source-localization", "vggsound", "synthetic-images"],
        "size_categories": [_size_category(instances)],
        "configs": [{"config_name": "default", "data_files": [{"split": HF_SPLIT, "path": HF_PARQUET}]}],
        "dataset_info": {
            "config_name": "default",
            "features": HF_YAML_FEATURES,
            "splits": [{"name": HF_SPLIT, "num_examples": instances}],
            "download_size": parquet_bytes,
        },
    }


def hf_features() -> Any:
    """The `datasets.Features` the card declares."""
    from datasets import Features

    return Features._from_yaml_list(HF_YAML_FEATURES)


def read_wav_bytes(data: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, samples) of a row's `audio["bytes"]`, without torchcodec."""
    from scipy.io import wavfile

    rate, samples = wavfile.read(io.BytesIO(data))
    return int(rate), samples


def load_as_hf_dataset(release_dir: str | Path) -> Any:
    """The release as a `datasets.Dataset`: `datasets.load_dataset(release_dir, split="test")`, read into memory.

    The card's YAML block gives the columns their types (image/mask `Image()`, audio `Audio(decode=False)`); the
    `datasets` cache goes to a temporary directory, so nothing is left behind.
    """
    import datasets

    root = Path(release_dir).resolve()
    if not (root / HF_PARQUET).is_file():
        raise ReleaseError(f"{root}: no {HF_PARQUET}")
    with tempfile.TemporaryDirectory(prefix="is4-hf-") as tmp:
        return datasets.load_dataset(str(root), split=HF_SPLIT, keep_in_memory=True, cache_dir=tmp)
