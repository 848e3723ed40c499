"""The annotate stage: SAM with cached embeddings and prompt rescaling (tiny random SAM), OWLv2 box geometry
(constructed boxes, the library's own post-processing, the tiny random OWLv2), click refinement with a SAM
stand-in whose masks follow from the clicks, the whole stage on a hand-made work directory, resume and QA."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from is4.annotation.annotate import (
    AnnotateError,
    accepted_images,
    auto_mask_path,
    clip_to_box,
    encode_mask,
    mask_path,
    qa_report,
    read_mask,
    refine_instance,
    run_annotate,
)
from is4.annotation.grounding import Detector, padded_boxes_to_image
from is4.annotation.sam import (
    EMBEDDING_DIR,
    SamBackend,
    SamError,
    SegmentAnythingBackend,
    embedding_key,
    mask_iou,
    mask_to_box,
)
from is4.config import AnnotateConfig, ModelRef
from is4.manifests.io import manifest_path, read_manifest, write_manifest
from is4.manifests.schema import ANNOTATIONS
from is4.pipeline.common.models import ModelError, directory_revision, resolve_model
from tests.support import TinyModels

SAM = ModelRef(model_id="tiny-random:sam")
OWL = ModelRef(model_id="tiny-random:owlv2")
CFG = AnnotateConfig()
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def workdir(tmp_path: Path, tiny_models: TinyModels) -> Path:
    """A work directory whose models/ holds the session's tiny SAM and OWLv2."""
    return tiny_models.install(tmp_path / "work", "sam", "owlv2")


