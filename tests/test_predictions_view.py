"""A model's maps in FiftyOne (`is4.annotation.review.predictions`) on a synthetic two-disc release: the IoUs are
`is4 eval --per-instance`'s, the failure views hold what an independent computation says, runs sit side by side.

Runs: `oracle` (the ground-truth region itself: nothing fails) and `swapped` (each instance gets the oracle map of
the other object of its image: every instance fails and every image is an interactive failure); `centre` (the
centre baseline) is checked instance by instance against the definition of "confused" written out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from is4.config import ReviewConfig
from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.formats import load_ground_truth
from tests.support.predictions import make_predictions


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, fiftyone_db: Path):
    from is4.annotation import review

    root = tmp_path_factory.mktemp("predview")
    release, files = make_predictions(root)
    cfg = ReviewConfig(database_dir=fiftyone_db)
    results = {
        run: review.load_predictions(release, files[run], cfg, run=run, workdir=root)
        for run in ("oracle", "swapped", "centre")
    }
    fo = review.connect(cfg, root)
    dataset = fo.load_dataset(results["centre"]["dataset"])
    return release, files, results, dataset


def test_iou_fields_are_the_per_instance_scores_of_eval(loaded, tmp_path: Path) -> None:
    from is4.cli import app

    release, files, _, dataset = loaded
    for run in ("oracle", "swapped", "centre"):
        out = tmp_path / f"{run}.parquet"
        result = CliRunner().invoke(
            app, ["eval", "--release", str(release), "--predictions", str(files[run]), "--per-instance", str(out)]
        )
        assert result.exit_code == 0, result.output
        expected = pd.read_parquet(out).set_index("instance_id")
        got = dict(zip(dataset.values("instance_id"), dataset.values(f"{run}_iou")))
        adaptive = dict(zip(dataset.values("instance_id"), dataset.values(f"{run}_iou_adaptive")))
        assert got == expected["iou"].to_dict()
        assert adaptive == expected["iou_adaptive"].to_dict()


def test_samples_carry_the_instance_its_objects_and_the_audio(loaded) -> None:
    release, _, _, dataset = loaded
    truth = load_ground_truth(release, "box")
    assert truth.boxes is not None
    assert len(dataset) == len(truth) == 8
    for sample in dataset:
        iid = sample["instance_id"]
        image_id, colour = iid.rsplit("_", 1)
        assert sample["image_id"] == image_id and sample["category"] == colour
        assert Path(sample.filepath) == (release / "visual_frames" / f"{iid}.jpg").resolve()
        assert Path(sample["audio"]).read_bytes() == (release / "audio_wav" / f"{iid}.wav").read_bytes()
        own, other = sample["ground_truth"].detections, sample["other_object"].detections
        assert [d.label for d in own] == [colour] and [d.label for d in other] == [sample["other_category"]]
        x1, y1, x2, y2 = truth.boxes[truth.instance_ids.index(iid)][0]
        s = metrics.FRAME
        assert own[0].bounding_box == pytest.approx([x1 / s, y1 / s, (x2 - x1) / s, (y2 - y1) / s])
        heat = sample["oracle"].map
        assert heat.shape == (s, s) and heat.dtype == np.uint8 and heat.max() == 255
        # The oracle's map is bright exactly on the instance's own box.
        assert (
            heat[int(y1) : int(y2), int(x1) : int(x2)].min() > 0
            and heat.sum() == heat[int(y1) : int(y2), int(x1) : int(x2)].sum()
        )


def test_failure_views_and_the_definition_of_confused(loaded) -> None:
    release, files, results, dataset = loaded
    assert results["oracle"]["failures"] == [] and results["oracle"]["interactive_failures"] == []
    assert results["swapped"]["failures"] == sorted(dataset.values("instance_id"))
    assert results["swapped"]["interactive_failures"] == sorted(set(dataset.values("image_id")))
    assert len(dataset.load_saved_view("failures-oracle")) == 0
    assert len(dataset.load_saved_view("interactive-failures-oracle")) == 0
    assert len(dataset.load_saved_view("interactive-failures-swapped")) == len(dataset)

    # "confused", written out independently: the mean of the scored map on the other object's box (minus the own
    # box) above its mean on the own box (minus the other's).
    truth = load_ground_truth(release, "box")
    assert truth.image_ids is not None and truth.boxes is not None
    centre = np.load(files["centre"])
    expected = {}
    for i, iid in enumerate(truth.instance_ids):
        j = next(k for k, img in enumerate(truth.image_ids) if img == truth.image_ids[i] and k != i)
        m = metrics.resize_bilinear(centre[iid].astype(np.float64), metrics.FRAME, align_corners=True)
        own = metrics.box_mask(truth.boxes[i], metrics.FRAME, "slice")[0]
        other = metrics.box_mask(truth.boxes[j], metrics.FRAME, "slice")[0]
        expected[iid] = bool(m[other & ~own].mean() > m[own & ~other].mean())
    got = dict(zip(dataset.values("instance_id"), dataset.values("centre_confused")))
    assert got == expected and any(expected.values()) and not all(expected.values())
    images = {iid.rsplit("_", 1)[0] for iid, flag in expected.items() if flag}
    assert results["centre"]["interactive_failures"] == sorted(images)
    view = dataset.load_saved_view("interactive-failures-centre")
    assert set(view.distinct("image_id")) == images and len(view) == 2 * len(images)  # both objects of each image

    # `failures`: an instance failing in any run, the worst first.
    failing = [
        i
        for i, r in zip(
            dataset.values("instance_id"),
            zip(*(dataset.values(f"{run}_iou") for run in ("oracle", "swapped", "centre"))),
        )
        if min(r) < 0.5
    ]
    assert sorted(dataset.load_saved_view("failures").values("instance_id")) == sorted(failing)


def test_per_category_breakdown_and_runs_side_by_side(loaded) -> None:
    _, _, results, dataset = loaded
    table = {row["category"]: row for row in results["centre"]["per_category"]}
    categories = dataset.values("category")
    assert sorted(table) == sorted(set(categories))
    for category, row in table.items():
        ious = [v for c, v in zip(categories, dataset.values("swapped_iou")) if c == category]
        assert row["instances"] == len(ious)
        assert row["oracle mIoU"] == 100.0 and row["oracle success"] == 100.0
        assert row["swapped success"] == 0.0 and row["swapped mIoU"] == round(100 * float(np.mean(ious)), 2)
    assert sorted(dataset.info["is4_runs"]) == ["centre", "oracle", "swapped"]
    grouped = dataset.load_saved_view("by-category")
    assert grouped._is_dynamic_groups and len(grouped) == len(table)


def test_bad_run_names(loaded, fiftyone_db: Path) -> None:
    from is4.annotation import review

    release, files, _, _ = loaded
    cfg = ReviewConfig(database_dir=fiftyone_db)
    for bad in ("1run", "ground_truth", "a b", "x_iou", "../etc"):
        with pytest.raises(review.ReviewError, match="run name"):
            review.load_predictions(release, files["oracle"], cfg, run=bad)
    assert review.predictions.run_name(None, Path("epoch-3.npz")) == "epoch_3"
    assert review.predictions.run_name(None, Path("3.npz")) == "run_3"


def test_review_predictions_command(loaded, tmp_path: Path, fiftyone_db: Path) -> None:
    from is4.cli import app

    release, files, _, dataset = loaded
    config = tmp_path / "review.yaml"
    config.write_text(f"review:\n  database_dir: {fiftyone_db}\n")
    args = ["review", "predictions", "--release", str(release), "--predictions", str(files["swapped"])]
    result = CliRunner().invoke(app, [*args, "--name", "again", "--config", str(config), "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at the terminal's width
    assert "8 of 8 instances with IoU < 0.5, 4 images where one object's sound lights up another" in text
    assert "/datasets/is4-predictions-IS4-" in text and "again" in text
    dataset.reload()
    assert "again" in dataset.info["is4_runs"] and dataset.values("again_iou") == dataset.values("swapped_iou")
    bad = CliRunner().invoke(app, [*args, "--name", "1x", "--config", str(config), "--workdir", str(tmp_path)])
    assert bad.exit_code == 2 and "run name '1x'" in bad.output and "Traceback" not in bad.output
