"""`--set key.path=value` overrides (`is4.config.load_config(path, overrides)`): applied like the file, validated
like the file, errors naming the override and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.config import BuildConfig, ConfigError, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_overrides_set_nested_values_parsed_as_yaml() -> None:
    base = load_config(DEMO)
    cfg = load_config(DEMO, ["train.epochs=5", "seed=7", "release.version=0.2.0", "stages=[ingest, categories]"])
    assert cfg.train.epochs == 5 and base.train.epochs != 5
    assert cfg.seed == 7 and cfg.release.version == "0.2.0" and cfg.stages == ["ingest", "categories"]
    # Everything else is the file's.
    assert cfg.models == base.models and cfg.ingest == base.ingest


def test_overrides_apply_to_the_built_in_defaults() -> None:
    assert load_config(None) == BuildConfig()
    assert load_config(None, ["workdir=/tmp/x"]).workdir == Path("/tmp/x")


def test_the_last_override_of_a_key_wins() -> None:
    assert load_config(DEMO, ["seed=1", "seed=2"]).seed == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.epochz=5",
            r"with --set train.epochz=5: invalid config\n  train.epochz: Extra inputs are not permitted",
        ),
        ("train.epochs=many", r"train.epochs: Input should be a valid integer"),
        ("seed.x=1", r"--set 'seed.x=1': seed is not a section \(it is 0\)"),
        ("train.epochs", r"--set 'train.epochs': expected key.path=value"),
        ("train..epochs=1", r"expected key.path=value"),
        ("seed=[1", r"value is not valid YAML"),
    ],
)
def test_a_bad_override_names_itself_and_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, [override])
