"""The one typed build configuration, loaded from YAML.

Unknown keys and bad values are rejected with the dotted path of the offending key.

Relative paths, one rule: a path written in a config file is relative to that file's folder (`load_config` rewrites
it as the same file seen from the current directory), except the few settings typed `WorkPath`, which name something
inside the work directory and are relative to WORK (`in_workdir`, where they are used). A path given with `--set`
is a command-line value: relative to the current directory.
"""

from __future__ import annotations

import copy
import datetime
import os
import string
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from is4.classes import vggsound_labels, vggss_labels
from is4.manifests.errors import FatalError

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"


class ConfigError(FatalError, ValueError):
    """The config file is unreadable or does not validate."""


class StrictModel(BaseModel):
    # Strict types: `seed: yes` or `workers: "4"` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# YAML has no path type: paths are written as strings. A relative ConfigPath is relative to the config file's folder;
# a relative WorkPath is inside WORK, the run's work directory (module docstring).
ConfigPath = Annotated[Path, Field(strict=False)]
_IN_WORK = "relative to WORK"
WorkPath = Annotated[Path, Field(strict=False), _IN_WORK]
_ON_PATH = "a bare name is a command on PATH"
CommandPath = Annotated[Path, Field(strict=False), _ON_PATH]  # a bare name (`python`) is not a path: left as written


class SubsetConfig(StrictModel):
    """Which csv rows to ingest. All selections are seeded and independent of csv order."""

    splits: list[Literal["train", "test"]] = ["train", "test"]
    labels: Literal["all", "vggss"] | list[str] = Field(
        "all", description="'all', 'vggss' (the 221 VGG-SS classes) or an explicit list of VGGSound labels"
    )
    per_class_cap: int | None = Field(None, gt=0, le=1_000_000)
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
    retry_backoff_s: float = Field(2.0, ge=0, le=3600)
    socket_timeout_s: float = Field(20.0, gt=0, le=3600)
    force_keyframes_at_cuts: bool = True
    # Pacing: one token bucket and one throttling pause for every worker of every process on this work directory.
    max_videos_per_hour: float | None = Field(
        None, gt=0, description="cap on video downloads started per hour (YouTube: about 300 per session); null: none"
    )
    sleep_interval_s: float | list[float] = Field(
        0.0, description="seconds between two video starts of the session, or [min, max] for a jittered pause"
    )
    sleep_requests_s: float = Field(0.0, ge=0, description="yt-dlp's sleep_interval_requests (--sleep-requests)")
    cooldown_s: float = Field(900.0, gt=0, description="first pause of the whole session on throttling; doubles")
    cooldown_max_s: float = Field(3600.0, gt=0, description="longest pause")
    give_up_after_s: float | None = Field(
        6 * 3600.0, gt=0, description="end the run cleanly after this long throttled with no success; null: never"
    )
    # Session, passed to yt-dlp (the option each maps to is in the README).
    cookies_file: ConfigPath | None = Field(None, exclude=True, description="Netscape cookies.txt (--cookies)")
    proxy: str | list[str] | None = Field(
        None, exclude=True, description="--proxy; a list: one per worker, the next one on throttling"
    )
    extractor_args: dict[str, dict[str, list[str]]] = Field(
        {}, exclude=True, description="--extractor-args, e.g. {youtube: {player_client: [web_safari]}}"
    )
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
            raise ValueError(
                f"cooldown_max_s ({self.cooldown_max_s:g}) is shorter than cooldown_s ({self.cooldown_s:g})"
            )
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
    frame_size: int | None = Field(
        224, gt=0, le=4096, description="shorter side of the centre frame; null keeps the source"
    )
    jpeg_quality: int = Field(2, ge=1, le=31, description="ffmpeg -q:v, 1 is best")
    sample_rate: int = Field(16000, ge=8000, le=192_000)
    silence_dbfs: float = Field(-60.0, le=0)


