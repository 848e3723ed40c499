"""The prompts stage: pairs × templates × styles, instrument rules, stable ids and seeds, sampling, determinism."""

from __future__ import annotations

import hashlib
import re
from itertools import combinations
from math import comb
from pathlib import Path

import pandas as pd
import pytest

from is4.config import BuildConfig, PromptsConfig
from is4.manifests.ids import derive_seed
from is4.manifests.io import manifest_path, read_manifest, read_provenance, write_manifest
from is4.manifests.schema import PROMPTS
from is4.pipeline.images.prompts import PromptError, build_prompts, prompt_set, run_prompts
from is4.pipeline.registry import stage

PHOTO = "a photo of a {c1} and {c2}"
NEXT_TO = "{c1} is next to {c2}"
PLAYING = "{c1} is playing a {c2}"
# The default styles, in sorted name order, written out here rather than read from the config.
STYLES = (
    ("cartoon", "cartoon style illustration"),
    ("graphic", "flat graphic illustration, bold shapes"),
    ("realistic", "realistic photo, natural lighting, high detail"),
)
INSTRUMENTS = {"cello", "acousticguitar"}
DEPICTABLE = ["acousticguitar", "alarmclock", "cello", "dog", "female"]


def categories_frame() -> pd.DataFrame:
    """A categories manifest: instruments, a merged category (two dog labels), a renamed id and a non-depictable."""
    rows = [
        # Listed before "dog barking" on purpose: the noun comes from the first label in sorted order, not row order.
        ("dog growling", "puppy", "dog", False, True),
        ("playing cello", "cello", "cello", True, True),
        ("dog barking", "dog", "dog", False, True),
        ("female singing", "woman", "female", False, True),
        ("alarm clock ringing", "alarm clock", "alarmclock", False, True),
        ("wind noise", "wind", "wind", False, False),
        ("playing acoustic guitar", "acoustic guitar", "acousticguitar", True, True),
    ]
    frame = pd.DataFrame(rows, columns=["label", "object", "category_id", "instrument", "depictable"])
    return frame.assign(source="rules")


def as_pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["category_a"], frame["category_b"]))


def expected_rows(pair: tuple[str, str], sentences: list[str], per_prompt: int = 1) -> set[tuple[str, str]]:
    """(image_id, prompt) for one pair from its filled sentences in template order: n runs over sentence, style, k."""
    out, n = set(), 0
    for sentence in sentences:
        for _, suffix in STYLES:
            for _ in range(per_prompt):
                out.add((f"{pair[0]}_{pair[1]}_{n}", f"{sentence}, {suffix}"))
                n += 1
    return out


def test_prompt_set_is_exactly_what_the_rules_say() -> None:
    frame = build_prompts(categories_frame(), PromptsConfig(categories=["female", "dog", "cello"]), seed=7)
    expected = (
        expected_rows(
            ("cello", "dog"), ["a photo of a cello and dog", "cello is next to dog", "dog is playing a cello"]
        )
        | expected_rows(
            ("cello", "female"), ["a photo of a cello and woman", "cello is next to woman", "woman is playing a cello"]
        )
        | expected_rows(("dog", "female"), ["a photo of a dog and woman", "dog is next to woman"])
    )
    assert set(zip(frame["image_id"], frame["prompt"])) == expected
    assert len(frame) == len(expected) == 24
    assert list(frame.columns) == list(PROMPTS.column_names)
    assert list(frame["image_id"]) == sorted(frame["image_id"])
    assert set(frame["negative_prompt"]) == {"blurry, low quality, distorted, deformed, text, watermark"}
    row = frame.set_index("image_id").loc["cello_female_7"]
    assert (row["c1"], row["c2"], row["template"], row["style"]) == ("female", "cello", PLAYING, "graphic")


def test_image_number_runs_over_template_then_style_then_k() -> None:
    frame = build_prompts(categories_frame(), PromptsConfig(categories=["dog", "female"], images_per_prompt=2), seed=0)
    expected = expected_rows(("dog", "female"), ["a photo of a dog and woman", "dog is next to woman"], per_prompt=2)
    assert set(zip(frame["image_id"], frame["prompt"])) == expected
    by_id = frame.set_index("image_id")
    assert by_id.loc["dog_female_1", "style"] == "cartoon"  # k = 1 of the first style
    assert by_id.loc["dog_female_2", "style"] == "graphic"
    assert by_id.loc["dog_female_6", "template"] == NEXT_TO


