"""One typed table schema per stage (DESIGN §3).

A `TableSpec` names the required columns with their Arrow types, the key, the allowed values of enum columns and
which columns hold paths (relative to the work directory). Stages may add columns; they never drop these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_VERSION = 1

CLIP_STATUSES = frozenset({"ok", "failed", "invalid"})
DECISIONS = frozenset({"accept", "reject", "pending"})
DECISION_SOURCES = frozenset({"human", "auto"})
IMAGE_FLAGS = frozenset({"nsfw", "black"})  # generation flags: a safety-checker hit, a black image


@dataclass(frozen=True)
class TableSpec:
    """The contract of one manifest table."""

    name: str
    columns: tuple[pa.Field, ...]
    key: tuple[str, ...]
    sort_by: tuple[str, ...]
    enums: dict[str, frozenset[str]] = field(default_factory=dict)
    # Columns a stage may add: not required, but when present they have this type (so an all-null column keeps it).
    optional: tuple[pa.Field, ...] = ()
    path_columns: tuple[str, ...] = ()
    # Path columns naming files that another table lists and its stage made (an instance's mask is an annotation's):
    # a changed file makes this table stale, but only the owning stage's check may remove it.
    referenced_paths: tuple[str, ...] = ()
    # Rows whose key may be null (e.g. a csv row so broken that it has no clip id); they are exempt from the
    # uniqueness check but must satisfy `nullable_key_when`.
    nullable_key_when: tuple[str, str] | None = None

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(list(self.columns))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.columns)

    @property
    def optional_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.optional)


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


_str = pa.string()

CATEGORIES = TableSpec(
    name="categories",
    columns=(
        _f("label", _str, False),
        _f("object", _str),
        _f("category_id", _str),
        _f("instrument", pa.bool_()),
        _f("depictable", pa.bool_()),
    ),
    key=("label",),
    sort_by=("label",),
)

CLIPS = TableSpec(
    name="clips",
    columns=(
        _f("row", pa.int64(), False),  # 1-based line number in the source csv
        _f("clip_id", _str),
        _f("ytid", _str),
        _f("start_sec", pa.int64()),
        _f("label", _str),
        _f("split", _str),
        _f("status", _str, False),
        _f("reason", _str),
        _f("retryable", pa.bool_(), False),
        _f("attempts", pa.int64(), False),
        _f("source_path", _str),
        _f("source_bytes", pa.int64()),
        _f("frame_path", _str),
        _f("audio_path", _str),
        _f("spec_path", _str),
        _f("mel_path", _str),
        _f("frame_width", pa.int64()),
        _f("frame_height", pa.int64()),
        _f("source_audio_sec", pa.float64()),
        _f("padded_sec", pa.float64()),
        _f("trimmed_sec", pa.float64()),
        _f("peak_dbfs", pa.float64()),
    ),
    key=("clip_id",),
    sort_by=("row",),
    enums={"status": CLIP_STATUSES},
    path_columns=("source_path", "frame_path", "audio_path", "spec_path", "mel_path"),
    nullable_key_when=("status", "invalid"),
)

PROMPTS = TableSpec(
    name="prompts",
    columns=(
        _f("image_id", _str, False),
        _f("category_a", _str, False),  # category ids, a < b
        _f("category_b", _str, False),
        _f("c1", _str, False),  # the category id filling {c1} of the template
        _f("c2", _str, False),
        _f("template", _str, False),
        _f("style", _str, False),
        _f("prompt", _str, False),
        _f("negative_prompt", _str),
        _f("seed", pa.int64(), False),
    ),
    key=("image_id",),
    sort_by=("image_id",),
)

IMAGES = TableSpec(
    name="images",
    columns=(
        _f("image_id", _str, False),
        _f("category_a", _str, False),
        _f("category_b", _str, False),
        _f("template", _str),
        _f("style", _str),
        _f("prompt", _str),
        _f("seed", pa.int64()),
        _f("model_id", _str),
        _f("model_revision", _str),
        _f("image_path", _str),
        _f("sha256", _str),
    ),
    key=("image_id",),
    sort_by=("image_id",),
    path_columns=("image_path",),
    enums={"flag": IMAGE_FLAGS},
    optional=tuple(
        _f(name, type_)
        for name, type_ in (
            ("c1", _str),
            ("c2", _str),
            ("negative_prompt", _str),
            ("batch_group", pa.int64()),
            ("scheduler", _str),
            ("scheduler_config", _str),
            ("steps", pa.int64()),
            ("guidance_scale", pa.float64()),
            ("height", pa.int64()),
            ("width", pa.int64()),
            ("batch_size", pa.int64()),
            ("dtype", _str),
            ("device", _str),
            ("compile", pa.bool_()),
            ("safety_checker", pa.bool_()),
            ("versions", _str),
            ("mean_pixel", pa.float64()),
            ("flag", _str),
            ("flag_reason", _str),
        )
    ),
)

PRESCREEN = TableSpec(
    name="prescreen",
    columns=(
        _f("image_id", _str, False),
        _f("score_a", pa.float64(), False),  # P(category_a | image) against the other categories
        _f("score_b", pa.float64(), False),
        _f("both_present", pa.float64(), False),  # ranks the verification queue (higher first)
        _f("duplicate_group", _str, False),  # image_id of the group's representative
        _f("queue_rank", pa.int64(), False),  # 1 = first to review
        _f("model_id", _str),
        _f("model_revision", _str),
    ),
    key=("image_id",),
    sort_by=("image_id",),
)

VERIFICATION = TableSpec(
    name="verification",
    columns=(
        _f("image_id", _str, False),
        _f("decision", _str, False),
        _f("reason", _str),
        _f("reviewer", _str),
        _f("source", _str, False),
        _f("decided_at", pa.timestamp("us", tz="UTC")),
    ),
    key=("image_id",),
    sort_by=("image_id",),
    enums={"decision": DECISIONS, "source": DECISION_SOURCES},
)

ANNOTATION_METHODS = frozenset({"auto", "refined"})

ANNOTATIONS = TableSpec(
    name="annotations",
    columns=(
        _f("instance_id", _str, False),  # {image_id}_{category}
        _f("image_id", _str, False),
        _f("category", _str, False),  # category id of the object
        _f("mask_path", _str),  # PNG at image resolution, 255 = object
        _f("bbox_xyxy", pa.list_(pa.float64(), 4)),  # derived from the mask, image pixels
        _f("method", _str),
        _f("model_id", _str),
    ),
    key=("instance_id",),
    sort_by=("instance_id",),
    enums={"method": ANNOTATION_METHODS},
    path_columns=("mask_path", "auto_mask_path"),
    optional=(
        _f("model_revision", _str),
        _f("detector_id", _str),
        _f("detector_revision", _str),
        _f("detector_score", pa.float64()),
        _f("prompt_box_xyxy", pa.list_(pa.float64(), 4)),  # the box SAM was prompted with
        _f("points", _str),  # JSON [[x, y, label], …]: the clicks of a refinement (1 positive, 0 negative)
        _f("sam_score", pa.float64()),  # SAM's predicted IoU of the kept mask
        _f("auto_mask_path", _str),  # the automatic proposal, kept when refined
        _f("auto_iou", pa.float64()),  # IoU of the automatic proposal with the final mask
        _f("area", pa.int64()),
    ),
)

INSTANCES = TableSpec(
    name="instances",
    columns=(
        _f("instance_id", _str, False),  # {image_id}_{category}: the file stem of the official release
        _f("image_id", _str, False),
        _f("category", _str, False),
        _f("clip_id", _str),
        _f("audio_path", _str),
    ),
    key=("instance_id",),
    sort_by=("instance_id",),
    path_columns=("audio_path", "image_path", "mask_path"),
    referenced_paths=("audio_path", "image_path", "mask_path"),  # the clips', images' and annotations' files
    optional=(
        _f("label", _str),  # the clip's VGGSound label
        _f("reused", pa.bool_()),  # the category's clip pool ran out and this clip serves a second object
        _f("image_path", _str),
        _f("mask_path", _str),
        _f("bbox_xyxy", pa.list_(pa.float64(), 4)),  # image pixels, as in the annotations
    ),
)

CAPTION_SOURCES = frozenset({"clip", "instance"})

CAPTIONS = TableSpec(
    name="captions",
    columns=(
        _f("item_id", _str, False),  # clip_id or instance_id
        _f("source", _str, False),
        _f("image_path", _str),
        _f("audio_path", _str),
        _f("image_caption", _str),
        _f("audio_caption", _str),
        _f("object_phrase", _str),  # the LLM answer normalised to at most 3 words; null when it does not normalise
        _f("object_phrase_raw", _str),  # the LLM answer as generated
        _f("image_caption_model", _str),
        _f("image_caption_revision", _str),
        _f("image_caption_backend", _str),
        _f("audio_caption_model", _str),
        _f("audio_caption_revision", _str),
        _f("audio_caption_backend", _str),  # which audio captioner wrote the caption (gama, qwen2-audio)
        _f("object_phrase_model", _str),
        _f("object_phrase_revision", _str),
        _f("object_phrase_backend", _str),
        _f("prompt_version", _str, False),
        _f("flags", _str),  # comma-separated <role>:<flag> (empty, garbage, unparsed)
        _f("error", _str),  # why a role has no output for this item
    ),
    key=("item_id",),
    sort_by=("item_id",),
    enums={"source": CAPTION_SOURCES},
    path_columns=("image_path", "audio_path"),
    referenced_paths=("image_path", "audio_path"),  # the captioned images' and clips' files
)

NEIGHBOUR_MODALITIES = frozenset({"image", "audio"})

# The k most similar training clips per clip and modality under a pretrained encoder (the alignment method's
# v_conc / a_conc positives); neighbours sorted by falling cosine, the clip itself excluded.
NEIGHBOURS = TableSpec(
    name="neighbours",
    columns=(
        _f("clip_id", _str, False),
        _f("modality", _str, False),
        _f("neighbours", pa.list_(pa.string()), False),
        _f("similarities", pa.list_(pa.float32()), False),
        _f("encoder", _str, False),  # model id
        _f("encoder_revision", _str, False),  # its resolved revision
    ),
    key=("clip_id", "modality"),
    sort_by=("clip_id", "modality"),
    enums={"modality": NEIGHBOUR_MODALITIES},
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        CATEGORIES,
        CLIPS,
        PROMPTS,
        IMAGES,
        PRESCREEN,
        VERIFICATION,
        ANNOTATIONS,
        INSTANCES,
        CAPTIONS,
        NEIGHBOURS,
    )
}
