"""The one typed build configuration, loaded from YAML.

Unknown keys and bad values are rejected with the dotted path of the offending key. Relative paths in a config are
resolved against the current working directory of the process that runs the build.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from is4.classes import vggsound_labels, vggss_labels
from is4.manifests.checksum import json_sha256
from is4.manifests.errors import FatalError

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"


class ConfigError(FatalError, ValueError):
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
    """How clips are fetched: yt-dlp's format and retries, pacing shared by every worker, and the session.

    Pacing and session settings cannot change what a clip's files contain: they stay out of provenance (the
    registry's `exclude`). The three that can hold secrets (`cookies_file`, `proxy`, `extractor_args`: PO tokens)
    are not even in the config's dump, so no manifest, log line or release ever shows them.
    """

    url_template: str = DEFAULT_URL_TEMPLATE
    # Size-capped: at most 480p and (where the size is known) at most 300 MB for the whole source.
    format: str = "b[height<=?480][filesize<?300M]/bv*[height<=?480][filesize<?300M]+ba/w"
    workers: int = Field(4, ge=1, le=64)
    retries: int = Field(2, ge=0, le=10, description="extra attempts for transient errors")
    retry_backoff_s: float = Field(2.0, ge=0)
    socket_timeout_s: float = Field(20.0, gt=0)
    force_keyframes_at_cuts: bool = True
    # Pacing: one token bucket and one throttling pause for every worker of every process on this work directory.
    max_videos_per_hour: float | None = Field(
        None, gt=0, description="cap on video downloads started per hour (YouTube: about 300 per session); null: none")
    sleep_interval_s: float | list[float] = Field(
        0.0, description="seconds between two video starts of the session, or [min, max] for a jittered pause")
    sleep_requests_s: float = Field(0.0, ge=0, description="yt-dlp's sleep_interval_requests (--sleep-requests)")
    cooldown_s: float = Field(900.0, gt=0, description="first pause of the whole session on throttling; doubles")
    cooldown_max_s: float = Field(3600.0, gt=0, description="longest pause")
    give_up_after_s: float | None = Field(
        6 * 3600.0, gt=0, description="end the run cleanly after this long throttled with no success; null: never")
    # Session, passed to yt-dlp (the option each maps to is in the README).
    cookies_file: ConfigPath | None = Field(None, exclude=True, description="Netscape cookies.txt (--cookies)")
    proxy: str | list[str] | None = Field(
        None, exclude=True, description="--proxy; a list: one per worker, the next one on throttling")
    extractor_args: dict[str, dict[str, list[str]]] = Field(
        {}, exclude=True, description="--extractor-args, e.g. {youtube: {player_client: [web_safari]}}")
    user_agent: str | None = Field(None, description="--user-agent")
    source_address: str | None = Field(None, description="--source-address (the local IP to bind)")

    @field_validator("url_template")
    @classmethod
    def _one_ytid_field(cls, value: str) -> str:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        if not fields or any(f != ("ytid", "", None) for f in fields):
            raise ValueError("must contain the plain placeholder {ytid} and no other placeholder")
        return value

    @field_validator("sleep_interval_s")
    @classmethod
    def _sleep_range(cls, value: float | list[float]) -> float | list[float]:
        bounds = value if isinstance(value, list) else [value, value]
        if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]:
            raise ValueError("must be seconds >= 0, or [min, max] with 0 <= min <= max")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxies(cls, value: str | list[str] | None) -> str | list[str] | None:
        listed = [value] if isinstance(value, str) else value
        if listed is not None and (not listed or not all(p.strip() for p in listed)):
            raise ValueError("must be a proxy url, or a non-empty list of them")
        return value

    @model_validator(mode="after")
    def _cooldowns(self) -> DownloadConfig:
        if self.cooldown_max_s < self.cooldown_s:
            raise ValueError(f"cooldown_max_s ({self.cooldown_max_s:g}) is shorter than cooldown_s "
                             f"({self.cooldown_s:g})")
        return self

    def sleep_range(self) -> tuple[float, float]:
        """(min, max) seconds between two video starts."""
        bounds = self.sleep_interval_s if isinstance(self.sleep_interval_s, list) else [self.sleep_interval_s] * 2
        return float(bounds[0]), float(bounds[1])

    def proxies(self) -> list[str]:
        """The configured proxies, as a list (empty: none)."""
        return [self.proxy] if isinstance(self.proxy, str) else list(self.proxy or [])


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


PAPER_TEMPLATES = ("a photo of a {c1} and {c2}", "{c1} is next to {c2}", "{c1} is playing a {c2}")


def _check_template(value: str) -> str:
    fields = sorted(name for _, name, _, _ in string.Formatter().parse(value) if name is not None)
    if fields != ["c1", "c2"]:
        raise ValueError(f"template {value!r} must contain {{c1}} and {{c2}} once each and nothing else")
    return value


class CategoriesConfig(StrictModel):
    """VGG-SS class label → sounding object (rules, optional LLM proposals, reviewed overrides)."""

    overrides: ConfigPath | None = Field(
        None, description="reviewed overrides (configs/category_overrides.yaml ships); they have the last word"
    )
    llm_proposals: bool = Field(False, description="ask models.object_phrase for labels the rules cannot settle")


class PromptsConfig(StrictModel):
    """Category pairs × templates × styles, each prompt with a seed derived from its image id."""

    categories: list[str] | None = Field(None, description="category ids to pair; null = every depictable one")
    max_pairs: int | None = Field(None, gt=0, description="seeded sample of N unordered pairs; null = all")
    templates: list[str] = list(PAPER_TEMPLATES)
    instrument_templates: list[str] = Field(
        ["{c1} is playing a {c2}"], description="templates used only where {c2} is a musical instrument"
    )
    players: list[str] | None = Field(
        None, description="category ids allowed in {c1} of an instrument template (e.g. people); null = any"
    )
    styles: dict[str, str] = {
        "realistic": "realistic photo, natural lighting, high detail",
        "cartoon": "cartoon style illustration",
        "graphic": "flat graphic illustration, bold shapes",
    }
    negative_prompt: str = "blurry, low quality, distorted, deformed, text, watermark"
    images_per_prompt: int = Field(1, ge=1, le=100)

    @field_validator("templates", "instrument_templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        return [_check_template(t) for t in value]


class GenerateConfig(StrictModel):
    """Stable Diffusion sampling settings (the checkpoint is models.image_generator)."""

    scheduler: str = "DPMSolverMultistepScheduler"
    steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)
    height: int = Field(512, ge=8, multiple_of=8)
    width: int = Field(512, ge=8, multiple_of=8)
    batch_size: int = Field(4, ge=1, le=256)
    shards: int = Field(1, ge=1, le=1024, description="disjoint shards the flow maps generation over")
    compile: bool = Field(False, description="torch.compile the UNet (CUDA)")
    safety_checker: bool = Field(True, description="run the checkpoint's safety checker where it has one")
    black_threshold: float = Field(4.0, ge=0, le=255, description="mean pixel value under which an image is black")


class PrescreenConfig(StrictModel):
    """CLIP scores that order the human verification queue (the checkpoint is models.prescreen)."""

    batch_size: int = Field(16, ge=1, le=1024)
    auto_reject_below: float | None = Field(
        None, ge=0, le=1, description="both_present score under which an image is rejected automatically"
    )
    duplicate_cosine: float = Field(0.95, gt=0, le=1, description="image-embedding cosine that makes a duplicate")


REJECT_REASONS = ("missing-object", "unrecognisable", "extra-object", "artefact")


class ReviewConfig(StrictModel):
    """Human verification in FiftyOne, or the automatic policy that stands in for humans (demo)."""

    mode: Literal["human", "auto"] = Field(
        "human", description="human: the flow waits for reviewers; auto: pending images are accepted automatically"
    )
    dataset: str | None = Field(None, description="FiftyOne dataset name; default is4-<work dir name>-<path hash>")
    database_uri: str | None = Field(None, description="a shared MongoDB server; default: FiftyOne's embedded one")
    database_dir: ConfigPath | None = Field(
        None, description="embedded MongoDB data directory (relative: to the work dir); default: FiftyOne's own"
    )
    address: str = Field("127.0.0.1", description="where the App listens")
    port: int = Field(5151, ge=1, le=65535)
    pause_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="how long a paused build waits for reviewers")


class AnnotateConfig(StrictModel):
    """Automatic SAM proposals (detector box → SAM) and click refinement."""

    detector_threshold: float = Field(0.05, ge=0, le=1, description="lowest detector score used as a box prompt")
    mask_threshold: float = Field(0.0, description="SAM mask logit threshold")
    multimask: bool = Field(True, description="ask SAM for three masks and keep the best-scoring one")
    embedding_cache: int = Field(8, ge=1, description="image embeddings kept in memory for refinement")


class MatchConfig(StrictModel):
    """Which VGGSound clips may sound an annotated object."""

    splits: list[Literal["train", "test"]] = Field(["test"], description="clip splits the benchmark draws from")
    exclude_clip_lists: list[ConfigPath] = Field(
        [], description="training manifests (Parquet with clip_id) or id lists whose clips must never be used"
    )


class ReleaseConfig(StrictModel):
    """The packaged, verifiable IS4 release."""

    version: str = Field("0.1.0", pattern=r"^[0-9A-Za-z][0-9A-Za-z.\-]*$")
    image_size: int = Field(224, ge=32, description="side of the released square frames (boxes are in this frame)")
    title: str = "IS4: Interactive Semi-Synthetic Sound Source"


class ImageCaptionConfig(StrictModel):
    """BLIP-2 captions of a clip's centre frame (the checkpoint is models.image_captioner)."""

    batch_size: int = Field(16, ge=1, le=1024, description="images per generate call (halved on out-of-memory)")
    max_new_tokens: int = Field(30, ge=1, le=512)
    prompt: str | None = Field(None, description="text BLIP-2 continues; null = unconditional captioning")


