"""Package IS4 as a verifiable, byte-reproducible release in the official layout.

`build_release` writes `WORK/releases/is4-<version>/` (built in a staging directory beside it and renamed into
place) and `WORK/releases/is4-<version>.tar.gz`:

```
is4-<version>/
  visual_frames/<instance_id>.jpg   the image, resized to image_size × image_size (one file per instance)
  audio_wav/<instance_id>.wav       the matched VGGSound clip, 16 kHz
  gt_masks/<instance_id>.jpg        the SAM mask resized the same way (nearest neighbour); object where > 127
  is4_bbox.json                     [{"image", "audio", "gt_box": [x1, y1, x2, y2]}]  (pixels of the frame)
  is4_seg.json                      [{"image", "audio", "gt_box": "gt_masks/<id>.jpg"}]
  hf/instances.parquet              one row per instance, paths relative to the release (Hugging Face datasets)
  manifests/*.parquet               the is4 manifests behind the release
  card/*.png                        figures of the dataset card
  README.md                         the dataset card
  croissant.json                    Croissant 1.1 metadata, validated with mlcroissant
  build-config.yaml                 the build configuration, with the resolved model revisions
  SHA256SUMS                        sha256sum format, every file but itself
```

The same manifests and files give the same bytes, directory and archive: every encoder is deterministic (PIL
JPEG at a fixed quality without EXIF, Parquet written from explicit Arrow schemas, matplotlib PNGs without a
software tag or timestamp, JSON with sorted keys) and the archive has sorted members, mtime 0, uid/gid 0, empty
owner names, fixed modes and a gzip header without time or file name.

`verify_release` re-hashes a release directory or archive against its SHA256SUMS; an archive is checked member by
member (absolute paths, `..`, links, devices are refused) before anything is extracted.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from is4 import __version__
from is4.config import STAGES, ReleaseConfig
from is4.manifests.atomic import atomic_path, replace_directory
from is4.manifests.checksum import sha256_file
from is4.manifests.ids import FILE_ID_RE
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.schema import CLIPS

RELEASES_DIR = "releases"
SAMPLE_RATE = 16_000
JPEG_QUALITY = 95
MASK_THRESHOLD = 127  # a released mask pixel is object where its value is > 127
SUMS_NAME = "SHA256SUMS"
HF_PARQUET = "hf/instances.parquet"
CARD_FIGURES = ("card/box_area.png", "card/categories.png")
# The manifests shipped byte for byte; `clips` is shipped as the subset the instances use.
COPIED_MANIFESTS = ("categories", "images", "verification", "annotations", "instances")
CC_BY_4 = "https://creativecommons.org/licenses/by/4.0/"

_SUM_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")

HF_SCHEMA = pa.schema([
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
])


class ReleaseError(ValueError):
    """A release cannot be built from this work directory, or a release/archive is unsafe or malformed."""


# --------------------------------------------------------------------------------------------------------------------
# Small deterministic encoders
# --------------------------------------------------------------------------------------------------------------------


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, separators=(",", ": ")) + "\n").encode()


def _jpeg_bytes(image: Any) -> bytes:
    """PIL image → JPEG bytes: fixed quality and chroma subsampling (4:2:0), no EXIF/ICC/comment, baseline."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False, progressive=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scale_box(box: list[float], width: int, height: int, size: int) -> list[int]:
    """A pixel-edge box `[x1, y1, x2, y2]` (x2/y2 exclusive) of a W×H image in the size×size frame.

    The frame is a plain resize (x × size/W, y × size/H), so edges scale by the same factors; they are rounded
    half up, which is where a nearest-neighbour resize of the mask puts the object's first and one-past-last
    pixel (output pixel j samples source pixel floor((j + 0.5) · W/size)). The box keeps at least one pixel.
    """
    sx, sy = size / width, size / height
    x1, y1, x2, y2 = (_half_up(box[0] * sx), _half_up(box[1] * sy), _half_up(box[2] * sx), _half_up(box[3] * sy))
    x1, y1 = min(max(x1, 0), size - 1), min(max(y1, 0), size - 1)
    x2, y2 = min(max(x2, x1 + 1), size), min(max(y2, y1 + 1), size)
    return [x1, y1, x2, y2]



# --------------------------------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------------------------------