def _picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 8, height // 6, width // 2, height // 2], fill=(220, 40, 40))
    draw.ellipse([width // 2, height // 2, width - 3, height - 3], fill=(40, 200, 90))
    return image


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# Images of the hand-made work directory: id → (category_a, category_b, width, height, decision).
IMAGES = {
    "cello_dog_0": ("cello", "dog", 64, 40, "accept"),
    "cat_dog_0": ("cat", "dog", 36, 52, "accept"),
    "cat_cello_0": ("cat", "cello", 48, 48, "reject"),
    "cello_dog_1": ("cello", "dog", 50, 30, "pending"),
}


def _write_categories(work: Path) -> None:
    write_manifest(
        work,
        "categories",
        pd.DataFrame(
            [
                {
                    "label": "cat meowing",
                    "object": "cat",
                    "category_id": "cat",
                    "instrument": False,
                    "depictable": True,
                },
                {
                    "label": "dog barking",
                    "object": "dog",
                    "category_id": "dog",
                    "instrument": False,
                    "depictable": True,
                },
                {
                    "label": "playing cello",
                    "object": "cello",
                    "category_id": "cello",
                    "instrument": True,
                    "depictable": True,
                },
                {"label": "wind noise", "object": None, "category_id": None, "instrument": False, "depictable": False},
            ]
        ),
    )


def _write_images(work: Path, ids: list[str]) -> None:
    rows = []
    for k, image_id in enumerate(ids):
        a, b, w, h, _ = IMAGES[image_id]
        rel = f"media/images/{image_id}.png"
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        _picture(w, h, k).save(work / rel)
        rows.append(
            {
                "image_id": image_id,
                "category_a": a,
                "category_b": b,
                "template": "t",
                "style": "s",
                "prompt": f"a photo of a {a} and {b}",
                "seed": k,
                "model_id": "m",
                "model_revision": "r",
                "image_path": rel,
                "sha256": _sha(work / rel),
            }
        )
    write_manifest(work, "images", pd.DataFrame(rows))


def _write_verification(work: Path, decisions: dict[str, str]) -> None:
    write_manifest(
        work,
        "verification",
        pd.DataFrame(
            [
                {"image_id": i, "decision": d, "reason": None, "reviewer": "r", "source": "human", "decided_at": T0}
                for i, d in decisions.items()
            ]
        ),
    )


def _setup(work: Path) -> None:
    _write_categories(work)
    _write_images(work, list(IMAGES))
    _write_verification(work, {i: v[4] for i, v in IMAGES.items()})


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


# --- tiny models ----------------------------------------------------------------------------------------------------


def test_tiny_sam_and_owlv2_build_and_load_through_resolve_model(workdir: Path, tmp_path: Path):
    sam = SamBackend.load(SAM, workdir, cache_size=2)
    assert sam.model_id == "tiny-random:sam"
    assert sam.revision == directory_revision(workdir / "models" / "tiny-random-sam")
    assert sam.model.config.model_type == "sam"
    # SAM's real input frame: longest side 1024, padded to 1024×1024, PIL processor (no torchvision).
    assert sam.processor.image_processor.size["longest_edge"] == 1024
    assert sam.model.config.vision_config.image_size == 1024
    det = Detector.load(OWL, workdir)
    assert det.model.config.model_type == "owlv2"
    assert det.revision == directory_revision(workdir / "models" / "tiny-random-owlv2")
    # Seeded: building again elsewhere gives the same files, hence the same revision.
    again = resolve_model(SAM, tmp_path / "again", "segmenter")
    assert again.revision == sam.revision


def test_segment_anything_backend_fails_clearly_without_the_package(tmp_path: Path):
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="segment_anything"):
            SegmentAnythingBackend.load(ModelRef(model_id=str(tmp_path / "sam_vit_b.pth")), tmp_path)
    else:  # pragma: no cover - only where the optional package is installed
        pytest.skip("segment_anything is installed here")


# --- SAM: masks, embedding cache, prompt frame ----------------------------------------------------------------------


def test_predict_gives_image_sized_masks_and_encodes_each_image_once(workdir: Path):
    image = _picture(200, 120, 0)
    sha = "a" * 64
    sam = SamBackend.load(SAM, workdir, cache_size=1)
    calls = _count_calls(sam.model.vision_encoder)
    mask, score = sam.predict("img", image, sha, box=[10, 20, 100, 90])
    assert mask.shape == (120, 200) and mask.dtype == bool
    assert isinstance(score, float)
    assert len(calls) == 1
    mask2, _ = sam.predict("img", image, sha, points=[(50, 60, 1), (150, 30, 0)], multimask=False)
    assert mask2.shape == (120, 200)
    assert len(calls) == 1, "the second prediction of an image must not run the vision encoder"

    cached = workdir / EMBEDDING_DIR / embedding_key(sam.model_id, sam.revision, "torch.float32") / f"{sha}.pt"
    assert cached.is_file()
    stored = torch.load(cached, weights_only=True)
    assert stored["original_size"].tolist() == [120, 200]

    # A second image evicts the first from the in-memory LRU (size 1); the first comes back from disk.
    other = _picture(40, 30, 1)
    sam.predict("other", other, "b" * 64, box=[0, 0, 20, 20])
    assert len(calls) == 2
    sam.predict("img", image, sha, box=[10, 20, 100, 90])
    assert len(calls) == 2 and sam.stats["disk_hits"] == 1

    # A fresh backend (another process) reuses the embedding on disk and predicts the same mask.
    fresh = SamBackend.load(SAM, workdir, cache_size=1)
    fresh_calls = _count_calls(fresh.model.vision_encoder)
    again, again_score = fresh.predict("img", image, sha, box=[10, 20, 100, 90])
    assert len(fresh_calls) == 0 and fresh.stats == {"encoder_runs": 0, "memory_hits": 0, "disk_hits": 1}
    np.testing.assert_array_equal(again, mask)
    assert again_score == pytest.approx(score, abs=1e-6)


def test_cached_prediction_equals_a_full_forward_pass_through_the_processor(workdir: Path):
    """Our own prompt rescaling + image_embeddings= gives what the processor + pixel_values= path gives."""
    image = _picture(200, 120, 2)
    box = [30.0, 10.0, 150.0, 100.0]
    sam = SamBackend.load(SAM, workdir)
    mask, score = sam.predict("img", image, "c" * 64, box=box, multimask=True)
    inputs = sam.processor(images=image, input_boxes=[[box]], return_tensors="pt")
    with torch.inference_mode():
        out = sam.model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=True
        )
    best = int(out.iou_scores[0, 0].argmax())
    full = sam.processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    np.testing.assert_array_equal(mask, full[0][0, best].numpy())
    assert score == pytest.approx(float(out.iou_scores[0, 0, best]), abs=1e-5)


