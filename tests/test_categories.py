"""The categories stage: rules, shipped overrides, LLM proposals, precedence, merges, drops, bad files, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from is4.classes import vggss_labels
from is4.config import BuildConfig, CategoriesConfig
from is4.manifests.ids import CATEGORY_ID_RE
from is4.manifests.io import manifest_path, read_manifest, read_provenance
from is4.pipeline.images.categories import (
    CategoryError,
    CategoryOverride,
    category_report,
    derive_categories,
    load_overrides,
    rule_object,
    run_categories,
)
from is4.pipeline.registry import stage

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "category_overrides.yaml"
CFG = CategoriesConfig(overrides=SHIPPED)
DOG_LABELS = ["dog barking", "dog baying", "dog bow-wow", "dog growling", "dog howling", "dog whimpering"]
EXPECTED = {
    "playing cello": "cello",
    "alarm clock ringing": "alarm clock",
    "dog barking": "dog",
    "playing violin, fiddle": "violin",
    "female speech, woman speaking": "woman",
    "baby crying": "baby",
    "cat meowing": "cat",
    "car engine starting": "car",
    "chainsawing trees": "chainsaw",
    "lions roaring": "lion",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    """The 221 VGG-SS labels through the shipped overrides: (workdir, returned report, manifest read back)."""
    workdir = tmp_path_factory.mktemp("categories")
    report = run_categories(workdir, CFG)
    return workdir, report, read_manifest(workdir, "categories").set_index("label", drop=False)


def test_examples_map_to_their_sounding_object(built) -> None:
    _, _, frame = built
    assert {label: frame.at[label, "object"] for label in EXPECTED} == EXPECTED
    assert frame.at["female speech, woman speaking", "category_id"] == "female"
    assert frame.at["male speech, man speaking", "category_id"] == "male"
    assert frame.at["alarm clock ringing", "category_id"] == "alarmclock"
    assert frame.at["chainsawing trees", "source"] == "override"
    assert frame.at["dog barking", "source"] == "rule"


def test_every_vggss_label_has_an_object_or_a_reason(built) -> None:
    _, report, frame = built
    assert sorted(frame["label"]) == sorted(vggss_labels()) and report["labels"] == 221
    for row in frame.itertuples(index=False):
        if row.depictable:
            assert isinstance(row.object, str) and 1 <= len(row.object.split()) <= 3, row.label
            assert row.object.replace(" ", "").isalpha(), row.label
            assert CATEGORY_ID_RE.fullmatch(row.category_id), row.label
        else:
            assert row.note and pd.isna(row.category_id), row.label
    assert set(frame["source"]) <= {"rule", "override"}


def test_one_object_and_one_instrument_flag_per_category_id(built) -> None:
    _, report, frame = built
    shown = frame[frame["depictable"]]
    assert shown.groupby("category_id")["object"].nunique().max() == 1
    assert shown.groupby("category_id")["instrument"].nunique().max() == 1
    assert report["objects"] == shown["category_id"].nunique()


def test_instruments(built) -> None:
    _, _, frame = built
    assert frame.at["playing cello", "instrument"]
    assert frame.at["singing bowl", "instrument"]
    assert frame.at["tapping guitar", "instrument"]  # merged into electric guitar
    for label in ("playing table tennis", "orchestra", "church bell ringing", "dog barking"):
        assert not frame.at[label, "instrument"], label


def test_dog_labels_merge_and_the_report_says_so(built) -> None:
    workdir, report, frame = built
    assert set(frame.loc[DOG_LABELS, "category_id"]) == {"dog"}
    assert report["merged"]["dog"] == DOG_LABELS
    assert report["merged"]["female"] == ["female singing", "female speech, woman speaking"]
    assert all(len(labels) > 1 for labels in report["merged"].values())
    assert sum(report["by_source"].values()) == 221
    on_disk = json.loads((workdir / "reports" / "categories.json").read_text())
    assert on_disk == {k: v for k, v in report.items() if k != "manifest"}
    assert report["manifest"] == str(manifest_path(workdir, "categories"))


def test_provenance_is_the_declared_key_plus_what_the_run_found(tmp_path: Path) -> None:
    declared = stage("categories").provenance(BuildConfig(categories=CFG), tmp_path)
    assert declared["files_sha256"] == {"overrides": hashlib.sha256(SHIPPED.read_bytes()).hexdigest()}
    assert declared["config"] == {"categories": CFG.model_dump(mode="json")} and declared["models"] == {}
    run_categories(tmp_path, CFG, provenance=declared)
    assert read_provenance(tmp_path, "categories") == {**declared, "labels": 221, "llm_proposals": False}


def test_ambient_sounds_are_dropped(tmp_path: Path) -> None:
    report = run_categories(tmp_path, CFG, labels=["wind noise", "splashing water", "dog barking"])
    assert set(report["dropped"]) == {"wind noise", "splashing water"}
    assert "ambient" in report["dropped"]["wind noise"]
    frame = read_manifest(tmp_path, "categories").set_index("label")
    assert frame.at["wind noise", "object"] == "wind" and not frame.at["wind noise", "depictable"]
    assert report["objects"] == 1


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("lions roaring", "lion"),
        ("penguins braying", "penguin"),
        ("driving buses", "bus"),
        ("playing double bass", "double bass"),
        ("playing table tennis", "table tennis"),
        ("playing timbales", "timbales"),
        ("police car (siren)", "police car"),
        ("bird wings flapping", "bird"),
        ("children shouting", "child"),
        ("using sewing machines", "sewing machine"),
        ("bee, wasp, etc. buzzing", "bee"),
        ("wind noise", "wind"),
        ("skidding", None),
        ("singing bowl", None),
        ("air conditioning noise", None),
    ],
)
def test_rule_object(label: str, expected: str | None) -> None:
    obj, note = rule_object(label)
    assert obj == expected
    assert note.startswith("rules:")


def test_an_override_beats_the_rules_and_the_llm() -> None:
    overrides = {
        "dog barking": CategoryOverride(object="puppy", note="test"),
        "skidding": CategoryOverride(object="car"),
    }
    frame = derive_categories(
        ["dog barking", "skidding"], overrides, propose=lambda labels: {"skidding": "motorbike"}
    ).set_index("label")
    assert frame.at["dog barking", "object"] == "puppy" and frame.at["dog barking", "category_id"] == "puppy"
    assert frame.at["skidding", "object"] == "car"
    assert set(frame["source"]) == {"override"}
    assert "motorbike" in frame.at["skidding", "note"]


def test_an_override_id_follows_its_object() -> None:
    frame = derive_categories(["female singing"], load_overrides(SHIPPED))
    assert frame.loc[0, ["object", "category_id"]].tolist() == ["woman", "female"]


def test_propose_gets_exactly_the_unsettled_labels_in_one_call() -> None:
    labels = ["yodelling", "dog barking", "skidding", "singing bowl", "playing cello", "tap dancing"]
    calls: list[list[str]] = []

    def propose(asked: list[str]) -> dict[str, object]:
        calls.append(asked)
        return {
            "skidding": "The answer is: I think it's a dog!!!",
            "yodelling": "a man in a green hat",  # 6 words
            "singing bowl": "  Singing   Bowl ",
            "dog barking": "wolf",  # not asked: ignored
        }

    frame = derive_categories(labels, propose=propose).set_index("label")
    assert calls == [sorted(label for label in labels if rule_object(label)[0] is None)]
    assert calls == [["singing bowl", "skidding", "tap dancing", "yodelling"]]
    assert frame.at["singing bowl", "object"] == "singing bowl" and frame.at["singing bowl", "source"] == "llm"
    assert frame.at["dog barking", "object"] == "dog"
    for label in ("skidding", "yodelling"):
        assert pd.isna(frame.at[label, "object"]) and not frame.at[label, "depictable"]
        assert "rejected" in frame.at[label, "note"]
    assert "proposed nothing" in frame.at["tap dancing", "note"]


def test_propose_is_not_called_when_the_rules_settle_everything() -> None:
    def propose(asked: list[str]) -> dict[str, str]:
        raise AssertionError(f"asked about {asked}")

    assert derive_categories(["dog barking"], propose=propose).loc[0, "object"] == "dog"


def test_llm_proposals_on_needs_a_proposer(tmp_path: Path) -> None:
    with pytest.raises(CategoryError, match="llm_proposals"):
        run_categories(tmp_path, CategoriesConfig(overrides=None, llm_proposals=True), labels=["dog barking"])


def test_one_id_for_two_objects_is_an_error() -> None:
    overrides = {"dog barking": CategoryOverride(object="puppy", category_id="dog")}
    with pytest.raises(CategoryError, match="'dog'.*object"):
        derive_categories(["dog barking", "dog growling"], overrides)


def test_merged_labels_must_agree_on_instrument() -> None:
    overrides = {"tapping guitar": CategoryOverride(object="electric guitar")}
    with pytest.raises(CategoryError, match="'electricguitar'.*instrument"):
        derive_categories(["playing electric guitar", "tapping guitar"], overrides)


def test_unknown_labels_are_an_error() -> None:
    with pytest.raises(CategoryError, match="dog meowing"):
        derive_categories(["dog meowing"])


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("dog meowing: {object: dog}\n", "dog meowing"),
        ("dog barking: {object: dog, colour: brown}\n", "colour"),
        ("dog barking: {instrument: 'yes'}\n", "instrument"),
        ("dog barking: {object: 5}\n", "object"),
        ("dog barking: {object: Big Dog!}\n", "object"),
        ("dog barking: {object: dog, category_id: Dog-1}\n", "category_id"),
        ("dog barking: {category_id: dog}\n", "category_id needs an object"),
        ("dog barking: {note: fine}\n", "sets none"),
        ("dog barking: dog\n", "dog barking"),
        ("dog barking: {object: dog}\ndog barking: {object: hound}\n", "duplicate key 'dog barking'"),
        ("- dog barking\n", "top level"),
    ],
)
def test_bad_override_files(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(text)
    with pytest.raises(CategoryError, match="overrides.yaml") as exc:
        load_overrides(path)
    assert named in str(exc.value)


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(CategoryError, match="nowhere.yaml"):
        load_overrides(tmp_path / "nowhere.yaml")


def test_shipped_overrides_load() -> None:
    overrides = load_overrides(SHIPPED)
    assert overrides["female speech, woman speaking"] == CategoryOverride("woman", "female", note="IS4 release id")
    assert set(overrides) <= set(vggss_labels())


def test_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    labels = list(reversed(vggss_labels()))
    first = run_categories(tmp_path / "a", CFG, labels=labels)
    second = run_categories(tmp_path / "b", CFG)
    for name in ("manifests/categories.parquet", "reports/categories.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert category_report(read_manifest(tmp_path / "a", "categories")) == {
        k: v for k, v in first.items() if k != "manifest"
    }
    assert first["manifest"] != second["manifest"]