class GamaConfig(StrictModel):
    """The GAMA authors' code and environment (github.com/Sreyan88/GAMA), installed by the user."""

    repo: ConfigPath = Field(description="a checkout of the GAMA repository")
    base_model: ConfigPath = Field(description="the LLaMA-2 base model directory GAMA's checkpoint was tuned from")
    python: ConfigPath = Field(Path("python"), description="the interpreter of GAMA's environment")
    prompt: str = "Describe the audio in detail."


class AudioCaptionConfig(StrictModel):
    """Audio captions (the checkpoint is models.audio_captioner)."""

    backend: Literal["transformers", "gama"] = Field(
        "transformers", description="transformers: an audio-language model such as Qwen2-Audio; gama: GAMA's code"
    )
    batch_size: int = Field(8, ge=1, le=1024, description="clips per generate call (halved on out-of-memory)")
    max_new_tokens: int = Field(48, ge=1, le=512)
    prompt: str = Field("Generate the caption in English:", description="instruction for the transformers backend")
    gama: GamaConfig | None = Field(None, description="required by backend: gama")


class ObjectPhraseConfig(StrictModel):
    """The sounding object as at most 3 words, from both captions (the checkpoint is models.object_phrase)."""

    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: CUDA only, if installed")
    batch_size: int = Field(16, ge=1, le=1024, description="prompts per generate call (halved on out-of-memory)")
    max_new_tokens: int = Field(24, ge=1, le=512)