@pytest.mark.parametrize("width,height", [(200, 120), (90, 150)])
def test_points_and_box_reach_the_prompt_encoder_in_sams_1024_frame(workdir: Path, width: int, height: int):
    sam = SamBackend.load(SAM, workdir)
    seen: list[dict] = []
    sam.model.prompt_encoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    image = _picture(width, height, 3)
    box = [10.0, 20.0, 80.0, 70.0]
    points = [(50.0, 60.0, 1), (15.5, 30.25, 0)]
    mask, _ = sam.predict("img", image, "d" * 64, box=box, points=points)
    assert mask.shape == (height, width)

    # Independently: the longest side becomes 1024, the other is scaled by the same factor and rounded.
    scale = 1024 / max(width, height)
    new_w, new_h = int(width * scale + 0.5), int(height * scale + 0.5)
    assert max(new_w, new_h) == 1024
    fx, fy = new_w / width, new_h / height
    kwargs = seen[-1]
    expected_points = [[[[50 * fx, 60 * fy], [15.5 * fx, 30.25 * fy]]]]
    expected_box = [[[10 * fx, 20 * fy, 80 * fx, 70 * fy]]]
    np.testing.assert_allclose(kwargs["input_points"].double().numpy(), expected_points, rtol=1e-6)
    np.testing.assert_allclose(kwargs["input_boxes"].double().numpy(), expected_box, rtol=1e-6)
    assert kwargs["input_labels"].tolist() == [[[1, 0]]]

    sam.predict("img", image, "d" * 64, points=[(5, 6, 1)])
    assert seen[-1]["input_boxes"] is None
    np.testing.assert_allclose(seen[-1]["input_points"].double().numpy(), [[[[5 * fx, 6 * fy]]]], rtol=1e-6)


def test_bad_prompts_are_rejected(workdir: Path):
    sam = SamBackend.load(SAM, workdir)
    image = _picture(40, 30, 4)
    for kwargs in ({}, {"box": [1, 2, 3]}, {"box": [5, 5, 1, 1]}, {"points": [(1, 2, 2)]}, {"points": [(1, 2)]}):
        with pytest.raises(SamError):
            sam.predict("img", image, "e" * 64, **kwargs)
    with pytest.raises(SamError, match="sha256"):
        sam.predict("img", image, "not-a-hash", box=[0, 0, 5, 5])


def test_mask_to_box_and_iou_on_hand_made_masks():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:8] = True  # rows 2..4, columns 3..7
    assert mask_to_box(mask) == [3.0, 2.0, 8.0, 5.0]
    one = np.zeros((10, 12), dtype=bool)
    one[9, 11] = True
    assert mask_to_box(one) == [11.0, 9.0, 12.0, 10.0]
    assert mask_to_box(np.ones((10, 12), dtype=bool)) == [0.0, 0.0, 12.0, 10.0]
    assert mask_to_box(np.zeros((10, 12), dtype=bool)) is None

    a = np.zeros((8, 8), dtype=bool)
    a[0:4, 0:4] = True  # 16 pixels
    b = np.zeros((8, 8), dtype=bool)
    b[0:4, 2:6] = True  # 16 pixels, 8 shared
    assert mask_iou(a, b) == pytest.approx(8 / 24)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(SamError):
        mask_iou(a, np.zeros((4, 4), bool))


# --- grounding geometry ---------------------------------------------------------------------------------------------


def test_padded_square_boxes_map_back_to_the_original_frame():
    # A 200-wide, 100-high image is padded at the bottom to a 200×200 square: both axes scale by 200.
    boxes = torch.tensor(
        [
            [0.25, 0.25, 0.1, 0.2],  # → (0.2, 0.15, 0.3, 0.35) × 200
            [0.5, 0.6, 0.2, 0.4],
        ]
    )  # → (80, 80, 120, 160): reaches into the padding, clipped
    got = padded_boxes_to_image(boxes, height=100, width=200)
    np.testing.assert_allclose(got.numpy(), [[40, 30, 60, 70], [80, 80, 120, 100]], atol=1e-9)
    # A tall image (60 wide, 120 high) is padded on the right: both axes scale by 120.
    # x: (0.5 ± 0.25) × 120 = (30, 90), clipped to the image's right edge 60; y: (0.25 ± 0.25) × 120 = (0, 60).
    got = padded_boxes_to_image(torch.tensor([[0.5, 0.25, 0.5, 0.5]]), height=120, width=60)
    np.testing.assert_allclose(got.numpy(), [[30, 0, 60, 60]], atol=1e-9)


