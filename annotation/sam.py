"""Promptable segmentation with SAM: one image embedding per image, cached, then cheap prompt → mask calls.

SAM splits into a heavy ViT image encoder (run once per image) and a light prompt encoder + mask decoder (run per
prompt). A backend keeps the encoder's output, the *image embedding*, in an in-memory LRU of `cache_size` entries
and on disk under `WORK/state/sam-embeddings/{model-key}/{image_sha256}.pt` (written atomically with `torch.save`,
read back with `torch.load(..., weights_only=True)`), so a refinement click after the first prediction of an
image — in this process or a later one — runs only the prompt encoder and the mask decoder. The model key hashes
the model id, its exact revision and the dtype, so embeddings of another checkpoint are never reused.

Coordinates: prompts (`box` as `[x1, y1, x2, y2]`, `points` as `(x, y, label)`) are in pixels of the original
image; they are rescaled to SAM's input frame (longest side resized to 1024 in the real checkpoints) with the
per-axis factors of the resize the processor applied (`reshaped_input_sizes / original_sizes`, the same factors
`SamProcessor` uses), and the predicted low-resolution masks are brought back to the original resolution with the
processor's `post_process_masks` (upsample to the padded square, crop the padding, resize to the image).

Two backends with the same interface: `SamBackend` (transformers' `SamModel`/`SamProcessor`; the default) and
`SegmentAnythingBackend` (Meta's `segment-anything` package, optional: it needs torchvision; imported lazily).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from is4.config import ModelRef
from is4.manifests.atomic import atomic_path
from is4.manifests.checksum import json_sha256
from is4.manifests.errors import FatalError
from is4.pipeline.common.models import ModelError, file_revision, load_pretrained, torch_device_and_dtype

ROLE = "segmenter"
EMBEDDING_DIR = "state/sam-embeddings"

Point = tuple[float, float, int]  # (x, y, label): label 1 = positive (object), 0 = negative (not the object)


class SamError(FatalError, ValueError):
    """A prompt or an embedding that SAM cannot use."""


# --------------------------------------------------------------------------------------------------------------------
# Mask helpers
# --------------------------------------------------------------------------------------------------------------------


def mask_to_box(mask: np.ndarray) -> list[float] | None:
    """The tight box `[x1, y1, x2, y2]` of a boolean HxW mask, in pixel-edge coordinates; None for an empty mask.

    Inclusive-exclusive: pixel (row r, column c) covers [c, c+1) × [r, r+1), so x1 is the first object column,
    x2 the last object column + 1 (likewise y), and `x2 - x1` is the box width in pixels. A mask covering the
    whole W×H image gives `[0, 0, W, H]`.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise SamError(f"a mask must be 2-D, got shape {mask.shape}")
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise SamError(f"masks of different shapes {a.shape} and {b.shape}")
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def check_prompt(
    box: Sequence[float] | None, points: Sequence[Sequence[float]] | None
) -> tuple[list[float] | None, list[Point]]:
    """Validated prompt: a box of 4 finite numbers with x1 <= x2, y1 <= y2, points as (x, y, label 0|1)."""
    out_box = None
    if box is not None:
        out_box = [float(v) for v in box]
        if len(out_box) != 4 or not all(np.isfinite(out_box)):
            raise SamError(f"a box is [x1, y1, x2, y2] of finite numbers, got {box!r}")
        if out_box[2] < out_box[0] or out_box[3] < out_box[1]:
            raise SamError(f"box {out_box} has x2 < x1 or y2 < y1")
    out_points: list[Point] = []
    for p in points or ():
        if len(p) != 3:
            raise SamError(f"a point is (x, y, label), got {p!r}")
        x, y, label = float(p[0]), float(p[1]), p[2]
        if not (np.isfinite(x) and np.isfinite(y)):
            raise SamError(f"point {p!r} has a non-finite coordinate")
        if isinstance(label, bool) or label not in (0, 1):
            raise SamError(f"point {p!r}: the label must be 1 (positive) or 0 (negative)")
        out_points.append((x, y, int(label)))
    if out_box is None and not out_points:
        raise SamError("a SAM prompt needs a box or at least one point")
    return out_box, out_points


def embedding_key(model_id: str, revision: str, dtype: str) -> str:
    """The directory name of a model's embedding cache: a hash of its id, exact revision and dtype."""
    return json_sha256([model_id, revision, dtype])[:16]


# --------------------------------------------------------------------------------------------------------------------
# The embedding cache and prompt entry point shared by both backends
# --------------------------------------------------------------------------------------------------------------------


