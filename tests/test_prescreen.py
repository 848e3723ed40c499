"""The pre-screen: presence scores, duplicate groups and queue order on hand-made embeddings, then the whole stage
with the tiny random CLIP over generated PNGs (real image tower, real manifests)."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from is4.config import ModelRef, PrescreenConfig
from is4.manifests.io import manifest_path, read_manifest, read_provenance, write_manifest
from is4.pipeline.common.models import directory_revision
from is4.pipeline.images.prescreen import (
    PrescreenError,
    both_present,
    duplicate_groups,
    presence_scores,
    queue_order,
    run_prescreen,
)
from is4.pipeline.verification import HUMAN, update_verification
from tests.support import TinyModels

TINY = ModelRef(model_id="tiny-random:clip")
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

# --- pure functions -------------------------------------------------------------------------------------------

DOG, CELLO, CAT, CAR = range(4)
E = np.eye(5)[:4]  # orthonormal text embeddings of the four categories (one spare dimension)


def test_presence_scores_match_hand_computation():
    s = 10.0
    images = np.array([E[DOG] + E[CELLO], E[DOG], 3 * E[CAT]])
    pairs = np.array([[DOG, CELLO], [DOG, CELLO], [CAT, CAR]])
    got = presence_scores(images, E, pairs, s)

    # dog+cello: cosine 1/√2 with each of its own objects, 0 with the two distractors (cat, car); the partner
    # object is not in the softmax, so each object scores e^(s/√2) / (e^(s/√2) + 2).
    both = math.exp(s / math.sqrt(2)) / (math.exp(s / math.sqrt(2)) + 2)
    # dog only: dog has cosine 1 → e^s / (e^s + 2); cello has cosine 0 like its distractors → 1/3 (chance).
    alone = math.exp(s) / (math.exp(s) + 2)
    expected = np.array([[both, both], [alone, 1 / 3], [alone, 1 / 3]])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0].min() > 0.95  # had the partner competed, each would be about 0.5
    assert got[1, 1] < 0.34
    np.testing.assert_array_equal(both_present(got), expected.min(axis=1))


def test_presence_scores_equal_a_per_image_softmax():
    rng = np.random.default_rng(0)
    n, c, d, s = 7, 6, 8, 14.3
    image_emb, text_emb = rng.normal(size=(n, d)), rng.normal(size=(c, d))
    pairs = np.array([rng.choice(c, size=2, replace=False) for _ in range(n)])
    got = presence_scores(image_emb, text_emb, pairs, s)
    for i in range(n):
        img = image_emb[i] / np.linalg.norm(image_emb[i])
        for col in range(2):
            own, other = pairs[i, col], pairs[i, 1 - col]
            classes = [own] + [k for k in range(c) if k not in (own, other)]
            logits = np.array([s * img @ (text_emb[k] / np.linalg.norm(text_emb[k])) for k in classes])
            probs = np.exp(logits) / np.exp(logits).sum()
            assert got[i, col] == pytest.approx(probs[0], rel=1e-12)


def test_presence_scores_reject_bad_pairs():
    with pytest.raises(ValueError, match="distinct"):
        presence_scores(E[:1], E, np.array([[DOG, DOG]]), 10.0)
    with pytest.raises(ValueError, match="shape"):
        presence_scores(E[:2], E, np.array([[DOG, CAT]]), 10.0)


def test_image_with_both_objects_is_ranked_above_images_missing_one():
    rng = np.random.default_rng(1)
    noise = 0.05 * rng.normal(size=(3, 5))
    # Ids sort the wrong way round, so a tie-break by image_id cannot produce the expected order.
    ids = ["a_dog_only", "b_cello_only", "c_dog_and_cello"]
    images = np.array([E[DOG], E[CELLO], E[DOG] + E[CELLO]]) + noise
    pairs = np.array([[DOG, CELLO]] * 3)
    both = both_present(presence_scores(images, E, pairs, 14.3))
    groups = duplicate_groups(images, 0.95)
    assert groups == [0, 1, 2]
    ranks = queue_order(both, groups, ids)
    assert ranks[2] == 1
    assert sorted(ranks) == [1, 2, 3]


def _unit(deg: float) -> np.ndarray:
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg)), 0.0])


def test_duplicate_groups_greedy_in_given_order():
    v, w = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    emb = np.array([v, 2 * v, w, v + 0.01 * w, w, v])
    assert duplicate_groups(emb, 0.95) == [0, 0, 2, 0, 2, 0]
    assert duplicate_groups(emb, 1.0) == [0, 0, 2, 3, 2, 0]  # exact copies group even at cosine 1


def test_duplicate_groups_join_first_representative_not_the_closest_or_a_member():
    # 0° and 40° are two groups (cos 0.77); 22° is close to both and joins the first, though 40° is closer.
    assert duplicate_groups(np.array([_unit(0), _unit(40), _unit(22)]), 0.9) == [0, 1, 0]
    # 20° joins 0°; 40° is close to 20° but 20° is a member, not a representative, so 40° founds a group.
    assert duplicate_groups(np.array([_unit(0), _unit(20), _unit(40)]), 0.9) == [0, 0, 2]


def test_queue_order_shows_one_of_each_group_first():
    ids = ["e", "d", "c", "b", "a"]
    groups = [0, 0, 2, 2, 4]
    both = [0.5, 0.9, 0.3, 0.8, 0.3]
    # representatives 0 (0.5), then 2 and 4 tied at 0.3 → "a" (4) before "c" (2); then duplicates 1 (0.9), 3 (0.8).
    assert queue_order(both, groups, ids).tolist() == [1, 4, 3, 5, 2]
    assert queue_order([], [], []).tolist() == []


# --- the stage with the tiny CLIP -----------------------------------------------------------------------------

CATEGORY_ROWS = [
    ("car passing by", "car", "car", False, True),
    ("cat meowing", "cat", "cat", False, True),
    ("dog barking", "dog", "dog", False, True),
    ("dog growling", "growling dog", "dog", False, True),  # same id: the first label's noun is used
    ("playing cello", "cello", "cello", True, True),
    ("wind noise", None, None, False, False),
]


def _solid(colour):
    return Image.new("RGB", (64, 64), colour)


def _checker():
    im = _solid((0, 0, 0))
    draw = ImageDraw.Draw(im)
    for x in range(0, 64, 8):
        for y in range(0, 64, 8):
            if (x + y) // 8 % 2:
                draw.rectangle([x, y, x + 7, y + 7], fill=(255, 255, 255))
    return im


def _stripes():
    im = _solid((255, 255, 0))
    draw = ImageDraw.Draw(im)
    for x in range(0, 64, 16):
        draw.rectangle([x, 0, x + 7, 63], fill=(0, 0, 128))
    return im


# image_id → (category_a, category_b, picture); the three red ones are (near-)identical, the rest clearly differ.
PICTURES = {
    "car_cat_0": ("car", "cat", lambda: _solid((0, 255, 0))),
    "car_cello_0": ("car", "cello", _checker),
    "cat_dog_0": ("cat", "dog", lambda: _solid((0, 0, 255))),
    "cat_dog_1": ("cat", "dog", _stripes),
    "cello_dog_0": ("cello", "dog", lambda: _solid((255, 0, 0))),
    "cello_dog_1": ("cello", "dog", lambda: _solid((255, 0, 0))),
    "cello_dog_2": ("cello", "dog", lambda: _solid((250, 5, 0))),
}
RED = ["cello_dog_0", "cello_dog_1", "cello_dog_2"]


@pytest.fixture(scope="module")
def tiny_clip(tiny_models: TinyModels) -> Path:
    return tiny_models.path(TINY.model_id.removeprefix("tiny-random:"))


def make_workdir(root: Path, tiny_clip: Path, flags: dict[str, tuple] | None = None, no_path=()) -> Path:
    shutil.copytree(tiny_clip, root / "models" / tiny_clip.name)  # what resolve_model would build
    write_manifest(
        root,
        "categories",
        pd.DataFrame(CATEGORY_ROWS, columns=["label", "object", "category_id", "instrument", "depictable"]),
    )
    rows = []
    for image_id, (a, b, picture) in PICTURES.items():
        path = f"images/{image_id}.png"
        (root / "images").mkdir(exist_ok=True)
        picture().save(root / path)
        rows.append(
            {
                "image_id": image_id,
                "category_a": a,
                "category_b": b,
                "template": "t",
                "style": "s",
                "prompt": f"a photo of a {a} and {b}",
                "seed": 1,
                "model_id": "m",
                "model_revision": "r",
                "image_path": path,
                "sha256": None,
            }
        )
    for image_id in no_path:
        rows.append({"image_id": image_id, "category_a": "car", "category_b": "dog", "image_path": None})
    frame = pd.DataFrame(rows)
    if flags is not None:  # as the generate stage writes them: flag, flag_reason
        frame["flag"] = [flags.get(i, (None, None))[0] for i in frame["image_id"]]
        frame["flag_reason"] = [flags.get(i, (None, None))[1] for i in frame["image_id"]]
    write_manifest(root, "images", frame)
    return root


def test_run_prescreen_writes_a_valid_queue(tmp_path: Path, tiny_clip: Path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    work = make_workdir(tmp_path, tiny_clip)
    summary = run_prescreen(work, PrescreenConfig(batch_size=3), TINY)
    table = read_manifest(work, "prescreen").set_index("image_id")

    assert summary["images"] == summary["scored"] == len(PICTURES)
    assert summary["verification_manifest"] is None and not manifest_path(work, "verification").exists()
    assert sorted(table.index) == sorted(PICTURES)
    assert sorted(table["queue_rank"]) == list(range(1, len(PICTURES) + 1))
    assert (table["model_id"] == "tiny-random:clip").all()
    assert (table["model_revision"] == directory_revision(tiny_clip)).all()
    assert summary["model_revision"] == directory_revision(tiny_clip)
    np.testing.assert_array_equal(table["both_present"], table[["score_a", "score_b"]].min(axis=1))

    # Duplicates from the real image tower: the three red images group under the first, all others stand alone.
    assert table.loc[RED, "duplicate_group"].tolist() == ["cello_dog_0"] * 3
    others = [i for i in PICTURES if i not in RED]
    assert table.loc[others, "duplicate_group"].tolist() == others
    assert summary["groups"] == len(others) + 1
    # One of each group first: the two red copies are the last two in the queue.
    assert sorted(table.loc[RED[1:], "queue_rank"]) == [len(PICTURES) - 1, len(PICTURES)]

    # The scores are CLIP's own softmax over "a photo of a <noun>" for the categories that are not the image's.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    ids = ["car", "cat", "cello", "dog"]
    texts = ["a photo of a car", "a photo of a cat", "a photo of a cello", "a photo of a dog"]
    pictures = [PICTURES[i][2]() for i in table.index]
    with torch.inference_mode():
        logits = model(**processor(text=texts, images=pictures, padding=True, return_tensors="pt")).logits_per_image
    logits = logits.double().numpy()
    for row, image_id in zip(logits, table.index):
        a, b = (ids.index(c) for c in PICTURES[image_id][:2])
        for own, other, column in ((a, b, "score_a"), (b, a, "score_b")):
            keep = [k for k in range(4) if k != other]
            expected = np.exp(row[own]) / np.exp(row[keep]).sum()
            assert table.loc[image_id, column] == pytest.approx(expected, rel=1e-5)
    assert read_provenance(work, "prescreen")["categories"] == ids


def test_same_inputs_give_identical_prescreen_bytes(tmp_path: Path, tiny_clip: Path):
    work = make_workdir(tmp_path / "a", tiny_clip)
    run_prescreen(work, PrescreenConfig(batch_size=4), TINY)
    first = manifest_path(work, "prescreen").read_bytes()
    run_prescreen(work, PrescreenConfig(batch_size=4), TINY)
    assert manifest_path(work, "prescreen").read_bytes() == first
    copy = shutil.copytree(work, tmp_path / "b")  # another directory: no absolute path leaks into the file
    manifest_path(copy, "prescreen").unlink()
    run_prescreen(copy, PrescreenConfig(batch_size=4), TINY)
    assert manifest_path(copy, "prescreen").read_bytes() == first


def test_auto_reject_keeps_human_decisions_and_rejects_flagged_images(tmp_path: Path, tiny_clip: Path):
    work = make_workdir(
        tmp_path,
        tiny_clip,
        flags={"car_cello_0": ("black", "mean pixel 0.1"), "gone_0": ("nsfw", None)},
        no_path=["gone_0"],
    )

    # Without a threshold, only the generation flags decide; everything else waits for a human.
    summary = run_prescreen(work, PrescreenConfig(), TINY, decided_at=T0)
    ver = read_manifest(work, "verification").set_index("image_id")
    assert summary["auto_rejected"] == 2 and summary["pending"] == len(PICTURES) - 1
    assert ver.loc["car_cello_0", "reason"] == "generation flag: black (mean pixel 0.1)"
    assert ver.loc["gone_0", "reason"] == "generation flag: nsfw"
    assert (ver.loc[["car_cello_0", "gone_0"], "decided_at"] == pd.Timestamp(T0)).all()
    assert "gone_0" not in set(read_manifest(work, "prescreen")["image_id"])  # nothing to score

    # A threshold equal to the third-lowest score: images fall on both sides, one exactly on it (not "under" it).
    both = read_manifest(work, "prescreen").set_index("image_id")["both_present"].drop("car_cello_0")
    values = np.sort(both.unique())
    assert len(values) >= 3
    threshold = float(values[2])
    below = sorted(both.index[both < threshold])
    above = sorted(both.index[both >= threshold])
    human_id = below[0]

    # Humans have decided one low-scoring image and one image this run does not know; an old prescreen reject
    # of a high-scoring image is stale.
    # (Decisions are written through the ledger: the manifest is the projection of its decision log.)
    update_verification(
        work,
        [
            {
                "image_id": human_id,
                "decision": "accept",
                "reason": "both visible",
                "reviewer": "ann",
                "source": "human",
                "decided_at": pd.Timestamp("2024-06-01T10:00:00Z"),
            },
            {
                "image_id": "zz_other_9",
                "decision": "reject",
                "reason": None,
                "reviewer": "bob",
                "source": "human",
                "decided_at": pd.Timestamp("2024-06-02T10:00:00Z"),
            },
        ],
        HUMAN,
    )
    update_verification(
        work,
        [
            {
                "image_id": above[0],
                "decision": "reject",
                "reason": "old",
                "reviewer": "prescreen",
                "source": "auto",
                "decided_at": pd.Timestamp(T0),
            }
        ],
        "prescreen",
    )
    before = read_manifest(work, "verification").set_index("image_id")

    t1 = T0 + timedelta(days=1)
    summary = run_prescreen(work, PrescreenConfig(auto_reject_below=threshold), TINY, decided_at=t1)
    ver = read_manifest(work, "verification").set_index("image_id")

    assert sorted(ver.index) == sorted([*PICTURES, "gone_0", "zz_other_9"])
    assert ver.loc[both.index[both == threshold], "decision"].eq("pending").all()
    pd.testing.assert_frame_equal(ver.loc[[human_id, "zz_other_9"]], before.loc[[human_id, "zz_other_9"]])
    for image_id in below[1:]:
        row = ver.loc[image_id]
        assert (row["decision"], row["source"], row["reviewer"]) == ("reject", "auto", "prescreen")
        assert row["decided_at"] == pd.Timestamp(t1)
        shown, _, limit = row["reason"].removeprefix("both_present ").partition(" < ")
        assert row["reason"].startswith("both_present ") and float(limit) == threshold
        assert float(shown) <= both[image_id] < threshold
    for image_id in above:
        assert (ver.loc[image_id, "decision"], ver.loc[image_id, "source"]) == ("pending", "auto")
        assert pd.isna(ver.loc[image_id, "reason"]) and pd.isna(ver.loc[image_id, "decided_at"])
    # Flags win over scores, and an unchanged decision keeps the time it was first made.
    assert ver.loc["car_cello_0", "reason"] == "generation flag: black (mean pixel 0.1)"
    assert (ver.loc[["car_cello_0", "gone_0"], "decided_at"] == pd.Timestamp(T0)).all()
    assert summary["auto_rejected"] == len(below) - 1 + 2
    assert summary["pending"] == len(above)
    assert summary["human_kept"] == 1

    # Dropping the threshold brings the pre-screen's own rejects back to pending; humans and flags stay as they are.
    run_prescreen(work, PrescreenConfig(), TINY, decided_at=t1 + timedelta(days=1))
    again = read_manifest(work, "verification").set_index("image_id")
    assert again.loc[[*below[1:], *above], "decision"].eq("pending").all()
    assert again.loc[["car_cello_0", "gone_0"], "decision"].eq("reject").all()
    pd.testing.assert_frame_equal(again.loc[[human_id, "zz_other_9"]], before.loc[[human_id, "zz_other_9"]])


def test_bad_inputs_are_reported(tmp_path: Path, tiny_clip: Path):
    work = make_workdir(tmp_path, tiny_clip)
    with pytest.raises(PrescreenError, match="timezone-aware"):
        run_prescreen(work, PrescreenConfig(), TINY, decided_at=datetime(2025, 1, 1))
    (work / "images" / "cat_dog_1.png").unlink()
    with pytest.raises(PrescreenError, match="cat_dog_1"):
        run_prescreen(work, PrescreenConfig(), TINY)