def test_the_three_paper_templates_appear_verbatim() -> None:
    assert PromptsConfig().templates == [
        "a photo of a {c1} and {c2}",
        "{c1} is next to {c2}",
        "{c1} is playing a {c2}",
    ]
    frame = build_prompts(categories_frame(), PromptsConfig(), seed=0)
    assert set(frame["template"]) == {PHOTO, NEXT_TO, PLAYING}
    nouns = {
        "acousticguitar": "acoustic guitar",
        "alarmclock": "alarm clock",
        "cello": "cello",
        "dog": "dog",
        "female": "woman",
    }
    suffixes = dict(STYLES)
    for row in frame.itertuples():
        filled = row.template.format(c1=nouns[row.c1], c2=nouns[row.c2])
        assert row.prompt == f"{filled}, {suffixes[row.style]}"
    # Nouns as written in the manifest, article left alone.
    assert "a photo of a acoustic guitar and alarm clock, cartoon style illustration" in set(frame["prompt"])


def test_instrument_template_only_with_an_instrument_in_c2() -> None:
    frame = build_prompts(categories_frame(), PromptsConfig(), seed=0)
    playing = frame[frame["template"] == PLAYING]
    assert set(playing["c2"]) <= INSTRUMENTS
    no_instrument_pairs = {p for p in combinations(DEPICTABLE, 2) if not set(p) & INSTRUMENTS}
    assert no_instrument_pairs and not as_pairs(playing) & no_instrument_pairs
    assert as_pairs(playing) == set(combinations(DEPICTABLE, 2)) - no_instrument_pairs
    # b is the instrument: keeps the pair's order; only a is: swapped; both: b goes in {c2}, one prompt per style.
    roles = playing.groupby(["category_a", "category_b"])[["c1", "c2"]].agg(set)
    assert roles.loc[("alarmclock", "cello")].tolist() == [{"alarmclock"}, {"cello"}]
    assert roles.loc[("cello", "dog")].tolist() == [{"dog"}, {"cello"}]
    both = playing[(playing["category_a"] == "acousticguitar") & (playing["category_b"] == "cello")]
    assert sorted(both["style"]) == ["cartoon", "graphic", "realistic"]
    assert set(both["prompt"].str.split(",").str[0]) == {"acoustic guitar is playing a cello"}
    # The symmetric templates never swap.
    symmetric = frame[frame["template"] != PLAYING]
    assert (symmetric["c1"] == symmetric["category_a"]).all() and (symmetric["c2"] == symmetric["category_b"]).all()


def test_non_depictable_and_merged_categories() -> None:
    frame = build_prompts(categories_frame(), PromptsConfig(), seed=0)
    assert as_pairs(frame) == set(combinations(DEPICTABLE, 2))
    assert not frame["prompt"].str.contains("wind|puppy").any()
    dog = frame[(frame["category_a"] == "dog") & (frame["category_b"] == "female")]
    assert len(dog) == 6  # one noun per category id: the two dog labels do not double the prompts
    assert set(dog["prompt"].str.split(",").str[0]) == {"a photo of a dog and woman", "dog is next to woman"}


def test_image_ids_follow_pair_and_number_and_are_unique() -> None:
    frame = build_prompts(categories_frame(), PromptsConfig(images_per_prompt=3), seed=0)
    assert frame["image_id"].is_unique
    for row in frame.itertuples():
        match = re.fullmatch(r"([a-z0-9]+)_([a-z0-9]+)_([0-9]+)", row.image_id)
        assert match and match.groups()[:2] == (row.category_a, row.category_b)
        assert row.category_a < row.category_b
    numbers = frame.assign(n=frame["image_id"].str.rsplit("_", n=1).str[1].astype(int))
    for _, group in numbers.groupby(["category_a", "category_b"]):
        assert sorted(group["n"]) == list(range(len(group)))


def test_prompt_count_formula() -> None:
    cfg = PromptsConfig(images_per_prompt=2)
    frame = build_prompts(categories_frame(), cfg, seed=0)
    n, instruments = len(DEPICTABLE), len(INSTRUMENTS)
    pairs = comb(n, 2)
    assert len(frame) == cfg.images_per_prompt * (9 * pairs - 3 * comb(n - instruments, 2))


def test_seeds_derive_from_image_id_and_global_seed() -> None:
    first = build_prompts(categories_frame(), PromptsConfig(), seed=1)
    second = build_prompts(categories_frame(), PromptsConfig(), seed=2)
    assert list(first["seed"]) == [derive_seed(1, i) for i in first["image_id"]]
    assert list(first["image_id"]) == list(second["image_id"])
    assert (first["seed"] != second["seed"]).all()
    assert first["seed"].dtype == "int64"