class DemoMediaConfig(StrictModel):
    """Synthetic demo clips served from a loopback HTTP server, so the demo runs the real download path."""

    enabled: bool = False
    labels: list[str] = ["playing cello", "dog barking", "playing acoustic guitar", "cat meowing"]
    clips_per_label: int = Field(2, ge=1, le=50)
    source_seconds: float = Field(30.0, ge=10, le=600)
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
    max_pairs: int | None = Field(
        None, gt=0, le=1_000_000, description="seeded sample of N unordered pairs; null = all"
    )
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
    guidance_scale: float = Field(7.5, ge=0, le=100)
    height: int = Field(512, ge=8, le=2048, multiple_of=8)
    width: int = Field(512, ge=8, le=2048, multiple_of=8)
    batch_size: int = Field(4, ge=1, le=256)
    compile: bool = Field(False, description="torch.compile the UNet (CUDA)")
    safety_checker: bool = Field(True, description="run the checkpoint's safety checker where it has one")
    black_threshold: float = Field(4.0, ge=0, le=255, description="mean pixel value under which an image is black")


# The stages whose declaration names a merge (`pipeline/registry.py`); a test keeps the two equal.
ShardedStage = Literal["ingest", "generate", "caption"]


class DaskConfig(StrictModel):
    """Where `runner: dask` sends the shard tasks: an existing scheduler, or a temporary LocalCluster."""

    address: str | None = Field(None, description="tcp://host:port of a running `dask scheduler`; none = LocalCluster")
    n_workers: int = Field(2, ge=1, le=1024, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, le=256, description="LocalCluster task slots per worker process")

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ValueError(f"{value!r} is not a Dask scheduler address (tcp://host:port)")
        return value


class ExecutionConfig(StrictModel):
    """How the flow runs its sharded stages; never part of provenance (nothing here changes what is made)."""

    runner: Literal["local", "dask"] = "local"
    dask: DaskConfig = DaskConfig()
    shards: dict[ShardedStage, Annotated[int, Field(ge=1, le=1024)]] = Field(
        {}, description="disjoint shards per sharded stage (`is4 stages` names them); 1 when not given"
    )
    resources: dict[ShardedStage, dict[str, float]] = Field(
        {}, description="Dask worker resources each shard task of a stage needs, e.g. {generate: {GPU: 1}}"
    )
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch.set_num_threads in every task (float32 CPU bytes depend on it)"
    )

    def shards_of(self, stage: str) -> int:
        """The configured shard count of a stage (1 when not given)."""
        return self.shards.get(stage, 1)  # type: ignore[call-overload]


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
    database_dir: WorkPath | None = Field(
        None, description="embedded MongoDB data directory (relative: inside WORK); default: FiftyOne's own"
    )
    address: str = Field("127.0.0.1", description="where the App listens")
    port: int = Field(5151, ge=1, le=65535)
    pause_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="how long a paused build waits for reviewers")


class AnnotateConfig(StrictModel):
    """Automatic SAM proposals (detector box → SAM) and click refinement."""

    detector_threshold: float = Field(0.05, ge=0, le=1, description="lowest detector score used as a box prompt")
    mask_threshold: float = Field(0.0, description="SAM mask logit threshold")
    multimask: bool = Field(True, description="ask SAM for three masks and keep the best-scoring one")
    clip_to_box: bool = Field(
        False,
        description="keep only the automatic mask's pixels inside its prompt box (SAM can leak past the box; the "
        "demo's random SAM always does); masks already made are kept as they are",
    )
    embedding_cache: int = Field(8, ge=1, le=1024, description="image embeddings kept in memory for refinement")


class MatchConfig(StrictModel):
    """Which VGGSound clips may sound an annotated object."""

    splits: list[Literal["train", "test"]] = Field(["test"], description="clip splits the benchmark draws from")
    exclude_clip_lists: list[ConfigPath] = Field(
        [], description="training manifests (Parquet with clip_id) or id lists whose clips must never be used"
    )


class ReleaseConfig(StrictModel):
    """The packaged, verifiable IS4 release."""

    version: str = Field("0.1.0", pattern=r"^[0-9A-Za-z][0-9A-Za-z.\-]*$")
    image_size: int = Field(
        224, ge=32, le=4096, description="side of the released square frames (boxes are in this frame)"
    )
    title: str = "IS4: Interactive Semi-Synthetic Sound Source"
    date: datetime.date | None = Field(
        None, description="publication date (Croissant datePublished), set with the version so the bytes stay fixed"
    )


class ImageCaptionConfig(StrictModel):
    """BLIP-2 captions of a clip's centre frame (the checkpoint is models.image_captioner)."""

    batch_size: int = Field(16, ge=1, le=1024, description="images per generate call (halved on out-of-memory)")
    max_new_tokens: int = Field(30, ge=1, le=512)
    prompt: str | None = Field(None, description="text BLIP-2 continues; null = unconditional captioning")