class CaptionsConfig(StrictModel):
    """LLM-guidance captions (ACL-SSL) for VGGSound clips and, optionally, the IS4 instances."""

    sources: list[Literal["clips", "instances"]] = Field(
        ["clips"], min_length=1, description="clips: ingested VGGSound clips; instances: the matched IS4 instances"
    )
    splits: list[Literal["train", "test"]] = Field(["train"], description="clip splits to caption")
    image: ImageCaptionConfig = ImageCaptionConfig()
    audio: AudioCaptionConfig = AudioCaptionConfig()
    object_phrase: ObjectPhraseConfig = ObjectPhraseConfig()


class ModelRef(StrictModel):
    """A model checkpoint: Hugging Face id, local path, or `tiny-random:<kind>` (built locally), and revision."""

    model_id: str
    revision: str = "main"
    dtype: Literal["float32", "float64", "float16", "bfloat16"] = "float32"
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


# The build's stages in pipeline order; `is4.pipeline.stages.REGISTRY` declares each of them (a test keeps the two equal).
StageName = Literal[
    "ingest", "categories", "prompts", "generate", "prescreen", "verify", "annotate", "match", "caption", "release",
]
STAGES: tuple[str, ...] = get_args(StageName)


class BuildConfig(StrictModel):
    profile: str = "custom"
    stages: list[StageName] = Field(list(STAGES), description="the stages `build-is4` runs, in pipeline order")
    seed: int = 0
    workdir: ConfigPath = Path("work")
    ingest: IngestConfig = IngestConfig()
    categories: CategoriesConfig = CategoriesConfig()
    prompts: PromptsConfig = PromptsConfig()
    generate: GenerateConfig = GenerateConfig()
    prescreen: PrescreenConfig = PrescreenConfig()
    review: ReviewConfig = ReviewConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    match: MatchConfig = MatchConfig()
    captions: CaptionsConfig = CaptionsConfig()
    release: ReleaseConfig = ReleaseConfig()
    models: ModelsConfig = ModelsConfig()

    def fingerprint(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the whole config, or of the named top-level sections."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        return json_sha256(data)


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice (plain YAML keeps the last one and loses the other silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path, what: str, error: type[Exception]) -> object:
    """Parse a YAML file safely (duplicate keys rejected); any problem raises `error` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path) -> BuildConfig:
    """Load and validate a YAML config file."""
    return parse_config(read_yaml(path, "config", ConfigError), str(path))
