"""The shipped demo profile end to end: `is4 build --config configs/demo.yaml`, and what every stage produced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from is4.manifests.io import read_manifest
from tests.support import BUILD_TIMEOUT_S, DemoBuild, build_demo, is4, prefect_env

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


def test_demo_build_end_to_end(demo_build: DemoBuild, tmp_path: Path) -> None:
    work, first = demo_build.work, demo_build.result
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    clips = read_manifest(work, "clips")
    assert sorted(clips["status"].value_counts().items()) == [("failed", 1), ("invalid", 1), ("ok", 8)]

    categories = read_manifest(work, "categories")
    assert len(categories) == 221
    by_label = categories.set_index("label")
    assert by_label.loc["playing cello", "category_id"] == "cello" and by_label.loc["playing cello", "instrument"]
    assert by_label.loc["dog barking", "category_id"] == "dog"

    prompts = read_manifest(work, "prompts")
    ids = {"cello", "dog", "acousticguitar", "cat"}
    assert set(prompts["category_a"]) | set(prompts["category_b"]) == ids
    # 6 pairs × 2 symmetric templates × 3 styles, plus the playing template for the 5 pairs with an instrument.
    assert len(prompts) == 6 * 6 + 5 * 3

    images = read_manifest(work, "images")
    assert sorted(images["image_id"]) == sorted(prompts["image_id"])
    for row in images.itertuples():
        png = work / row.image_path
        assert hashlib.sha256(png.read_bytes()).hexdigest() == row.sha256
        assert Image.open(png).size == (64, 64)
    assert set(images["model_id"]) == {"tiny-random:stable-diffusion"}
    assert images["model_revision"].str.startswith("sha256:").all()

    prescreen = read_manifest(work, "prescreen")
    assert sorted(prescreen["queue_rank"]) == list(range(1, len(images) + 1))
    verification = read_manifest(work, "verification")
    assert set(verification["source"]) == {"auto"}
    rejected = verification[verification["decision"] == "reject"].set_index("image_id")
    scores = prescreen.set_index("image_id")["both_present"]
    assert len(rejected) and (scores[rejected.index] < 0.0001).all()
    assert (scores.drop(rejected.index) >= 0.0001).all()
    # The automatic policy stands in for reviewers: everything the pre-screen did not reject is accepted.
    accepted = verification[verification["decision"] == "accept"]
    assert set(accepted["reviewer"]) == {"auto-policy"} and len(accepted) + len(rejected) == len(images)

    annotations = read_manifest(work, "annotations")
    assert sorted(set(annotations["image_id"])) == sorted(accepted["image_id"]), "accepted images only"
    by_image = prompts.set_index("image_id")
    for row in annotations.itertuples():
        assert row.instance_id == f"{row.image_id}_{row.category}"
        assert row.category in (by_image.loc[row.image_id, "category_a"], by_image.loc[row.image_id, "category_b"])
        mask = np.asarray(Image.open(work / row.mask_path))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        if mask.any():  # the box is the mask's extent
            ys, xs = np.nonzero(mask)
            assert list(row.bbox_xyxy) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert len(annotations) == 2 * len(accepted)

    # The build ends in a verified release that `is4 eval` scores.
    release = work / "releases/is4-0.1.0"
    instances = read_manifest(work, "instances")
    assert set(instances["image_id"]) <= set(accepted["image_id"]) and len(instances)
    # Only complete IS4 items: both objects of an image, each with its own category's clip, two different clips.
    assert len(instances) == 2 * instances["image_id"].nunique()
    labels = categories.set_index("label")["category_id"]
    for image_id, group in instances.groupby("image_id"):
        assert sorted(group["category"]) == sorted(by_image.loc[image_id, ["category_a", "category_b"]]), image_id
        assert group["clip_id"].is_unique and (labels[group["label"]].to_numpy() == group["category"]).all()
    # The tiny random SAM leaves some masks empty: exactly those images are left out, with their reasons.
    empty: dict[str, list[str]] = {}
    for row in annotations.sort_values("instance_id").itertuples():
        if not np.asarray(Image.open(work / row.mask_path)).any():
            empty.setdefault(row.image_id, []).append(f"empty-mask: {row.category}")
    report = json.loads((work / "reports/match.json").read_text())
    assert report["excluded"] == empty and len(empty), "the demo exercises the exclusion"
    assert set(instances["image_id"]) == set(accepted["image_id"]) - set(empty)
    assert report["images_released"] == instances["image_id"].nunique()
    card = (release / "README.md").read_text()
    assert f"| accepted images left out (not complete items) | {len(empty)} |" in card
    entries = json.loads((release / "is4_bbox.json").read_text())
    assert sorted(Path(e["image"]).stem for e in entries) == sorted(instances["instance_id"])
    verified = is4("release", "verify", str(release.with_name("is4-0.1.0.tar.gz")), timeout=300)
    assert verified.returncode == 0 and verified.stdout.strip().endswith("OK"), verified.stdout
    from is4.pipeline.evaluation.evaluate import write_baseline_predictions

    predictions = write_baseline_predictions(release, tmp_path / "predictions")
    shipped = json.loads((release / "baselines.json").read_text())
    for protocol in ("reference", "exact-k"):
        out = tmp_path / f"oracle-{protocol}.json"
        scored = is4(
            "eval",
            "--release",
            str(release),
            "--predictions",
            str(predictions["oracle_box"]),
            "--protocol",
            protocol,
            "--output",
            str(out),
            timeout=300,
        )
        assert scored.returncode == 0, scored.stderr
        metrics = json.loads(out.read_text())
        assert metrics["instances"] == len(instances)
        if protocol == "reference":  # the papers' rules: the oracle's row of the release's own baseline table
            assert shipped["protocol"] == "reference"
            assert {k: metrics[k] for k in ("ciou", "iiou", "auc")} == {
                k: shipped["scores"]["box"]["oracle"][k] for k in ("ciou", "iiou", "auc")
            }
        else:  # exact-K cuts keep the ground truth itself
            assert metrics["ciou"] == metrics["ciou_adaptive"] == metrics["iiou"] == 100.0
    # A fixture that tells models apart: the objects occupy part of the frame (annotate.clip_to_box), so the
    # centre and random baselines fall far below the oracle, on the adaptive metrics too.
    box = shipped["scores"]["box"]
    for name in ("centre", "random"):
        for metric in ("ciou", "ciou_adaptive", "iiou_adaptive"):
            assert box[name][metric] <= box["oracle"][metric] - 50, (name, metric, box)

    # LLM-guidance captions for every ok clip and every instance, by the three tiny models.
    captions = read_manifest(work, "captions")
    ok_clips = clips.loc[clips["status"] == "ok", "clip_id"]
    assert sorted(captions["item_id"]) == sorted([*ok_clips, *instances["instance_id"]])
    assert captions["image_caption"].notna().all() and captions["audio_caption"].notna().all()
    assert captions["object_phrase_raw"].notna().all() and captions["error"].isna().all()
    by_item = captions.set_index("item_id")
    for row in instances.itertuples():  # an instance is captioned from its image and its matched clip's audio
        assert by_item.loc[row.instance_id, "audio_path"] == row.audio_path
        assert by_item.loc[row.instance_id, "audio_caption"] == by_item.loc[row.clip_id, "audio_caption"]
    assert set(captions["image_caption_model"]) == {"tiny-random:blip2"}
    assert set(captions["audio_caption_backend"]) == {"qwen2-audio"}
    captions_bytes = (work / "manifests/captions.parquet").read_bytes()

    # Rerun, in place (the cache keys hold the work directory): every stage is a cache hit. A deleted image is made
    # again, byte for byte, and nothing else is, so the session's build is left as it was.
    victim = work / images.iloc[0]["image_path"]
    original = victim.read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (work / "media/images").iterdir() if p != victim}
    victim.unlink()
    second = build_demo(work, prefect_env(demo_build.prefect_home))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert log.count("Cached(type=COMPLETED)") == 11, "every stage but generate is a cache hit"
    assert (work / "manifests/captions.parquet").read_bytes() == captions_bytes
    assert victim.read_bytes() == original
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert np.asarray(Image.open(victim)).std() > 0