class GamaConfig(StrictModel):
    """The GAMA authors' code and environment (github.com/Sreyan88/GAMA), installed by the user."""

    repo: ConfigPath = Field(description="a checkout of the GAMA repository")
    base_model: ConfigPath = Field(description="the LLaMA-2 base model directory GAMA's checkpoint was tuned from")
    python: CommandPath = Field(
        Path("python"), description="the interpreter of GAMA's environment (a bare name: a command on PATH)"
    )
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


class NeighboursConfig(StrictModel):
    """The `neighbours` stage: per training clip its top-k most similar clips per modality under pretrained encoders:
    the alignment method's v_conc / a_conc positives (the paper's self-supervised option: CLIP + Wav2CLIP; Wav2CLIP
    is not loadable offline, an Audio Spectrogram Transformer stands in)."""

    enabled: bool = Field(False, description="off: the stage writes an empty manifest (it needs two encoders)")
    image_encoder: ModelRef | None = Field(None, description="a CLIP model (its image features)")
    audio_encoder: ModelRef | None = Field(None, description="an AST model (its pooled output)")
    splits: list[str] = ["train"]
    k: int = Field(1000, ge=1, le=100_000, description="neighbours kept per clip and modality (the paper's k)")
    batch_size: int = Field(32, ge=1, le=4096, description="clips per encoder forward pass")
    chunk: int = Field(
        1024, ge=1, le=65_536, description="rows of the cosine matrix computed at once (1024 x 144k: 0.6 GB)"
    )


# --- training (`is4 train`, `is4.trainers`; not a build stage) ---


class AlignmentAudioConfig(StrictModel):
    """The audio input of the alignment method: a log spectrogram of a window of the clip (authors' test input)."""

    sample_rate: int = 16000
    clip_seconds: float = Field(10.0, description="the clip is tiled (if short) / cut to this length first")
    window: list[float] = Field([3.5, 6.5], description="[start, end] s of the anchor view (authors' test window)")
    nperseg: int = 512
    noverlap: int = Field(353, description="authors' inference code; the stored spec/ .npy uses 274 (EZ-VSL)")
    scale: float = Field(12.0, description="log(S + 1e-7) is divided by this")


class AlignmentAugmentConfig(StrictModel):
    """SimCLR-style image augmentations of the v_aug view (strengths: SimCLR's; the paper says only "SimCLR")."""

    crop_scale: list[float] = [0.08, 1.0]
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: list[float] = Field([0.4, 0.4, 0.4, 0.1], description="brightness, contrast, saturation, hue")
    grayscale_p: float = 0.2
    blur_p: float = 0.5


class AlignmentConfig(StrictModel):
    """The alignment method of the IS4 paper (TPAMI'25 / ICCV'23): two ResNet-18s, s_L + s_A over 9 view pairs."""

    image_size: int = Field(224, ge=8, le=2048, description="frames are resized to this (bicubic) before the views")
    width: int = Field(64, ge=1, le=1024, description="ResNet-18 base width (64 = the released model; tests use 8-16)")
    blocks: list[int] = Field([2, 2, 2, 2], description="basic blocks per stage (2,2,2,2 = ResNet-18)")
    strides: list[int] = Field([1, 2, 2, 1], description="stage strides (layer4 stride 1 = the released model)")
    norm: Literal["batch", "group"] = Field("batch", description="group: batch-independent (exact DDP parity)")
    proj_dim: int = Field(
        512, ge=1, le=65_536, description="p_v, p_a = Linear(C,C)-ReLU-Linear(C,proj_dim): shape not published"
    )
    tau: float = 0.07
    sl_pool: Literal["mean", "max"] = Field("mean", description="mean = Eq. 3 as written; max = EZ-VSL's MIL")
    sl_weight: float = 1.0
    sa_weight: float = 1.0
    symmetric: bool = Field(False, description="also the audio-to-image direction of each InfoNCE")
    views: list[Literal["orig", "aug", "conc"]] = Field(
        ["orig", "aug", "conc"], description="positive views per modality (conc needs train.neighbours)"
    )
    audio: AlignmentAudioConfig = AlignmentAudioConfig()
    augment: AlignmentAugmentConfig = AlignmentAugmentConfig()
    pretrained_vision: ConfigPath | None = Field(None, description="a local ImageNet ResNet-18 state dict (.pt)")