def test_box_conversion_agrees_with_transformers_post_processing():
    from transformers import Owlv2ImageProcessorPil

    rng = np.random.default_rng(0)
    pred = torch.tensor(rng.uniform(0.1, 0.6, size=(1, 7, 4)), dtype=torch.float32)
    outputs = SimpleNamespace(logits=torch.full((1, 7, 2), 5.0), pred_boxes=pred)
    ours = padded_boxes_to_image(pred[0], height=90, width=150)
    lib = Owlv2ImageProcessorPil().post_process_object_detection(outputs, threshold=0.0, target_sizes=[(90, 150)])
    lib_boxes = lib[0]["boxes"].double()
    clipped = torch.minimum(lib_boxes.clamp(min=0), torch.tensor([150.0, 90.0, 150.0, 90.0], dtype=torch.float64))
    np.testing.assert_allclose(ours.numpy(), clipped.numpy(), rtol=1e-6, atol=1e-4)


def test_owlv2_processor_pads_bottom_and_right(workdir: Path):
    """The assumption behind the conversion, checked on the library's preprocessing: image top-left, zeros after."""
    det = Detector.load(OWL, workdir)
    white = Image.new("RGB", (200, 100), (255, 255, 255))  # wide: padded below to 200×200
    pixels = det.processor(images=white, text=[["x"]], return_tensors="pt")["pixel_values"][0, 0]  # 32×32
    side = pixels.shape[-1]
    top, bottom = pixels[: side // 2 - 2], pixels[side // 2 + 2 :]
    assert float(top.min()) > 1.0  # normalised white
    assert float(bottom.max()) < -1.0  # normalised zero padding
    tall = Image.new("RGB", (100, 200), (255, 255, 255))  # tall: padded on the right
    pixels = det.processor(images=tall, text=[["x"]], return_tensors="pt")["pixel_values"][0, 0]
    assert float(pixels[:, : side // 2 - 2].min()) > 1.0 and float(pixels[:, side // 2 + 2 :].max()) < -1.0


def test_detect_takes_each_querys_best_box(workdir: Path):
    det = Detector.load(OWL, workdir)
    image = _picture(64, 40, 5)
    queries = ["a photo of a dog", "a photo of a cello"]
    scores, boxes = det.scores_and_boxes(image, queries)
    assert scores.shape[1] == 2 and boxes.shape == (scores.shape[0], 4)
    assert not torch.allclose(scores[:, 0], scores[:, 1]), "queries must make a difference"
    found = det.detect(image, queries, threshold=0.0)
    for q, hit in enumerate(found):
        best = int(scores[:, q].argmax())
        assert hit is not None
        np.testing.assert_allclose(hit[0], boxes[best].tolist())
        assert hit[1] == pytest.approx(float(scores[best, q]))
        x1, y1, x2, y2 = hit[0]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 40
    assert det.detect(image, queries, threshold=1.0) == [None, None]


# --- refinement with a SAM stand-in ----------------------------------------------------------------------------------


class DiskSam:
    """A SAM stand-in: the mask is the union of disks of radius R around the positive clicks minus the disks around
    the negative clicks, inside the box. Records the prompts it was given."""

    R = 6
    model_id = "stand-in"
    revision = "v1"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def predict(self, image_id, image, image_sha256, *, box=None, points=None, multimask=True, mask_threshold=0.0):
        self.calls.append(
            {"image_id": image_id, "sha": image_sha256, "box": box, "points": points, "multimask": multimask}
        )
        return disks(image.height, image.width, points, box, self.R), 0.75


def disks(height, width, points, box, r):
    yy, xx = np.mgrid[0:height, 0:width]
    centres = (yy + 0.5, xx + 0.5)
    mask = np.zeros((height, width), dtype=bool)
    for x, y, label in points:
        if label == 1:
            mask |= (centres[1] - x) ** 2 + (centres[0] - y) ** 2 <= r * r
    for x, y, label in points:
        if label == 0:
            mask &= ~((centres[1] - x) ** 2 + (centres[0] - y) ** 2 <= r * r)
    x1, y1, x2, y2 = box
    mask &= (centres[1] >= x1) & (centres[1] <= x2) & (centres[0] >= y1) & (centres[0] <= y2)
    return mask


def _auto_row(iid: str, image_id: str, category: str, mask: np.ndarray, prompt_box, score=0.5) -> dict:
    return {
        "instance_id": iid,
        "image_id": image_id,
        "category": category,
        "mask_path": mask_path(iid),
        "bbox_xyxy": mask_to_box(mask),
        "method": "auto",
        "model_id": "tiny-random:sam",
        "model_revision": "x",
        "detector_id": "d",
        "detector_revision": "dr",
        "detector_score": score,
        "prompt_box_xyxy": prompt_box,
        "points": None,
        "sam_score": 0.9,
        "auto_mask_path": None,
        "auto_iou": None,
        "area": int(mask.sum()),
    }


def test_refine_instance_follows_the_clicks_and_keeps_the_auto_mask(tmp_path: Path):
    work = tmp_path / "work"
    _write_categories(work)
    _write_images(work, ["cello_dog_0"])  # 64 × 40
    iid = "cello_dog_0_dog"
    box = [2.0, 2.0, 60.0, 38.0]
    auto = disks(40, 64, [(20, 20, 1)], box, DiskSam.R)  # the automatic proposal: only the left part
    (work / "media/masks").mkdir(parents=True)
    (work / mask_path(iid)).write_bytes(encode_mask(auto))
    other = _auto_row("cello_dog_0_cello", "cello_dog_0", "cello", auto, box)
    write_manifest(
        work, ANNOTATIONS, pd.DataFrame([_auto_row(iid, "cello_dog_0", "dog", auto, box), other]), {"stage": "annotate"}
    )
    sam = DiskSam()

    # 1. A positive click on the missed right part adds it.
    clicks = [(20.0, 20.0, 1), (44.0, 20.0, 1)]
    row = refine_instance(work, CFG, SAM, iid, points=clicks, backend=sam)
    expected = disks(40, 64, clicks, box, DiskSam.R)
    final = read_mask(work / mask_path(iid))
    np.testing.assert_array_equal(final, expected)
    assert final[20, 44] and not auto[20, 44], "the positive click added the region around it"
    assert sam.calls[-1]["box"] == box, "the current prompt box is reused"
    assert sam.calls[-1]["multimask"] is False  # several clicks: one mask
    assert sam.calls[-1]["sha"] == _sha(work / "media/images/cello_dog_0.png")
    np.testing.assert_array_equal(read_mask(work / auto_mask_path(iid)), auto)

    # 2. A negative click removes the region around it; the automatic mask stays the first one.
    clicks = [(20.0, 20.0, 1), (44.0, 20.0, 1), (24.0, 20.0, 0)]
    row = refine_instance(work, CFG, SAM, iid, points=clicks, backend=sam)
    expected = disks(40, 64, clicks, box, DiskSam.R)
    final = read_mask(work / mask_path(iid))
    np.testing.assert_array_equal(final, expected)
    assert not final[20, 24] and auto[20, 24], "the negative click removed the region around it"
    np.testing.assert_array_equal(read_mask(work / auto_mask_path(iid)), auto)

    frame = read_manifest(work, ANNOTATIONS).set_index("instance_id")
    got = frame.loc[iid]
    assert got["method"] == "refined"
    assert json.loads(got["points"]) == [[20.0, 20.0, 1], [44.0, 20.0, 1], [24.0, 20.0, 0]]
    # The IoU computed here by hand: the automatic disk against the final mask.
    inter, union = np.logical_and(auto, expected).sum(), np.logical_or(auto, expected).sum()
    assert got["auto_iou"] == pytest.approx(inter / union)
    assert 0 < got["auto_iou"] < 0.9
    rows, cols = np.nonzero(expected)
    assert list(got["bbox_xyxy"]) == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert list(got["prompt_box_xyxy"]) == box
    assert got["area"] == expected.sum() and got["sam_score"] == 0.75
    assert got["auto_mask_path"] == auto_mask_path(iid) and got["mask_path"] == mask_path(iid)
    assert got["model_id"] == "stand-in" and got["model_revision"] == "v1"
    assert row["auto_iou"] == got["auto_iou"]
    assert frame.loc["cello_dog_0_cello", "method"] == "auto", "other rows are untouched"

    # 3. A new box replaces the prompt box and is recorded; a single click asks for three masks.
    new_box = [30.0, 5.0, 60.0, 35.0]
    refine_instance(work, CFG, SAM, iid, points=[(44.0, 20.0, 1)], box=new_box, backend=sam)
    assert sam.calls[-1]["box"] == new_box and sam.calls[-1]["multimask"] is True
    got = read_manifest(work, ANNOTATIONS).set_index("instance_id").loc[iid]
    assert list(got["prompt_box_xyxy"]) == new_box
    np.testing.assert_array_equal(read_mask(work / mask_path(iid)), disks(40, 64, [(44, 20, 1)], new_box, 6))

    with pytest.raises(AnnotateError, match="not in the annotations manifest"):
        refine_instance(work, CFG, SAM, "nope_dog", points=[(1, 1, 1)], backend=sam)
    with pytest.raises(AnnotateError, match="click"):
        refine_instance(work, CFG, SAM, iid, points=[], backend=sam)
    with pytest.raises(AnnotateError):
        refine_instance(work, CFG, SAM, iid, points=[(1, 1, 5)], backend=sam)


# --- the whole stage -------------------------------------------------------------------------------------------------


def test_run_annotate_end_to_end_with_tiny_models_and_resume(workdir: Path):
    _setup(workdir)
    assert list(accepted_images(workdir)["image_id"]) == ["cat_dog_0", "cello_dog_0"]
    progress: list[tuple[int, int, str]] = []
    summary = run_annotate(workdir, CFG, SAM, OWL, progress=lambda *a: progress.append(a))
    assert summary["images"] == 2 and summary["instances"] == 4 and summary["new"] == 4 and summary["kept"] == 0
    assert summary["fallback_boxes"] == 0  # the tiny detector's scores are around 0.5, above 0.05
    assert summary["segmenter_revision"] == directory_revision(workdir / "models/tiny-random-sam")
    assert summary["detector_revision"] == directory_revision(workdir / "models/tiny-random-owlv2")
    assert summary["embedding_stats"]["encoder_runs"] == 2  # one per image, shared by its two objects
    assert progress[-1][:2] == (2, 2)

    frame = read_manifest(workdir, ANNOTATIONS)
    assert sorted(frame["instance_id"]) == ["cat_dog_0_cat", "cat_dog_0_dog", "cello_dog_0_cello", "cello_dog_0_dog"]
    assert set(frame["image_id"]) == {"cat_dog_0", "cello_dog_0"}, "only accepted images are annotated"
    for row in frame.to_dict("records"):
        _, _, w, h, _ = IMAGES[row["image_id"]]
        assert row["instance_id"] == f"{row['image_id']}_{row['category']}"
        assert row["method"] == "auto" and row["model_id"] == "tiny-random:sam"
        assert row["detector_id"] == "tiny-random:owlv2" and row["detector_score"] >= CFG.detector_threshold
        with Image.open(workdir / row["mask_path"]) as im:
            assert im.mode == "L" and im.size == (w, h)
            values = np.asarray(im)
        assert set(np.unique(values)) <= {0, 255}
        mask = values == 255
        box = mask_to_box(mask)
        assert (None if box is None else box) == (None if row["bbox_xyxy"] is None else list(row["bbox_xyxy"]))
        assert row["area"] == mask.sum()
        x1, y1, x2, y2 = row["prompt_box_xyxy"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert pd.isna(row["points"]) and pd.isna(row["auto_iou"])
    masks_before = {p.name: p.read_bytes() for p in (workdir / "media/masks").glob("*.png")}

    # Refine one instance (stand-in SAM), then resume: nothing is recomputed, the refined row stays as it is.
    refined_id = "cello_dog_0_dog"
    refine_instance(workdir, CFG, SAM, refined_id, points=[(10.0, 10.0, 1)], backend=DiskSam())
    refined_before = read_manifest(workdir, ANNOTATIONS).set_index("instance_id").loc[refined_id]
    refined_mask = (workdir / mask_path(refined_id)).read_bytes()
    manifest_bytes = manifest_path(workdir, "annotations").read_bytes()
    again = run_annotate(workdir, CFG, SAM, OWL)
    assert again["new"] == 0 and again["kept"] == 4 and again["segmenter_revision"] is None  # no model loaded
    assert manifest_path(workdir, "annotations").read_bytes() == manifest_bytes

    # A newly accepted image gets annotated; the refined row and every existing mask are left alone.
    _write_verification(workdir, {**{i: v[4] for i, v in IMAGES.items()}, "cello_dog_1": "accept"})
    third = run_annotate(workdir, CFG, SAM, OWL)
    assert third["new"] == 2 and third["kept"] == 4 and third["instances"] == 6
    frame = read_manifest(workdir, ANNOTATIONS).set_index("instance_id")
    after = frame.loc[refined_id]
    assert after["method"] == "refined" and after["points"] == refined_before["points"]
    assert after["auto_iou"] == refined_before["auto_iou"]
    assert (workdir / mask_path(refined_id)).read_bytes() == refined_mask
    for name, data in masks_before.items():
        if name != f"{refined_id}.png":
            assert (workdir / "media/masks" / name).read_bytes() == data

    # Rejecting an image drops its rows from the manifest.
    _write_verification(
        workdir, {**{i: v[4] for i, v in IMAGES.items()}, "cat_dog_0": "reject", "cello_dog_1": "accept"}
    )
    fourth = run_annotate(workdir, CFG, SAM, OWL)
    assert fourth["dropped"] == 2 and fourth["instances"] == 4 and fourth["new"] == 0


def test_run_annotate_without_a_detector_prompts_with_the_whole_image(workdir: Path):
    _setup(workdir)
    summary = run_annotate(workdir, CFG, SAM, None)
    assert summary["fallback_boxes"] == 4 and summary["detector_id"] is None
    frame = read_manifest(workdir, ANNOTATIONS)
    for row in frame.to_dict("records"):
        _, _, w, h, _ = IMAGES[row["image_id"]]
        assert list(row["prompt_box_xyxy"]) == [0, 0, w, h]
        assert pd.isna(row["detector_score"]) and pd.isna(row["detector_id"])
    # Same inputs, same model: a fresh run in another work directory writes the same mask bytes.
    other = workdir.parent / "other"
    shutil.copytree(workdir / "models", other / "models")
    shutil.copytree(workdir / "manifests", other / "manifests", ignore=shutil.ignore_patterns("annotations*"))
    shutil.copytree(workdir / "media/images", other / "media/images")
    run_annotate(other, CFG, SAM, None)
    for row in frame.to_dict("records"):
        assert (other / row["mask_path"]).read_bytes() == (workdir / row["mask_path"]).read_bytes()
    report = qa_report(workdir)
    assert report["fallback_boxes"] == 4 and report["refined"] == 0 and report["auto_iou_mean"] is None


def test_run_annotate_fails_clearly_on_an_accepted_image_that_is_missing(workdir: Path):
    _setup(workdir)
    (workdir / "media/images/cat_dog_0.png").unlink()
    with pytest.raises(AnnotateError, match="does not exist"):
        run_annotate(workdir, CFG, SAM, None)


def test_qa_report_numbers(tmp_path: Path):
    work = tmp_path / "work"
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    rows = []
    for k, (method, iou, score) in enumerate(
        [
            ("refined", 0.5, 0.3),
            ("refined", 0.95, None),
            ("auto", None, None),
            ("auto", None, 0.8),
            ("refined", 0.85, 0.6),
        ]
    ):
        row = _auto_row(f"img{k}_dog", f"img{k // 2}", "dog", mask, [0.0, 0.0, 4.0, 4.0], score=score)
        row.update({"method": method, "auto_iou": iou})
        rows.append(row)
    write_manifest(work, ANNOTATIONS, pd.DataFrame(rows), {})
    report = qa_report(work)
    assert report["instances"] == 5 and report["images"] == 3
    assert report["refined"] == 3 and report["auto"] == 2
    assert report["auto_iou_mean"] == pytest.approx((0.5 + 0.95 + 0.85) / 3)
    assert report["auto_iou_min"] == 0.5
    assert report["objects_fixed"] == 2  # 0.5 and 0.85 are under 0.9
    assert report["fallback_boxes"] == 2
    assert json.loads((work / "reports/annotation_qa.json").read_text()) == report


def test_clip_to_box_keeps_the_pixels_whose_centre_is_in_the_box() -> None:
    mask = np.ones((6, 8), dtype=bool)
    mask[0, 0] = False
    clipped = clip_to_box(mask, [1.0, 0.0, 4.0, 2.5])  # columns 1..3, rows 0..2 (a centre on the edge is in)
    expected = np.zeros((6, 8), dtype=bool)
    for y in range(6):
        for x in range(8):
            expected[y, x] = mask[y, x] and 1.0 <= x + 0.5 <= 4.0 and 0.0 <= y + 0.5 <= 2.5
    assert np.array_equal(clipped, expected) and clipped.sum() == 9
    assert np.array_equal(clip_to_box(mask, [0, 0, 8, 6]), mask)  # the whole image: unchanged
    assert not clip_to_box(mask, [3.6, 2.6, 3.9, 2.9]).any()  # no pixel centre inside