def _frame_and_size(path: Path, size: int) -> tuple[bytes, int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ReleaseError(f"{path}: cannot read image: {exc}") from exc
    width, height = rgb.size
    frame = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return _jpeg_bytes(frame), width, height


def _mask_jpeg(path: Path, width: int, height: int, size: int, instance_id: str) -> bytes:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ReleaseError(f"{instance_id}: cannot read mask {path}: {exc}") from exc
    if arr.shape != (height, width):
        raise ReleaseError(f"{instance_id}: mask {path} is {arr.shape[1]}x{arr.shape[0]}, the image {width}x{height}")
    binary = Image.fromarray(np.where(arr >= 128, 255, 0).astype(np.uint8))
    return _jpeg_bytes(binary.resize((size, size), Image.Resampling.NEAREST))


def _check_wav(path: Path, instance_id: str) -> None:
    from scipy.io import wavfile

    try:
        rate, _ = wavfile.read(path, mmap=True)
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{instance_id}: cannot read audio {path}: {exc}") from exc
    if rate != SAMPLE_RATE:
        raise ReleaseError(f"{instance_id}: audio {path} is {rate} Hz, the release ships {SAMPLE_RATE} Hz")


# --------------------------------------------------------------------------------------------------------------------
# Figures and the dataset card
# --------------------------------------------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software tag, no creation time: the PNG bytes depend on the data (and the matplotlib version) only.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


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
        return _png(fig)


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
        return _png(fig)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _attribution_text() -> str:
    text = importlib.resources.files("is4").joinpath("data/ATTRIBUTION.md").read_text(encoding="utf-8")
    return text.strip()


def _quote(text: str) -> str:
    """Markdown blockquote of `text`, line for line (so its headings do not become headings of the card)."""
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines())


def _resolved_models(workdir: Path, images: pd.DataFrame, annotations: pd.DataFrame) -> list[dict[str, str]]:
    """(role, model_id, revision) of every model the manifests say produced this release."""
    found: set[tuple[str, str, str]] = set()

    def add(role: str, frame: pd.DataFrame, id_col: str, rev_col: str) -> None:
        if id_col not in frame.columns:
            return
        for model_id, rev in zip(frame[id_col], frame[rev_col] if rev_col in frame.columns else [None] * len(frame)):
            if not is_blank(model_id):
                found.add((role, str(model_id), "" if is_blank(rev) else str(rev)))

    add("image_generator", images, "model_id", "model_revision")
    add("segmenter", annotations, "model_id", "model_revision")
    add("detector", annotations, "detector_id", "detector_revision")
    if manifest_path(workdir, "prescreen").is_file():
        add("prescreen", read_manifest(workdir, "prescreen"), "model_id", "model_revision")
    return [{"role": r, "model_id": m, "revision": v} for r, m, v in sorted(found)]


_NOT_METRICS = frozenset({"gt", "instances", "images"})