class TrainEvalConfig(StrictModel):
    """The per-epoch evaluation hook: heatmaps of a release scored by the `is4 eval` harness."""

    release: WorkPath | None = Field(
        None, description="a release directory or ground-truth file (relative: inside WORK); none: no eval"
    )
    gt: Literal["box", "mask"] = "box"
    protocol: Literal["reference", "exact-k"] = "reference"
    every: int = Field(1, ge=1, le=10_000, description="evaluate every N epochs (and after the last)")
    metric: str = Field("iiou_adaptive", description="the score that picks best.pt (higher is better)")
    batch_size: int = Field(16, ge=1, le=4096)


class ACLConfig(StrictModel):
    """The ACL method (WACV'24 ACL-SSL, seed 003): frozen CLIPSeg + BEATs, trainable audio projection and masker.

    Defaults are the public code's (`config/train/Exp_ACL_v1.yaml`, `modules/models.py`) unless noted.
    """

    clipseg: ModelRef = Field(
        ModelRef(model_id="CIDAS/clipseg-rd64-refined"),
        description="the grounder: Hub id at a pinned revision, a local directory or tiny-random:clipseg",
    )
    audio_encoder: str = Field("tiny-random:beats", description="beats:<path to the BEATs .pt> or tiny-random:beats")
    audio_taps: list[int] = Field([3, 7, 11], description="0-based BEATs layers whose outputs are concatenated")
    audio_seconds: float = Field(10.0, description="the whole clip's fbank, cut or padded with silence to this")
    fga_dropout: float = Field(0.5, description="dropout of the attentive pooling's unary potential (the code's 0.5)")
    frozen_train_mode: bool = Field(False, description="true: frozen parts' dropout on in training (the code's)")
    prompt: str = Field("A photo of {}", description="{} is where the audio token (or the caption phrase) goes")
    image_size: int = Field(352, ge=8, le=2048, description="training crop and test resize")
    resize: int = Field(
        387, ge=8, le=2048, description="training frames are resized to resize x resize before the crop"
    )
    mask_init_w: float = Field(10.0, description="image masker w (tuned to real CLIPSeg logits)")
    mask_init_b: float = Field(14.0, description="image masker b")
    gumbel_tau: float = 1.0
    feature_mask_threshold: float = 0.5
    feature_mask_tau: float = 0.07
    temperature: float = 0.07
    acl_f_target: Literal["code", "paper"] = Field(
        "code", description="code: image b with audio n's mask vs audio b; paper (Eq. 2-3): vs audio n"
    )
    area_positive: float = 0.4
    area_negative: float = 0.0
    weight_acl_i: float = 1.0
    weight_acl_f: float = 1.0
    weight_area_reg: float = 1.0
    caption_loss: bool = Field(False, description="add L_ACL_C (seed 003 3.6; not in the public code)")
    weight_caption: float = 1.0
    heatmap_size: int = Field(
        224, ge=8, le=2048, description="maps are bicubic-resized to this before the sigmoid (the code's)"
    )


# `train.jsa.preset: jsa_official`: the official code's value of every setting where it differs from the paper
# (InhoKim429/JSA; the note's disagreement table). Keys given explicitly in the config win over the preset.
JSA_OFFICIAL = {
    "iqr_alpha": 0.4,
    "infer_sharpening": 0.1,
    "squared_error": "mean",
    "recon_stop_gradient": True,
    "fn_include_self": True,
    "mask_sampling": "bernoulli",
    "augment": "official",
    "train_log_eps": 1e-8,
}