def test_max_pairs_sample() -> None:
    cats = categories_frame()
    cfg = PromptsConfig(max_pairs=4)
    frame = build_prompts(cats, cfg, seed=3)
    assert len(as_pairs(frame)) == 4
    assert as_pairs(frame) <= set(combinations(DEPICTABLE, 2))
    for order in (1, 2):
        shuffled = cats.sample(frac=1, random_state=order).reset_index(drop=True)
        assert not shuffled["label"].equals(cats["label"])
        pd.testing.assert_frame_equal(build_prompts(shuffled, cfg, seed=3), frame)
    samples = {frozenset(as_pairs(build_prompts(cats, cfg, seed=s))) for s in range(8)}
    assert len(samples) > 1
    everything = build_prompts(cats, PromptsConfig(max_pairs=100), seed=3)
    assert as_pairs(everything) == set(combinations(DEPICTABLE, 2))


def test_run_prompts_writes_a_byte_identical_manifest(tmp_path: Path) -> None:
    outputs = []
    for name in ("one", "two"):
        workdir = tmp_path / name
        write_manifest(workdir, "categories", categories_frame(), {"stage": "categories"})
        cfg = BuildConfig(seed=5, prompts=PromptsConfig(categories=["cello", "dog", "female"]))
        summary = run_prompts(workdir, cfg.prompts, seed=5, provenance=stage("prompts").provenance(cfg, workdir))
        outputs.append(manifest_path(workdir, "prompts").read_bytes())
    assert outputs[0] == outputs[1]
    assert summary == {
        "pairs": 3,
        "prompts": 24,
        "skipped_instrument_pairs": 1,
        "manifest": str(manifest_path(workdir, "prompts")),
    }
    provenance = read_provenance(workdir, "prompts")
    assert provenance["stage"] == "prompts" and provenance["seed"] == 5
    assert provenance["config"]["prompts"]["categories"] == ["cello", "dog", "female"]
    categories_bytes = manifest_path(workdir, "categories").read_bytes()
    assert provenance["inputs_sha256"] == {"categories": hashlib.sha256(categories_bytes).hexdigest()}
    written = read_manifest(workdir, "prompts")
    expected = build_prompts(categories_frame(), PromptsConfig(categories=["cello", "dog", "female"]), seed=5)
    assert list(written["image_id"]) == list(expected["image_id"])
    assert list(written["seed"]) == list(expected["seed"])


def test_unknown_or_non_depictable_category_ids_raise() -> None:
    with pytest.raises(PromptError, match="unknown category id.*banjo") as err:
        build_prompts(categories_frame(), PromptsConfig(categories=["dog", "banjo"]), seed=0)
    assert isinstance(err.value, ValueError)
    with pytest.raises(PromptError, match="not depictable: wind"):
        build_prompts(categories_frame(), PromptsConfig(categories=["dog", "wind"]), seed=0)


def test_fewer_than_two_categories_raise() -> None:
    with pytest.raises(PromptError, match="at least 2"):
        build_prompts(categories_frame(), PromptsConfig(categories=["dog", "dog"]), seed=0)
    with pytest.raises(PromptError, match="at least 2"):
        one_dog = categories_frame().query("label in ['dog growling', 'dog barking', 'wind noise']")
        build_prompts(one_dog, PromptsConfig(), seed=0)  # two labels, one category id, plus a non-depictable one


def test_instrument_template_must_be_one_of_the_templates() -> None:
    with pytest.raises(PromptError, match="instrument_templates"):
        build_prompts(categories_frame(), PromptsConfig(templates=[PHOTO]), seed=0)
    frame = build_prompts(categories_frame(), PromptsConfig(templates=[PHOTO], instrument_templates=[]), seed=0)
    assert set(frame["template"]) == {PHOTO}


def test_players_restrict_who_plays_the_instrument() -> None:
    cfg = PromptsConfig(categories=["female", "dog", "cello", "alarmclock"], players=["female"])
    frame = build_prompts(categories_frame(), cfg, seed=0)
    playing = frame[frame["template"] == "{c1} is playing a {c2}"]
    assert set(zip(playing["c1"], playing["c2"])) == {("female", "cello")}
    assert set(playing["prompt"].str.split(",").str[0]) == {"woman is playing a cello"}
    assert not frame["prompt"].str.contains("alarm clock is playing").any()
    assert prompt_set(categories_frame(), cfg, 0).skipped_instrument_pairs == 5  # 6 pairs, only female–cello plays


def test_unknown_player_is_an_error() -> None:
    with pytest.raises(PromptError, match="prompts.players.*piano"):
        build_prompts(categories_frame(), PromptsConfig(categories=["dog", "cello"], players=["piano"]), seed=0)