def _baseline_table(scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rows task × baseline, one column per metric (in the order the scores list them)."""
    metrics: list[str] = []
    for task in scores.values():
        for base in task.values():
            for key, value in base.items():
                numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                if key not in _NOT_METRICS and numeric and key not in metrics:
                    metrics.append(key)
    rows = []
    for task in sorted(scores):
        for base in sorted(scores[task]):
            rows.append([task, base] + [
                f"{scores[task][base][m]:.2f}" if m in scores[task][base] else "–" for m in metrics
            ])
    return _md_table(["task", "baseline"] + metrics, rows)


def _card(
    cfg: ReleaseConfig,
    build_config: dict[str, Any],
    stats: dict[str, Any],
    models: list[dict[str, str]],
    scores: dict[str, Any] | None,
) -> str:
    v = cfg.version
    image_models = sorted({m["model_id"] for m in models if m["role"] == "image_generator"})
    image_model_text = ", ".join(f"`{m}`" for m in image_models) or "(not recorded)"
    configured = build_config.get("models") or {}
    model_rows = []
    for m in models:
        conf = configured.get(m["role"]) or {}
        model_rows.append([m["role"], f"`{m['model_id']}`", f"`{conf.get('revision', '')}`" if conf else "–",
                           f"`{m['revision']}`" if m["revision"] else "–"])
    stage_text = {
        "ingest": "VGGSound clips downloaded (10-s sections), 16 kHz mono wav and centre frame extracted",
        "categories": "VGG-SS class labels mapped to depictable object categories (rules, reviewed overrides)",
        "prompts": "category pairs × templates × styles, one seed per image",
        "generate": "images generated with the image model below",
        "prescreen": "CLIP scores order the human verification queue",
        "verify": "every image accepted or rejected (both objects present, recognisable, no extra object)",
        "annotate": "each object of an accepted image segmented with SAM (detector box prompt), refined by clicks",
        "match": "each object paired with a real VGGSound clip of its category (seeded, each clip once while the "
                 "pool lasts; clips of training lists excluded)",
        "caption": "training-side LLM guidance (image caption, audio caption, sounding-object phrase) for "
                   "VGGSound clips; not part of this package",
        "release": "this package",
    }
    stage_lines = "\n".join(f"{i}. **{s}**: {stage_text[s]}" for i, s in enumerate(STAGES, start=1))
    cat_rows = [[c, n["instances"], n["images"], n["clips"], n["reused"]]
                for c, n in sorted(stats["per_category"].items())]
    style_rows = [[s, n["images"], n["instances"]] for s, n in sorted(stats["per_style"].items())]
    area = stats["area_summary"]
    s = cfg.image_size
    if scores is None:
        baselines = ("Not computed: the evaluation harness scores 224×224 frames and this release has "
                     f"{s}×{s} frames.")
    else:
        baselines = ("Scores (%) of reference baselines on this release (`is4.pipeline.evaluation.evaluate.baseline_scores`; "
                     "random: seeded noise, centre: a centred Gaussian, oracle: the ground truth itself):\n\n"
                     + _baseline_table(scores))
    return f"""# {cfg.title} — release {v}

IS4 is a benchmark for interactive sound source localisation: every image shows **two objects** that could make a
sound, generated from a text prompt; each object has a segmentation mask and a box, and is paired with a **real
VGGSound audio clip** of its category. Given the image and one object's audio, a model has to localise that object.
The release uses the file layout of the official IS4 release, so existing evaluation code reads it unchanged.

| | count |
| --- | --- |
| instances (image + one object's audio) | {stats['instances']} |
| images | {stats['images']} |
| categories | {stats['categories']} |
| distinct audio clips | {stats['clips']} |
| instances whose clip is reused | {stats['reused']} |

## Files

- `visual_frames/<instance_id>.jpg`: the image resized to {s}×{s} (one file per instance, as in the official release).
- `audio_wav/<instance_id>.wav`: the instance's VGGSound clip, 16 kHz.
- `gt_masks/<instance_id>.jpg`: the object's mask, resized like the image (nearest neighbour); object where > {MASK_THRESHOLD}.
- `is4_bbox.json`: `[{{"image": ..., "audio": ..., "gt_box": [x1, y1, x2, y2]}}]`, pixel edges in the {s}×{s} frame
  (x2/y2 exclusive); `is4_seg.json`: the same with `"gt_box": "gt_masks/<instance_id>.jpg"`. Paths are relative to
  the release root; `instance_id = <image_id>_<category>`.
- `hf/instances.parquet`: one row per instance (ids, category, VGGSound label and clip id, style, reuse flag, image,
  audio and mask paths relative to the release root, `gt_box`).
- `manifests/`: the is4 manifests behind the release (categories, images, verification, annotations, instances as
  written by the build; clips restricted to the released instances' clips). Their paths are relative to the build's
  work directory, not to the release.
- `croissant.json` (Croissant 1.1 metadata), `build-config.yaml` (the build configuration), `SHA256SUMS`.

Check a copy with `sha256sum -c SHA256SUMS` (or `is4.pipeline.release.build.verify_release`).

### Loading with Hugging Face `datasets`

```python
from is4.pipeline.release.build import load_as_hf_dataset
ds = load_as_hf_dataset("is4-{v}")   # image/mask: Image(), audio: Audio(sampling_rate=16000)
```

which is `datasets.load_dataset("parquet", data_files=..., features=...)` on `hf/instances.parquet` with the
paths made absolute. Decoding audio in `datasets` needs `torchcodec`; without it, read the wav from
`ds.cast_column("audio", Audio(decode=False))[i]["audio"]["path"]`.

## How it was built

Built by is4-builder {__version__} with seed {build_config.get('seed', '–')}, stages:

{stage_lines}

Models (configured revision, and the exact revision the manifests record):

{_md_table(["role", "model", "configured", "resolved"], model_rows) if model_rows else "(none recorded)"}

The full configuration is `build-config.yaml`.

## Statistics

### Per category

{_md_table(["category", "instances", "images", "distinct clips", "reused clips"], cat_rows)}

![instances per category](card/categories.png)

### Per style

{_md_table(["style", "images", "instances"], style_rows)}

### Box area

Box area as a fraction of the frame: min {area['min']:.3f}, median {area['median']:.3f}, mean {area['mean']:.3f},
max {area['max']:.3f}.

![box-area distribution](card/box_area.png)

## Baselines

{baselines}

## Licences and attribution

- **Audio and class labels.** The clips are 10-s sections of YouTube videos listed in VGGSound; the class
  labels and clip lists come from VGGSound and VGG-SS (Chen et al. 2020, 2021), released by the Oxford Visual
  Geometry Group under CC BY 4.0 ({CC_BY_4}). The audio itself remains subject to the rights of its uploaders
  and the terms of the video platform.
- **Images.** The images are generated by {image_model_text}; the licence of that image model (see its model
  card) applies to the generated images and to their use.
- **Masks, boxes, pairings and metadata** made by this build: CC BY 4.0.

Attribution text shipped with the class lists (kept verbatim):

{_quote(_attribution_text())}

## How to cite

Cite this release and the datasets it draws on:

```bibtex
@misc{{is4_release_{re.sub(r"[^0-9A-Za-z]", "_", v)},
  title   = {{{cfg.title}, release {v}}},
  note    = {{Built with is4-builder {__version__}}}
}}
@inproceedings{{chen2020vggsound,
  title     = {{VGGSound: A Large-scale Audio-Visual Dataset}},
  author    = {{Chen, Honglie and Xie, Weidi and Vedaldi, Andrea and Zisserman, Andrew}},
  booktitle = {{ICASSP}},
  year      = {{2020}}
}}
@inproceedings{{chen2021localizing,
  title     = {{Localizing Visual Sounds the Hard Way}},
  author    = {{Chen, Honglie and Xie, Weidi and Afouras, Triantafyllos and Nagrani, Arsha and Vedaldi, Andrea and Zisserman, Andrew}},
  booktitle = {{CVPR}},
  year      = {{2021}}
}}
```
"""


# --------------------------------------------------------------------------------------------------------------------
# Croissant
# --------------------------------------------------------------------------------------------------------------------

CROISSANT_CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}


def _croissant(root: Path, cfg: ReleaseConfig, stats: dict[str, Any], image_models: list[str]) -> dict[str, Any]:
    def file_object(id_: str, rel: str, fmt: str, description: str) -> dict[str, Any]:
        return {"@type": "cr:FileObject", "@id": id_, "name": id_, "description": description, "contentUrl": rel,
                "encodingFormat": fmt, "sha256": sha256_file(root / rel)}

    def file_set(id_: str, includes: str, fmt: str, description: str) -> dict[str, Any]:
        return {"@type": "cr:FileSet", "@id": id_, "name": id_, "description": description, "includes": includes,
                "encodingFormat": fmt}

    distribution = [
        file_object("instances-parquet", HF_PARQUET, "application/x-parquet",
                    "one row per instance; image, audio and mask paths relative to the release root"),
        file_object("is4-bbox-json", "is4_bbox.json", "application/json", "official box annotations"),
        file_object("is4-seg-json", "is4_seg.json", "application/json", "official mask annotations"),
    ]
    for table in sorted((*COPIED_MANIFESTS, "clips")):
        distribution.append(file_object(f"manifest-{table}", f"manifests/{table}.parquet", "application/x-parquet",
                                        f"is4 {table} manifest"))
    distribution += [
        file_set("visual-frames", "visual_frames/*.jpg", "image/jpeg", "frames, one per instance"),
        file_set("audio-wav", "audio_wav/*.wav", "audio/wav", "16 kHz VGGSound clips, one per instance"),
        file_set("gt-masks", "gt_masks/*.jpg", "image/jpeg", "object masks (> 127 is object)"),
    ]

    def parquet_field(name: str, data_type: str, description: str, **extra: Any) -> dict[str, Any]:
        return {"@type": "cr:Field", "@id": f"instances/{name}", "name": name, "description": description,
                "dataType": data_type, **extra,
                "source": {"fileObject": {"@id": "instances-parquet"}, "extract": {"column": name}}}

    fields = [
        parquet_field("instance_id", "sc:Text", "<image_id>_<category>: the file stem of every file of the instance"),
        parquet_field("category", "sc:Text", "category id of the sounding object"),
        parquet_field("clip_id", "sc:Text", "VGGSound clip id (<YouTube id>_<start second>)"),
        parquet_field("audio", "sc:Text", "path of the 16 kHz wav, relative to the release root"),
        parquet_field("mask", "sc:Text", "path of the mask JPEG, relative to the release root"),
        parquet_field("gt_box", "sc:Integer",
                      f"[x1, y1, x2, y2] pixel edges in the {cfg.image_size}x{cfg.image_size} frame, x2/y2 exclusive",
                      isArray=True, arrayShape="4"),
        {"@type": "cr:Field", "@id": "instances/frame_id", "name": "frame_id",
         "description": "the frame's file stem (joins the frame files to the instance rows)", "dataType": "sc:Text",
         "source": {"fileSet": {"@id": "visual-frames"}, "extract": {"fileProperty": "filename"},
                    # Matches the file name and, once joined, the bare stem.
                    "transform": {"regex": "^(.*?)(?:\\.jpg)?$"}},
         "references": {"fileObject": {"@id": "instances-parquet"}, "extract": {"column": "instance_id"}}},
        {"@type": "cr:Field", "@id": "instances/image", "name": "image",
         "description": f"the {cfg.image_size}x{cfg.image_size} frame", "dataType": "sc:ImageObject",
         "source": {"fileSet": {"@id": "visual-frames"}, "extract": {"fileProperty": "content"}}},
    ]
    models = ", ".join(image_models) or "an image generation model"
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": f"IS4 {cfg.version}",
        "alternateName": cfg.title,
        "description": (
            f"{cfg.title}: {stats['instances']} instances over {stats['images']} generated two-object images "
            f"({stats['categories']} categories); each object has a mask and a box and is paired with a real "
            f"VGGSound audio clip of its category. Images generated with {models}; their use is subject to that "
            "model's licence. Class labels and clip lists from VGGSound / VGG-SS (CC BY 4.0)."
        ),
        "version": cfg.version,
        "license": CC_BY_4,
        "citeAs": f"{cfg.title}, release {cfg.version}. Built with is4-builder {__version__}.",
        "keywords": ["sound source localisation", "audio-visual", "segmentation", "VGGSound", "synthetic images"],
        "distribution": distribution,
        "recordSet": [{
            "@type": "cr:RecordSet", "@id": "instances", "name": "instances",
            "description": "one record per instance: the frame, the object's audio and its box",
            "key": {"@id": "instances/instance_id"},
            "field": fields,
        }],
    }


def validate_croissant(path: Path, expected_records: int | None = None) -> list[str]:
    """Validate a croissant.json with mlcroissant; raise ReleaseError on an error. Returns the warnings.

    With `expected_records`, the instances RecordSet is also generated (which re-hashes every FileObject against
    its sha256 and joins the frames to the rows) and must give that many records.
    """
    import mlcroissant as mlc

    try:
        dataset = mlc.Dataset(jsonld=path)
    except mlc.ValidationError as exc:
        raise ReleaseError(f"{path}: Croissant validation failed:\n{exc}") from exc
    issues = dataset.metadata.ctx.issues
    if issues.errors:
        raise ReleaseError(f"{path}: Croissant validation failed:\n{issues.report()}")
    if expected_records is not None:
        try:
            count = sum(1 for _ in dataset.records("instances"))
        except Exception as exc:  # noqa: BLE001 - mlcroissant raises many types; all mean the metadata is unusable
            raise ReleaseError(f"{path}: Croissant records cannot be generated: {exc}") from exc
        if count != expected_records:
            raise ReleaseError(f"{path}: Croissant gives {count} instance records, expected {expected_records}")
    return sorted(str(w) for w in issues.warnings)


# --------------------------------------------------------------------------------------------------------------------
# Checksums and the archive
# --------------------------------------------------------------------------------------------------------------------


def _release_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root (symlinks included, never followed), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def write_checksums(root: Path) -> Path:
    """`SHA256SUMS` of every file under root except itself, sorted by path, `sha256sum` format."""
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in _release_files(root) if rel != SUMS_NAME]
    path = root / SUMS_NAME
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_archive(root: Path, target: Path, arcroot: str) -> None:
    """A byte-reproducible .tar.gz of root's tree under `arcroot/`: sorted members, zero times and owners."""
    entries: list[tuple[str, Path]] = [("", root)]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            entries.append((p.relative_to(root).as_posix(), p))
    entries.sort(key=lambda e: e[0])
    with open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, p in entries:
                    st = p.lstat()
                    info = tarfile.TarInfo(f"{arcroot}/{rel}" if rel else arcroot)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if stat.S_ISDIR(st.st_mode):
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, st.st_size
                        with open(p, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        raise ReleaseError(f"{p}: only regular files and directories go into a release")


# --------------------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------------------


def _plain(data: Any) -> Any:
    """A JSON-able deep copy (Paths and other objects as strings) so YAML output is plain and stable."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def build_release(workdir: str | Path, cfg: ReleaseConfig, build_config: dict[str, Any]) -> Path:
    """Build `WORK/releases/is4-<version>/` and `WORK/releases/is4-<version>.tar.gz`; return the directory.

    `build_config` is the build configuration as a mapping (`BuildConfig.model_dump(mode="json")`; a BuildConfig
    is accepted too); it is shipped as `build-config.yaml` and supplies the seed and configured model revisions.
    """
    workdir = Path(workdir)
    if hasattr(build_config, "model_dump"):
        build_config = build_config.model_dump(mode="json")
    instances = read_manifest(workdir, "instances")
    if instances.empty:
        raise ReleaseError(f"{manifest_path(workdir, 'instances')}: no instances to release (run match first)")
    images = read_manifest(workdir, "images")
    annotations = read_manifest(workdir, "annotations")
    clips = read_manifest(workdir, "clips")
    for table in COPIED_MANIFESTS:
        read_manifest(workdir, table)  # every shipped manifest validates
    build_config = _plain(build_config)

    releases = workdir / RELEASES_DIR
    releases.mkdir(parents=True, exist_ok=True)
    name = f"is4-{cfg.version}"
    target = releases / name
    archive = releases / f"{name}.tar.gz"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=releases))
    try:
        staging.chmod(0o755)
        stats = _populate(workdir, staging, cfg, build_config, instances, images, annotations, clips)
        validate_croissant(staging / "croissant.json", expected_records=stats["instances"])
        write_checksums(staging)
        with atomic_path(archive) as tmp_archive:
            write_archive(staging, tmp_archive, name)
            replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _populate(
    workdir: Path,
    root: Path,
    cfg: ReleaseConfig,
    build_config: dict[str, Any],
    instances: pd.DataFrame,
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    clips: pd.DataFrame,
) -> dict[str, Any]:
    size = cfg.image_size
    image_rows = {r["image_id"]: r for r in images.to_dict("records")}
    bbox_entries, seg_entries, hf_rows, areas = [], [], [], []
    frames: dict[str, tuple[bytes, int, int]] = {}
    for rec in sorted(instances.to_dict("records"), key=lambda r: r["instance_id"]):
        iid = rec["instance_id"]
        if not FILE_ID_RE.fullmatch(iid):
            raise ReleaseError(f"instance id {iid!r} is not usable as a file name")
        for col in ("image_path", "mask_path", "audio_path", "bbox_xyxy"):
            value = rec.get(col)
            if is_blank(value):
                raise ReleaseError(f"instance {iid}: no {col} in the instances manifest (re-run match)")
        if rec["image_id"] not in frames:
            frames[rec["image_id"]] = _frame_and_size(workdir / rec["image_path"], size)
        frame, width, height = frames[rec["image_id"]]
        frame_rel, audio_rel, mask_rel = f"visual_frames/{iid}.jpg", f"audio_wav/{iid}.wav", f"gt_masks/{iid}.jpg"
        _write(root / frame_rel, frame)
        _write(root / mask_rel, _mask_jpeg(workdir / rec["mask_path"], width, height, size, iid))
        audio_src = workdir / rec["audio_path"]
        _check_wav(audio_src, iid)
        (root / audio_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(audio_src, root / audio_rel)
        box = scale_box([float(v) for v in rec["bbox_xyxy"]], width, height, size)
        areas.append((box[2] - box[0]) * (box[3] - box[1]) / (size * size))
        bbox_entries.append({"image": frame_rel, "audio": audio_rel, "gt_box": box})
        seg_entries.append({"image": frame_rel, "audio": audio_rel, "gt_box": mask_rel})
        img = image_rows.get(rec["image_id"], {})
        hf_rows.append({
            "instance_id": iid, "image_id": rec["image_id"], "category": rec["category"],
            "label": None if is_blank(rec.get("label")) else rec["label"], "clip_id": rec["clip_id"],
            "style": None if is_blank(img.get("style")) else img["style"],
            "reused": None if is_blank(rec.get("reused")) else bool(rec["reused"]),
            "image": frame_rel, "audio": audio_rel, "mask": mask_rel, "gt_box": box,
        })
    _write(root / "is4_bbox.json", _json_bytes(bbox_entries))
    _write(root / "is4_seg.json", _json_bytes(seg_entries))

    # Parquet for Hugging Face datasets, from an explicit Arrow schema (no pandas metadata, plain strings).
    hf_table = pa.Table.from_pylist(hf_rows, schema=HF_SCHEMA)
    (root / HF_PARQUET).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(hf_table, root / HF_PARQUET, compression="zstd")

    # Manifests: shipped byte for byte; clips restricted to the clips the instances use.
    (root / "manifests").mkdir()
    for table in COPIED_MANIFESTS:
        shutil.copyfile(manifest_path(workdir, table), root / "manifests" / f"{table}.parquet")
    used = set(instances["clip_id"].dropna())
    clip_subset = clips[clips["clip_id"].isin(used)]
    write_manifest(root, CLIPS, clip_subset, {
        "stage": "release",
        "subset_of": "clips",
        "rows": "the clips of the released instances",
        "source_sha256": sha256_file(manifest_path(workdir, "clips")),
    })

    # Statistics for the card.
    inst = instances.copy()
    styles = {r["image_id"]: (r.get("style") if not is_blank(r.get("style")) else "(none)") for r in image_rows.values()}
    per_category = {}
    for cat, group in inst.groupby("category", sort=True):
        per_category[str(cat)] = {
            "instances": len(group), "images": group["image_id"].nunique(), "clips": group["clip_id"].nunique(),
            "reused": int(group["reused"].fillna(False).astype(bool).sum()) if "reused" in group else 0,
        }
    per_style: dict[str, dict[str, int]] = {}
    style_of = inst["image_id"].map(lambda i: styles.get(i, "(none)"))
    for style, group in inst.groupby(style_of, sort=True):
        per_style[str(style)] = {"images": group["image_id"].nunique(), "instances": len(group)}
    area_arr = np.asarray(areas, dtype=float)
    stats = {
        "instances": len(inst),
        "images": int(inst["image_id"].nunique()),
        "categories": int(inst["category"].nunique()),
        "clips": len(used),
        "reused": int(inst["reused"].fillna(False).astype(bool).sum()) if "reused" in inst else 0,
        "per_category": per_category,
        "per_style": per_style,
        "area_summary": {"min": float(area_arr.min()), "median": float(np.median(area_arr)),
                         "mean": float(area_arr.mean()), "max": float(area_arr.max())},
    }
    _write(root / CARD_FIGURES[0], box_area_figure(areas))
    _write(root / CARD_FIGURES[1], categories_figure({c: n["instances"] for c, n in per_category.items()}))

    from is4.pipeline.evaluation import metrics
    from is4.pipeline.evaluation.evaluate import baseline_scores

    # The evaluation harness scores the official 224×224 frame; other frame sizes get no baseline table.
    scores = baseline_scores(root) if size == metrics.FRAME else None
    models = _resolved_models(workdir, images, annotations)
    _write(root / "README.md", _card(cfg, build_config, stats, models, scores).encode("utf-8"))

    header = "".join(
        f"#   {m['role']}: {m['model_id']} @ {m['revision'] or '(no revision recorded)'}\n" for m in models
    ) or "#   (none)\n"
    config_text = (
        f"# IS4 release {cfg.version}: the build configuration (loadable with is4.config.load_config).\n"
        f"# Resolved model revisions recorded in the manifests:\n{header}"
        + yaml.safe_dump(build_config, sort_keys=True, default_flow_style=False, allow_unicode=True)
    )
    _write(root / "build-config.yaml", config_text.encode("utf-8"))

    image_models = sorted({m["model_id"] for m in models if m["role"] == "image_generator"})
    _write(root / "croissant.json", _json_bytes(_croissant(root, cfg, stats, image_models)))
    return stats


# --------------------------------------------------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What `verify_release` found, paths relative to the release root."""

    root: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: {self.checked} files, all checksums match"
        parts = [f"{label}: {', '.join(paths)}" for label, paths in
                 (("missing", self.missing), ("extra", self.extra), ("changed", self.changed)) if paths]
        return f"{self.root}: " + "; ".join(parts)


def _check_rel(rel: str, where: str) -> str:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or _DRIVE_RE.match(rel):
        raise ReleaseError(f"{where}: path {rel!r} is not a plain relative path")
    return p.as_posix()


def _verify_dir(root: Path, shown_root: str) -> VerifyReport:
    sums = root / SUMS_NAME
    if not sums.is_file() or sums.is_symlink():
        raise ReleaseError(f"{shown_root}: no {SUMS_NAME} file")
    expected: dict[str, str] = {}
    for line_no, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = _SUM_LINE_RE.fullmatch(line)
        if not m:
            raise ReleaseError(f"{shown_root}/{SUMS_NAME}:{line_no}: not a sha256sum line: {line!r}")
        rel = _check_rel(m[2], f"{shown_root}/{SUMS_NAME}:{line_no}")
        expected[rel] = m[1]
    report = VerifyReport(root=shown_root, checked=len(expected))
    for rel, digest in sorted(expected.items()):
        p = root / rel
        if not os.path.lexists(p):
            report.missing.append(rel)
        elif p.is_symlink() or not p.is_file() or sha256_file(p) != digest:
            report.changed.append(rel)
    report.extra = [rel for rel in _release_files(root) if rel != SUMS_NAME and rel not in expected]
    return report


def _member_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device file"
    if m.isfifo():
        return "fifo"
    return "special member"


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of `tar` checked before anything is extracted; the first unsafe one raises ReleaseError."""
    members = tar.getmembers()
    seen: set[str] = set()
    for m in members:
        name = m.name
        p = PurePosixPath(name)
        if not name or p.is_absolute() or name.startswith("/") or _DRIVE_RE.match(name) or "\\" in name:
            raise ReleaseError(f"archive member {name!r}: absolute path refused")
        if ".." in p.parts:
            raise ReleaseError(f"archive member {name!r}: '..' path component refused")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            outside = target.is_absolute() or ".." in target.parts
            raise ReleaseError(f"archive member {name!r}: {_member_kind(m)} to {m.linkname!r} refused"
                               + (" (points outside the release)" if outside else " (a release has no links)"))
        if not (m.isfile() or m.isdir()):
            raise ReleaseError(f"archive member {name!r}: {_member_kind(m)} refused")
        norm = p.as_posix()
        if norm in seen and not m.isdir():
            raise ReleaseError(f"archive member {name!r}: appears twice")
        seen.add(norm)
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a release archive into `dest` after checking every member (see `check_members`)."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = check_members(tar)
            dest_resolved = dest.resolve()
            for m in members:
                out = dest / PurePosixPath(m.name).as_posix()
                if not out.resolve().is_relative_to(dest_resolved):
                    raise ReleaseError(f"archive member {m.name!r}: resolves outside the extraction directory")
                if m.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(out, "wb") as fh:
                    shutil.copyfileobj(src, fh)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ReleaseError(f"{archive}: not a readable release archive: {exc}") from exc


def verify_release(path: str | Path) -> VerifyReport:
    """Recompute every checksum of a release directory or .tar.gz; report missing, extra and changed files."""
    path = Path(path)
    if path.is_dir():
        return _verify_dir(path, path.name)
    if not path.is_file():
        raise ReleaseError(f"{path}: no such release directory or archive")
    with tempfile.TemporaryDirectory(prefix="is4-verify-") as tmp:
        tmp_path = Path(tmp)
        safe_extract(path, tmp_path)
        if (tmp_path / SUMS_NAME).exists():
            return _verify_dir(tmp_path, path.name)
        tops = sorted(p.name for p in tmp_path.iterdir())
        if len(tops) != 1 or not (tmp_path / tops[0]).is_dir():
            raise ReleaseError(f"{path}: expected one top-level release directory, found {tops}")
        return _verify_dir(tmp_path / tops[0], tops[0])


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------------------------------


def hf_features(decode_audio: bool = True) -> Any:
    """The `datasets.Features` of `hf/instances.parquet`."""
    from datasets import Audio, Features, Image, Value

    try:
        from datasets import List

        box = List(Value("int64"), length=4)
    except ImportError:  # datasets < 4
        from datasets import Sequence

        box = Sequence(Value("int64"), length=4)
    return Features({
        "instance_id": Value("string"), "image_id": Value("string"), "category": Value("string"),
        "label": Value("string"), "clip_id": Value("string"), "style": Value("string"), "reused": Value("bool"),
        "image": Image(), "audio": Audio(sampling_rate=SAMPLE_RATE, decode=decode_audio), "mask": Image(),
        "gt_box": box,
    })


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
        paths = [None if p is None else str(root / _check_rel(p, f"{source} column {col}"))
                 for p in table.column(col).to_pylist()]
        table = table.set_column(idx, pa.field(col, pa.string()), pa.array(paths, type=pa.string()))
    with tempfile.TemporaryDirectory(prefix="is4-hf-") as tmp:
        data_file = Path(tmp) / "instances.parquet"
        pq.write_table(table, data_file)
        return datasets.load_dataset(
            "parquet", data_files=str(data_file), split="train", features=hf_features(decode_audio),
            keep_in_memory=True, cache_dir=str(Path(tmp) / "cache"),
        )