class JSAConfig(StrictModel):
    """Joint Slot Attention (Kim et al., CVPR'25). Defaults follow the paper; each setting where the official code
    (InhoKim429/JSA) differs names the code's value, and `preset: jsa_official` selects all of them."""

    preset: Literal["paper", "jsa_official"] = Field("paper", description="jsa_official: the code's values below")
    image_size: int = Field(224, description="frames resized (test) / cropped (official augment) to this")
    width: int = Field(64, description="ResNet-18 base width (64 = the paper's; tests use 8-16)")
    blocks: list[int] = Field([2, 2, 2, 2], description="basic blocks per stage (2,2,2,2 = ResNet-18)")
    strides: list[int] = Field([1, 2, 2, 2], description="stage strides: layer4 stride 2 -> 7x7 at 224")
    norm: Literal["batch", "group"] = Field("batch", description="group: batch-independent (exact DDP parity)")
    dim: int = Field(512, description="slot / token dimension d (the 1x1 projection convs' output)")
    iterations: int = Field(5, ge=1, description="slot-attention iterations N")
    slot_weights: Literal["per_modality", "shared"] = Field(
        "per_modality",
        description="per_modality: own q/k/v, GRU, MLP, LNs per modality (code; the paper's 6.84 M-parameter count)",
    )
    mask_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of input tokens replaced by mask tokens")
    mask_sampling: Literal["exact", "bernoulli"] = Field(
        "exact", description="exact: round(ratio x tokens) per item (paper '10 %'); code: bernoulli per token"
    )
    tau: float = 0.03
    fn_k: int = Field(20, ge=1, description="k of the reciprocal k-NN false-negative mask (Eq. 12-13)")
    fn_include_self: bool = Field(False, description="code: true (top-k includes the item, k-1 neighbours)")
    weight_match: float = Field(100.0, description="paper lambda1 (the code's lam3)")
    weight_div: float = Field(0.1, description="paper lambda2 (the code's lam2)")
    weight_recon: float = Field(0.1, description="paper lambda3 (the code's lam1)")
    squared_error: Literal["sum", "mean"] = Field(
        "sum", description="L_match / L_recon: sum = squared L2 norms per item (paper); code: mean (MSE)"
    )
    recon_stop_gradient: bool = Field(False, description="code: true (detached reconstruction target)")
    iqr_alpha: float = Field(0.6, ge=0.0, le=1.0, description="IQR weight of the audio map (paper); code: 0.4")
    infer_sharpening: float = Field(1.0, gt=0.0, description="test-time attention-logit scale; code: 0.1")
    heatmap_size: int = Field(224, description="maps are bicubic-resized to this and min-max normalised")
    augment: Literal["none", "official"] = Field(
        "none", description="paper: none stated; official: crop, blur, flip, jitter, grey + freq/time masks"
    )
    audio_seconds: float = Field(5.0, description="the centre window of the clip (tiled if shorter)")
    train_log_eps: float = Field(1e-7, description="log(S + eps) of training spectrograms; code: 1e-8 (test 1e-7)")
    pretrained_vision: ConfigPath | None = Field(None, description="a local ImageNet ResNet-18 state dict (.pt)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("preset") == "jsa_official":
            return {**JSA_OFFICIAL, **data}
        return data

    @model_validator(mode="after")
    def _even_dim(self) -> JSAConfig:
        if self.dim % 2:
            raise ValueError(f"dim must be even (two halves of the decoders' position embedding), got {self.dim}")
        return self


class TrainConfig(StrictModel):
    """`is4 train`: a method trained on the manifests of a work directory."""

    method: str = Field("alignment", description="a key of is4.trainers.registry.METHODS")
    splits: list[str] = ["train"]
    id_list: ConfigPath | None = Field(None, description="clip ids to keep (one per line or first csv column)")
    neighbours: bool = Field(False, description="read the neighbours manifest for the conc positives")
    epochs: int = Field(50, ge=1, le=100_000)
    max_steps_per_epoch: int | None = Field(
        None, ge=1, le=10_000_000, description="cut each epoch short (tiny configs)"
    )
    batch_size: int = Field(128, ge=1, le=65_536, description="global batch (all ranks): not published, chosen")
    optimizer: Literal["adam", "adamw"] | None = Field(
        None, description="none: the method's (adamw for jsa, adam otherwise); adam's weight decay is L2"
    )
    lr: float | None = Field(None, gt=0, description="none: the method's (jsa 5e-5, otherwise 1e-4)")
    weight_decay: float | None = Field(
        None, ge=0, description="none: the method's (jsa 1e-2, otherwise 0: not published)"
    )
    num_workers: int = Field(2, ge=0, le=256, description="loader workers per rank")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads per rank on the CPU (default: cores / ranks)"
    )
    amp: bool = Field(True, description="mixed precision (CUDA only; float32 on the CPU)")
    compile: bool = Field(False, description="torch.compile the model")
    logger: Literal["tensorboard", "wandb"] = Field(
        "tensorboard",
        description="TensorBoard event files in RUN/tensorboard always; wandb also logs to Weights & Biases "
        "(the [wandb] extra)",
    )
    wandb_project: str = Field("is4", description="the W&B project of train.logger: wandb")
    eval: TrainEvalConfig = TrainEvalConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    acl: ACLConfig = ACLConfig()
    jsa: JSAConfig = JSAConfig()


