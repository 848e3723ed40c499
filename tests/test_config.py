"""The typed build configuration: loading, strict validation with dotted key names, label sets, equality of loaded configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from is4.classes import vggss_labels
from is4.config import (
    DEFAULT_URL_TEMPLATE,
    BuildConfig,
    ConfigError,
    SubsetConfig,
    load_config,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    return str(info.value)


# --- loading -------------------------------------------------------------------------------------------------------


def test_demo_config_loads_with_its_values() -> None:
    cfg = load_config(DEMO_CONFIG)
    assert cfg.profile == "demo"
    assert cfg.workdir == Path("work/demo")
    assert cfg.ingest.demo_media.enabled is True
    assert cfg.ingest.demo_media.labels == ["playing cello", "dog barking", "playing acoustic guitar", "cat meowing"]
    assert cfg.ingest.subset.labels == "vggss"
    assert cfg.ingest.download.workers == 2
    assert cfg.ingest.download.retry_backoff_s == 0.5
    assert cfg.ingest.extract.frame_size == 224


def test_default_build_config_is_valid() -> None:
    cfg = BuildConfig()
    assert cfg.seed == 0
    assert cfg.ingest.download.url_template == DEFAULT_URL_TEMPLATE
    assert cfg.ingest.subset.label_set() is None
    assert cfg.ingest.csv is None
    assert cfg.models.image_generator is None


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_yaml_gives_the_default_config(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path) == BuildConfig()


def test_config_is_frozen() -> None:
    cfg = BuildConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]
    assert cfg.seed == 0


# --- unknown keys --------------------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_rejected() -> None:
    message = config_error({"sed": 1})
    assert "test.yaml" in message
    assert "  sed:" in message


def test_unknown_nested_key_is_rejected_with_dotted_path() -> None:
    message = config_error({"ingest": {"downlod": {"workers": 2}}})
    assert "ingest.downlod" in message


def test_unknown_deeply_nested_key_is_rejected_with_dotted_path() -> None:
    message = config_error({"ingest": {"download": {"worker": 2}}})
    assert "ingest.download.worker" in message


def test_every_bad_key_is_reported() -> None:
    message = config_error({"sed": 1, "ingest": {"download": {"workers": 0}}})
    assert "sed" in message
    assert "ingest.download.workers" in message


# --- bad values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, -1, 65])
def test_out_of_range_workers_are_rejected(workers: int) -> None:
    assert "ingest.download.workers" in config_error({"ingest": {"download": {"workers": workers}}})


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"generate": {"height": 1_000_000}}, "generate.height"),  # the probe's 4-TB allocation, retried twice
        ({"generate": {"width": 4096}}, "generate.width"),
        ({"ingest": {"extract": {"frame_size": 100_000}}}, "ingest.extract.frame_size"),
        ({"ingest": {"extract": {"sample_rate": 10**9}}}, "ingest.extract.sample_rate"),
        ({"release": {"image_size": 100_000}}, "release.image_size"),
        ({"neighbours": {"batch_size": 10**7}}, "neighbours.batch_size"),
        ({"train": {"epochs": 10**9}}, "train.epochs"),
        ({"train": {"alignment": {"image_size": 100_000}}}, "train.alignment.image_size"),
    ],
)
def test_sizes_counts_and_steps_have_bounds(section: dict, key: str) -> None:
    """A size no real run needs is refused when the config loads, not by a failed allocation mid-build."""
    assert key in config_error(section)


@pytest.mark.parametrize(
    "template",
    [
        "https://example.com/watch",  # no placeholder
        "https://example.com/{id}",  # another placeholder
        "https://example.com/{ytid}/{start}",  # an extra placeholder
        "https://example.com/{ytid}/{}",  # an extra positional placeholder
        "https://example.com/{ytid",  # broken format string
        "https://example.com/{ytid!r}",  # a conversion would quote the id
        "https://example.com/{ytid:>20}",  # a format spec would pad it
    ],
)
def test_url_template_must_have_exactly_the_ytid_placeholder(template: str) -> None:
    assert "ingest.download.url_template" in config_error({"ingest": {"download": {"url_template": template}}})


def test_url_template_with_ytid_is_accepted() -> None:
    cfg = parse_config({"ingest": {"download": {"url_template": "http://127.0.0.1:8000/{ytid}.mp4"}}})
    assert cfg.ingest.download.url_template.format(ytid="abcdefghijk") == "http://127.0.0.1:8000/abcdefghijk.mp4"


def test_unknown_subset_label_is_rejected_by_name() -> None:
    message = config_error({"ingest": {"subset": {"labels": ["dog barking", "dog meowing"]}}})
    assert "ingest.subset.labels" in message
    assert "'dog meowing'" in message
    assert "'dog barking'" not in message


def test_unknown_subset_label_keyword_is_rejected() -> None:
    assert "ingest.subset.labels" in config_error({"ingest": {"subset": {"labels": "vggsound"}}})


def test_unknown_demo_media_label_is_rejected_by_name() -> None:
    message = config_error({"ingest": {"demo_media": {"labels": ["cat meowing", "unicorn neighing"]}}})
    assert "ingest.demo_media.labels" in message
    assert "'unicorn neighing'" in message


def test_unknown_split_is_rejected() -> None:
    assert "ingest.subset.splits" in config_error({"ingest": {"subset": {"splits": ["train", "val"]}}})


def test_zero_per_class_cap_is_rejected() -> None:
    assert "ingest.subset.per_class_cap" in config_error({"ingest": {"subset": {"per_class_cap": 0}}})


@pytest.mark.parametrize("seed", ["abc", 1.5, [1], {"a": 1}, None])
def test_seed_of_the_wrong_type_is_rejected(seed: Any) -> None:
    message = config_error({"seed": seed})
    assert "  seed:" in message


def test_boolean_seed_is_rejected() -> None:
    assert "seed" in config_error({"seed": True})


def test_wrong_type_for_a_section_is_rejected() -> None:
    assert "ingest" in config_error({"ingest": ["csv"]})


def test_model_ref_needs_a_model_id() -> None:
    message = config_error({"models": {"detector": {"revision": "abc"}}})
    assert "models.detector.model_id" in message


def test_model_ref_dtype_is_checked() -> None:
    assert "models.detector.dtype" in config_error({"models": {"detector": {"model_id": "x", "dtype": "int8"}}})


# --- unreadable files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_validation_error_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  downlod: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "ingest.downlod" in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"profile: caf\xe9\n")
    with pytest.raises(ConfigError):
        load_config(path)


# --- label sets ----------------------------------------------------------------------------------------------------


def test_label_set_all_is_none() -> None:
    assert SubsetConfig(labels="all").label_set() is None


def test_label_set_vggss_is_the_221_vggss_labels() -> None:
    labels = SubsetConfig(labels="vggss").label_set()
    assert labels == frozenset(vggss_labels())
    assert len(labels) == 221


def test_label_set_of_a_list_is_that_list() -> None:
    assert SubsetConfig(labels=["dog barking", "cat meowing", "dog barking"]).label_set() == frozenset(
        {"dog barking", "cat meowing"}
    )


# --- equality of loaded configs (what provenance hashes) ------------------------------------------------------------


def _dump(cfg: BuildConfig) -> dict:
    return cfg.model_dump(mode="json")


def test_a_config_loads_the_same_every_time() -> None:
    assert _dump(load_config(DEMO_CONFIG)) == _dump(load_config(DEMO_CONFIG))


def test_yaml_key_order_and_formatting_do_not_matter(tmp_path: Path) -> None:
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    reordered = dict(reversed(list(data.items())))
    path, original = tmp_path / "reordered.yaml", tmp_path / "original.yaml"  # one folder: same relative paths
    path.write_text(yaml.safe_dump(reordered, default_flow_style=True, sort_keys=False))
    original.write_text(DEMO_CONFIG.read_text())
    assert _dump(load_config(path)) == _dump(load_config(original))


def test_a_changed_value_changes_the_dump() -> None:
    base = _dump(BuildConfig())
    assert _dump(parse_config({"seed": 1})) != base
    assert _dump(parse_config({"ingest": {"download": {"workers": 5}}})) != base
    assert _dump(parse_config({"ingest": {"subset": {"labels": ["dog barking"]}}})) != base


def test_explicit_defaults_equal_the_defaults() -> None:
    explicit = parse_config({"seed": 0, "ingest": {"download": {"workers": 4}}})
    assert _dump(explicit) == _dump(BuildConfig())


def test_paper_profile_pins_every_hub_checkpoint() -> None:
    import re

    cfg = load_config(Path(__file__).parent.parent / "configs" / "paper.yaml")
    assert cfg.profile == "paper" and cfg.ingest.subset.label_set() is None
    models = cfg.models.model_dump()
    assert all(models.values()), "every model role is configured"
    for role, ref in models.items():
        assert ref["device"] == "cuda"
        if ref["revision"] != "local":
            assert re.fullmatch(r"[0-9a-f]{40}", ref["revision"]), f"{role} is pinned to a commit"
    assert cfg.models.object_phrase.model_id == "mistralai/Mistral-7B-Instruct-v0.2"
    assert cfg.models.segmenter.model_id == "facebook/sam-vit-huge"


def test_duplicate_key_in_a_config_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\ningest:\n  csv: a.csv\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(path)