class _CachedEmbeddings:
    """In-memory LRU + on-disk cache of per-image encoder outputs (a dict of tensors), keyed by image sha256, and the
    prompt entry point of both backends (`predict`: a checked prompt decoded on the cached embedding by `_decode`)."""

    model_id: str
    revision: str
    device: Any
    dtype: Any

    def _init_cache(self, workdir: Path, key: str, cache_size: int) -> None:
        if cache_size < 1:
            raise SamError(f"cache_size must be at least 1, got {cache_size}")
        self.cache_dir = Path(workdir) / EMBEDDING_DIR / key
        self.cache_size = cache_size
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats = {"encoder_runs": 0, "memory_hits": 0, "disk_hits": 0}

    def _compute(self, image) -> dict[str, Any]:  # pragma: no cover - each backend implements it
        raise NotImplementedError

    def _decode(
        self, entry: dict[str, Any], box: list[float] | None, pts: list[Point], multimask: bool, mask_threshold: float
    ) -> tuple[np.ndarray, float]:  # pragma: no cover - each backend implements it
        raise NotImplementedError

    def predict(
        self,
        image_id: str,
        image,
        image_sha256: str,
        *,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        multimask: bool = True,
        mask_threshold: float = 0.0,
    ) -> tuple[np.ndarray, float]:
        """(boolean HxW mask at the image's resolution, SAM's predicted IoU of it) for a box and/or clicks.

        Only the prompt encoder and the mask decoder run, on the image's cached embedding (`image_embedding`). With
        `multimask`, SAM proposes three masks and the one with the highest predicted IoU is kept.
        """
        box, pts = check_prompt(box, points)
        return self._decode(self.image_embedding(image_id, image, image_sha256), box, pts, multimask, mask_threshold)

    def image_embedding(self, image_id: str, image, image_sha256: str) -> dict[str, Any]:
        """The cached encoder output of `image`: `embedding` (1×C×h×w on the model's device),
        `original_size` (H, W) and `reshaped_size` (the image's size in SAM's input frame).

        Computed once per image (keyed by the sha256 of its file): memory first, then disk, else the encoder runs
        and the result is saved. `image_id` is only used in messages.
        """
        import torch

        if (
            not isinstance(image_sha256, str)
            or len(image_sha256) != 64
            or not all(c in "0123456789abcdef" for c in image_sha256)
        ):
            raise SamError(f"{image_id}: image_sha256 must be 64 lowercase hex digits, got {image_sha256!r}")
        size = (image.height, image.width)
        hit = self._memory.get(image_sha256)
        if hit is not None:
            self._memory.move_to_end(image_sha256)
            self.stats["memory_hits"] += 1
            return self._checked(hit, size, image_id)
        path = self.cache_dir / f"{image_sha256}.pt"
        entry = None
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                entry = self._from_stored(stored)
                self.stats["disk_hits"] += 1
            except Exception:  # a torn or foreign file: recompute and overwrite it
                entry = None
        if entry is None:
            entry = self._compute(image)
            self.stats["encoder_runs"] += 1
            stored = {
                "embedding": entry["embedding"].detach().to("cpu"),
                "original_size": torch.tensor(entry["original_size"]),
                "reshaped_size": torch.tensor(entry["reshaped_size"]),
            }
            with atomic_path(path) as tmp:
                torch.save(stored, tmp)
        self._memory[image_sha256] = entry
        while len(self._memory) > self.cache_size:
            self._memory.popitem(last=False)
        return self._checked(entry, size, image_id)

    def _from_stored(self, stored: dict[str, Any]) -> dict[str, Any]:
        return {
            "embedding": stored["embedding"].to(device=self.device, dtype=self.dtype),
            "original_size": tuple(int(v) for v in stored["original_size"]),
            "reshaped_size": tuple(int(v) for v in stored["reshaped_size"]),
        }

    @staticmethod
    def _checked(entry: dict[str, Any], size: tuple[int, int], image_id: str) -> dict[str, Any]:
        if tuple(entry["original_size"]) != size:
            raise SamError(
                f"{image_id}: the cached embedding is of a {entry['original_size']} image, this image is {size}"
            )
        return entry


# --------------------------------------------------------------------------------------------------------------------
# transformers backend
# --------------------------------------------------------------------------------------------------------------------