# The build's stages in pipeline order; `is4.pipeline.registry.REGISTRY` declares each of them (a test keeps the two equal).
StageName = Literal[
    "ingest",
    "categories",
    "prompts",
    "generate",
    "prescreen",
    "verify",
    "annotate",
    "match",
    "caption",
    "neighbours",
    "release",
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
    neighbours: NeighboursConfig = NeighboursConfig()
    release: ReleaseConfig = ReleaseConfig()
    models: ModelsConfig = ModelsConfig()
    # Left out of every dump, so out of provenance, cache keys and the release's build-config.yaml.
    execution: ExecutionConfig = Field(ExecutionConfig(), exclude=True)
    train: TrainConfig = TrainConfig()


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


def in_workdir(path: Path, work: str | Path) -> Path:
    """A `WorkPath` setting as the run means it: relative, inside `work` (the run's work directory, `--workdir`
    included); absolute, itself."""
    return Path(path) if Path(path).expanduser().is_absolute() else Path(work) / path


def _from_folder(value: str, folder: str) -> str:
    """A path written in a config file in `folder`, as seen from the current directory: relative to it when inside
    it (the demo's `../work/demo` in `configs/` is `work/demo`), else absolute; an absolute or `~` path as written."""
    if Path(value).expanduser().is_absolute():
        return value
    target = os.path.abspath(os.path.join(folder, value))
    inside = os.path.relpath(target)
    return target if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside


def _rebase_value(value: object, annotation: object, metadata: Sequence[object], folder: str) -> object:
    if _IN_WORK in metadata:
        return value
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _rebase_value(value, args[0], [*metadata, *args[1:]], folder)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _rebase_value(value, options[0], metadata, folder) if len(options) == 1 else value
    if origin is list and isinstance(value, list):
        return [_rebase_value(v, args[0], metadata, folder) for v in value]
    if annotation is Path and isinstance(value, str):
        return value if _ON_PATH in metadata and len(Path(value).parts) == 1 else _from_folder(value, folder)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _rebase(value, annotation, folder)
    return value


def _rebase(data: object, model: type[BaseModel], folder: str) -> object:
    """`data` (a config file's mapping for `model`) with every relative path setting made relative to `folder`, the
    file's folder, except the `WorkPath` ones (relative to WORK); anything malformed is left to validation."""
    if not isinstance(data, dict):
        return data
    return {
        key: _rebase_value(value, info.annotation, info.metadata, folder)
        if (info := model.model_fields.get(key)) is not None and value is not None
        else value
        for key, value in data.items()
    }


def apply_overrides(data: object, overrides: Sequence[str]) -> object:
    """`data` with each `key.path=value` override set (the value read as YAML: `5`, `true`, `null`, `[a, b]`);
    missing mappings on the path are created. A malformed override or a path through a non-mapping raises
    ConfigError; the keys and values themselves are validated with the rest of the config."""
    if not overrides:
        return data
    result = copy.deepcopy(data) if data is not None else {}
    if not isinstance(result, dict):
        return result  # parse_config reports the top level
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"--set {override!r}: expected key.path=value (e.g. train.epochs=5)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {override!r}: value is not valid YAML: {exc}") from None
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part.strip(), {})
            if child is None:
                child = node[part.strip()] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {override!r}: {where} is not a section (it is {child!r})")
            node = child
        node[parts[-1].strip()] = value
    return result


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> BuildConfig:
    """Load and validate a YAML config file (None: the built-in defaults) with `key.path=value` overrides applied
    (`apply_overrides`); errors name the file, the override and the bad key. The file's relative paths are read
    from its folder (module docstring)."""
    data = read_yaml(path, "config", ConfigError) if path is not None else {}
    if path is not None:
        data = _rebase(data, BuildConfig, os.path.dirname(path))  # the file's paths; not those of `--set`
    source = str(path) if path is not None else "built-in defaults"
    if overrides:
        source += " with " + " ".join(f"--set {o}" for o in overrides)
    return parse_config(apply_overrides(data, overrides), source)
