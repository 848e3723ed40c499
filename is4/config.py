"""The one typed build configuration, loaded from YAML.

Unknown keys and bad values are rejected with the dotted path of the offending key. Relative paths in a config are
resolved against the current working directory of the process that runs the build.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from is4.classes import vggsound_labels, vggss_labels

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"


class ConfigError(ValueError):
    """The config file is unreadable or does not validate."""


class StrictModel(BaseModel):
    # Strict types: `seed: yes` or `workers: "4"` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# YAML has no path type: paths are written as strings.
ConfigPath = Annotated[Path, Field(strict=False)]


class SubsetConfig(StrictModel):
    """Which csv rows to ingest. All selections are seeded and independent of csv order."""

    splits: list[Literal["train", "test"]] = ["train", "test"]
    labels: Literal["all", "vggss"] | list[str] = Field(
        "all", description="'all', 'vggss' (the 221 VGG-SS classes) or an explicit list of VGGSound labels"
    )
    per_class_cap: int | None = Field(None, gt=0)
    id_list: ConfigPath | None = Field(None, description="file of clip ids (or YouTube ids), one per line")

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            unknown = sorted(set(value) - set(vggsound_labels()))
            if unknown:
                raise ValueError(f"unknown VGGSound label(s): {', '.join(map(repr, unknown))}")
        return value

    def label_set(self) -> frozenset[str] | None:
        """The labels to keep, or None for all."""
        if self.labels == "all":
            return None
        if self.labels == "vggss":
            return frozenset(vggss_labels())
        return frozenset(self.labels)


class DownloadConfig(StrictModel):
    url_template: str = DEFAULT_URL_TEMPLATE
    # Size-capped: at most 480p and (where the size is known) at most 300 MB for the whole source.
    format: str = "b[height<=?480][filesize<?300M]/bv*[height<=?480][filesize<?300M]+ba/w"
    workers: int = Field(4, ge=1, le=64)
    retries: int = Field(2, ge=0, le=10, description="extra attempts for transient errors")
    retry_backoff_s: float = Field(2.0, ge=0)
    socket_timeout_s: float = Field(20.0, gt=0)
    force_keyframes_at_cuts: bool = True

    @field_validator("url_template")
    @classmethod
    def _one_ytid_field(cls, value: str) -> str:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        if not fields or any(f != ("ytid", "", None) for f in fields):
            raise ValueError("must contain the plain placeholder {ytid} and no other placeholder")
        return value


class ExtractConfig(StrictModel):
    clip_seconds: float = Field(10.0, gt=0, le=60)
    frame_size: int | None = Field(224, gt=0, description="shorter side of the centre frame; null keeps the source")
    jpeg_quality: int = Field(2, ge=1, le=31, description="ffmpeg -q:v, 1 is best")
    sample_rate: int = Field(16000, gt=0)
    silence_dbfs: float = Field(-60.0, le=0)


class DemoMediaConfig(StrictModel):
    """Synthetic demo clips served from a loopback HTTP server, so the demo runs the real download path."""

    enabled: bool = False
    labels: list[str] = ["playing cello", "dog barking", "playing acoustic guitar", "cat meowing"]
    clips_per_label: int = Field(2, ge=1, le=50)
    source_seconds: float = Field(30.0, ge=10)
    include_faults: bool = Field(True, description="add one invalid row and one unavailable video")

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(vggsound_labels()))
        if unknown:
            raise ValueError(f"unknown VGGSound label(s): {', '.join(map(repr, unknown))}")
        return value


class IngestConfig(StrictModel):
    csv: ConfigPath | None = Field(None, description="a vggsound.csv-format file; required unless demo media is on")
    subset: SubsetConfig = SubsetConfig()
    download: DownloadConfig = DownloadConfig()
    extract: ExtractConfig = ExtractConfig()
    demo_media: DemoMediaConfig = DemoMediaConfig()
    export_training_layout: bool = True


class ModelRef(StrictModel):
    """A model checkpoint: Hugging Face id (or local path) and pinned revision."""

    model_id: str
    revision: str = "main"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"


class ModelsConfig(StrictModel):
    """Checkpoints used by the model stages; a stage that needs an unset one says so when it runs."""

    image_generator: ModelRef | None = None
    prescreen: ModelRef | None = None
    detector: ModelRef | None = None
    segmenter: ModelRef | None = None
    image_captioner: ModelRef | None = None
    audio_captioner: ModelRef | None = None
    object_phrase: ModelRef | None = None


class BuildConfig(StrictModel):
    profile: str = "custom"
    seed: int = 0
    workdir: ConfigPath = Path("work")
    ingest: IngestConfig = IngestConfig()
    models: ModelsConfig = ModelsConfig()

    def fingerprint(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the whole config, or of the named top-level sections."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> BuildConfig:
    """Validate a mapping (e.g. from YAML) into a BuildConfig, naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path) -> BuildConfig:
    """Load and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