class SamBackend(_CachedEmbeddings):
    """SAM through transformers (`SamModel`, `SamProcessor`), with cached image embeddings."""

    def __init__(
        self, model, processor, *, model_id: str, revision: str, workdir: str | Path, cache_size: int, device, dtype
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self._init_cache(Path(workdir), embedding_key(model_id, revision, str(dtype)), cache_size)

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, cache_size: int = 8) -> SamBackend:
        """Resolve the configured segmenter (Hub id, local directory or `tiny-random:sam`) and load it."""
        from transformers import SamModel, SamProcessor

        loaded = load_pretrained(ref, workdir, ROLE, SamModel, SamProcessor)
        return cls(
            loaded.model,
            loaded.processor,
            model_id=loaded.resolved.model_id,
            revision=loaded.resolved.revision,
            workdir=workdir,
            cache_size=cache_size,
            device=loaded.device,
            dtype=loaded.dtype,
        )

    def _compute(self, image) -> dict[str, Any]:
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        return {
            "embedding": embedding,
            "original_size": tuple(int(v) for v in inputs["original_sizes"][0]),
            "reshaped_size": tuple(int(v) for v in inputs["reshaped_input_sizes"][0]),
        }

    def _decode(
        self, entry: dict[str, Any], box: list[float] | None, pts: list[Point], multimask: bool, mask_threshold: float
    ) -> tuple[np.ndarray, float]:
        """Runs only the prompt encoder and the mask decoder on the cached embedding (`image_embeddings=`)."""
        import torch

        (orig_h, orig_w), (new_h, new_w) = entry["original_size"], entry["reshaped_size"]
        sx, sy = new_w / orig_w, new_h / orig_h
        kwargs: dict[str, Any] = {}
        if box is not None:
            kwargs["input_boxes"] = torch.tensor(
                [[[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]]], dtype=self.dtype, device=self.device
            )
        if pts:
            kwargs["input_points"] = torch.tensor(
                [[[[x * sx, y * sy] for x, y, _ in pts]]], dtype=self.dtype, device=self.device
            )
            kwargs["input_labels"] = torch.tensor(
                [[[label for _, _, label in pts]]], dtype=torch.int64, device=self.device
            )
        with torch.inference_mode():
            out = self.model(image_embeddings=entry["embedding"], multimask_output=multimask, **kwargs)
        scores = out.iou_scores[0, 0].float().cpu()  # (K,)
        best = int(torch.argmax(scores))
        low_res = out.pred_masks[0, :, best : best + 1].float().cpu()  # (1, 1, h, w)
        masks = self.processor.post_process_masks(
            [low_res],
            [list(entry["original_size"])],
            [list(entry["reshaped_size"])],
            mask_threshold=mask_threshold,
            binarize=True,
        )
        return masks[0][0, 0].numpy().astype(bool), float(scores[best])


# --------------------------------------------------------------------------------------------------------------------
# segment-anything backend (optional)
# --------------------------------------------------------------------------------------------------------------------


class SegmentAnythingBackend(_CachedEmbeddings):
    """Meta's `segment-anything` package (`SamPredictor`), for setups where it and torchvision are installed.

    `ref.model_id` is the path of an official checkpoint file (e.g. `sam_vit_h_4b8939.pth`); the architecture is
    taken from its name (`vit_h`, `vit_l` or `vit_b`; default `vit_h`) and the revision is the file's sha256.
    """

    def __init__(
        self, predictor, *, model_id: str, revision: str, workdir: str | Path, cache_size: int, device, dtype
    ) -> None:
        self.predictor = predictor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self._init_cache(Path(workdir), embedding_key(model_id, revision, str(dtype)), cache_size)

    @staticmethod
    def _import():
        try:
            import segment_anything
        except ImportError as exc:
            raise ModelError(
                "the segment-anything backend needs the `segment_anything` package (and torchvision), which is "
                f"not installed ({exc}); use SamBackend (transformers) instead"
            ) from None
        return segment_anything

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, cache_size: int = 8) -> SegmentAnythingBackend:
        sam_pkg = cls._import()
        device, dtype = torch_device_and_dtype(ref)
        checkpoint = Path(ref.model_id).expanduser()
        if not checkpoint.is_file():
            raise ModelError(f"segment-anything checkpoint {checkpoint} is not a file")
        name = checkpoint.name.lower()
        arch = next((a for a in ("vit_h", "vit_l", "vit_b") if a in name), "vit_h")
        model = sam_pkg.sam_model_registry[arch](checkpoint=str(checkpoint)).to(device=device, dtype=dtype).eval()
        predictor = sam_pkg.SamPredictor(model)
        return cls(
            predictor,
            model_id=ref.model_id,
            revision=file_revision(checkpoint),
            workdir=workdir,
            cache_size=cache_size,
            device=device,
            dtype=dtype,
        )

    def _compute(self, image) -> dict[str, Any]:
        rgb = np.asarray(image.convert("RGB"))
        self.predictor.set_image(rgb, image_format="RGB")
        return {
            "embedding": self.predictor.features,
            "original_size": tuple(self.predictor.original_size),
            "reshaped_size": tuple(self.predictor.input_size),
        }

    def _decode(
        self, entry: dict[str, Any], box: list[float] | None, pts: list[Point], multimask: bool, mask_threshold: float
    ) -> tuple[np.ndarray, float]:
        """The predictor's own prompt path on the cached embedding (it rescales the prompts itself)."""
        p = self.predictor
        p.features, p.original_size, p.input_size = entry["embedding"], entry["original_size"], entry["reshaped_size"]
        p.is_image_set = True
        p.model.mask_threshold = mask_threshold
        masks, scores, _ = p.predict(
            point_coords=np.array([[x, y] for x, y, _ in pts], dtype=np.float32) if pts else None,
            point_labels=np.array([label for _, _, label in pts]) if pts else None,
            box=np.array(box, dtype=np.float32) if box is not None else None,
            multimask_output=multimask,
        )
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best])
