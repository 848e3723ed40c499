"""A newcomer's first hour: `is4 --version`, `python -m is4`, `is4 init`, a light `import is4` with a public API,
`--set` overrides on the commands, the --config/--workdir rule, `is4 stages --workdir` and `is4 release push`'s
refusals."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

import is4
from is4.cli import app
from is4.config import load_config
from is4.pipeline.registry import REGISTRY
from is4.pipeline.release import build_release
from is4.pipeline.stage import PREFECT_STATE_DIR, cache_key
from is4.pipeline.status import stage_status
from tests.support.matched import BUILD_CONFIG, CFG, make_workdir, matched_workdir

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
IS4 = [sys.executable, "-m", "is4"]


def _flat(text: str) -> str:
    """`text` with rich's line wrapping undone."""
    return " ".join(text.split())


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"}
    )


def test_version_and_python_m_is4(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("is4")
    for command in ([str(script), "--version"], [*IS4, "--version"]):
        done = _run(command, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"is4-builder {is4.__version__}"
    done = _run([*IS4, "--help"], tmp_path)
    assert done.returncode == 0 and "Usage: is4 " in done.stdout and "init" in done.stdout


def test_init_writes_the_shipped_configs_and_keeps_existing_ones(tmp_path: Path) -> None:
    project = tmp_path / "project"
    done = _run([*IS4, "init", str(project)], tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("demo.yaml", "paper.yaml", "category_overrides.yaml"):
        assert (project / "configs" / name).read_bytes() == (REPO / "configs" / name).read_bytes()
    assert "is4 build --config configs/demo.yaml" in done.stdout
    os.chdir(project)  # the demo config names its overrides file relative to the project
    try:
        assert load_config("configs/demo.yaml").categories.overrides == Path("configs/category_overrides.yaml")
    finally:
        os.chdir(REPO)

    (project / "configs" / "demo.yaml").write_text("seed: 1\n")
    again = _run([*IS4, "init", str(project)], tmp_path)
    assert again.returncode == 2 and "demo.yaml" in again.stderr and "--force overwrites" in again.stderr
    assert (project / "configs" / "demo.yaml").read_text() == "seed: 1\n"
    assert _run([*IS4, "init", str(project), "--force"], tmp_path).returncode == 0
    assert (project / "configs" / "demo.yaml").read_bytes() == DEMO.read_bytes()


def test_import_is4_is_light_and_the_api_resolves() -> None:
    code = (
        "import sys, is4\n"
        "from is4 import load_config, read_manifest, stage_status, build, load_release, verify_release\n"
        "heavy = sorted(m for m in ('torch', 'prefect', 'fiftyone', 'datasets', 'matplotlib', 'transformers')"
        " if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
    for name in is4.__all__:
        assert getattr(is4, name) is not None
    assert is4.load_config is load_config and is4.stage_status is stage_status
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = is4.nope  # type: ignore[attr-defined]


def test_a_writing_command_needs_a_config_or_a_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["categories"])
    assert result.exit_code == 2
    assert "give --config (e.g. configs/demo.yaml) or --workdir" in _flat(result.output)
    assert not (tmp_path / "work").exists()


def test_set_overrides_reach_the_command_and_are_validated() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["stages", "--config", str(DEMO), "--set", "stages=[ingest, categories]"])
    assert result.exit_code == 0, result.output
    assert "2. categories  " in result.output and "(not in this config's stages)" not in result.output.split("3.")[0]
    assert "3. prompts" in result.output.split("4.")[0] and "(not in this config's stages)" in result.output

    bad = runner.invoke(app, ["stages", "--config", str(DEMO), "--set", "train.epochz=5"])
    assert bad.exit_code == 2
    assert "with --set train.epochz=5: invalid config train.epochz: Extra inputs are not permitted" in _flat(bad.output)
    # The same on a command that runs the flow: refused before Prefect starts.
    build = runner.invoke(app, ["build", "--config", str(DEMO), "--set", "seed=nope"])
    assert build.exit_code == 2 and "with --set seed=nope: invalid config seed:" in _flat(build.output)


def test_stages_shows_where_a_work_directory_stands(tmp_path: Path) -> None:
    work = make_workdir(tmp_path / "work")  # manifests up to annotate/match, written by hand: no flow results
    cfg = load_config(DEMO)
    status = dict(stage_status(cfg, work))
    assert status["categories"] == "stale" and status["annotate"] == "stale"  # outputs, but no result of a build
    assert status["release"] == "not run"

    assert status["prompts"] == "not run"  # no prompts manifest

    # A result under the key this config gives: a build would reuse it. Another annotate section: stale again.
    annotate = next(s for s in REGISTRY if s.name == "annotate")
    (work / PREFECT_STATE_DIR).mkdir(parents=True)
    (work / PREFECT_STATE_DIR / cache_key(annotate.provenance(cfg, work), work)).write_text("{}")
    assert dict(stage_status(cfg, work))["annotate"] == "cached"
    changed = load_config(DEMO, ["annotate.detector_threshold=0.5"])
    assert dict(stage_status(changed, work))["annotate"] == "stale"
    assert dict(stage_status(changed, work))["categories"] == "stale"
    assert dict(stage_status(load_config(DEMO, ["stages=[ingest]"]), work))["annotate"] == "off"

    result = CliRunner().invoke(app, ["stages", "--config", str(DEMO), "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    assert "7. annotate [cached]" in _flat(result.output) and "11. release [not run]" in _flat(result.output)
    missing = CliRunner().invoke(app, ["stages", "--workdir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such work directory" in _flat(missing.output)


def test_release_push_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["release", "push", str(tmp_path), "--repo-id", "no-namespace"])
    assert bad.exit_code == 2 and "repo id 'no-namespace' is not ORG/NAME" in _flat(bad.output)
    missing = runner.invoke(app, ["release", "push", str(tmp_path / "nope"), "--repo-id", "org/is4"])
    assert missing.exit_code == 2 and "no such release directory" in _flat(missing.output)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    release = build_release(matched_workdir(tmp_path / "work"), CFG, BUILD_CONFIG)
    no_token = runner.invoke(app, ["release", "push", str(release), "--repo-id", "org/is4", "--private"])
    assert no_token.exit_code == 2
    assert "no Hugging Face token: run `hf auth login` or set HF_TOKEN" in _flat(no_token.output)

    # With a token, offline: the library's own call path refuses; the token is never shown.
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = runner.invoke(app, ["release", "push", str(release), "--repo-id", "org/is4"])
    assert offline.exit_code == 2 and "offline" in offline.output.lower()
    assert "hf_not_a_real_token" not in offline.output


def test_the_build_summary_says_what_was_made_and_dropped(tmp_path: Path) -> None:
    from is4.config import ReleaseConfig
    from is4.manifests.io import read_manifest
    from is4.pipeline.summary import build_summary

    work = matched_workdir(tmp_path / "work")
    cfg = load_config(None, ["release.version=0.1.0"])
    before = build_summary(work, cfg)
    assert not any(line.startswith("release:") for line in before)  # no release yet
    build_release(work, ReleaseConfig(version="0.1.0"), BUILD_CONFIG)
    lines = build_summary(work, cfg)
    verification = read_manifest(work, "verification")
    instances = read_manifest(work, "instances")
    accepted = int((verification["decision"] == "accept").sum())
    rejected = len(verification) - accepted
    assert lines[0].startswith("clips: ok: ")
    assert f"images: {len(read_manifest(work, 'images'))} generated" in lines
    assert any(line.startswith(f"verified: {accepted} accepted, {rejected} rejected") for line in lines)
    release = next(line for line in lines if line.startswith("release:"))
    assert f"{instances['image_id'].nunique()} images, {len(instances)} instances in " in release
    assert release.endswith("(+ is4-0.1.0.tar.gz)")


def test_third_party_warnings_go_to_the_build_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from is4.api import third_party_to_log

    log = tmp_path / "logs" / "build.log"
    library_loggers = [logging.getLogger(name) for name in ("transformers", "diffusers", "py.warnings")]
    # Another handler after the library's own (as pytest's log capture adds): their order must come back too.
    extra = logging.NullHandler()
    diffusers_logging.get_logger().addHandler(extra)
    try:
        before = [(logger.handlers[:], logger.propagate) for logger in library_loggers]
        with third_party_to_log(log):
            warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
            transformers_logging.get_logger("transformers.image_processing").warning("requires torchvision")
            diffusers_logging.get_logger("diffusers.models").warning("accelerate was not found")
            assert not transformers_logging.is_progress_bar_enabled()
        out, err = capfd.readouterr()
        text = log.read_text()
        for message in ("a library deprecation", "requires torchvision", "accelerate was not found"):
            assert message in text and message not in out + err
        # Afterwards the libraries log where they did before (the terminal), not to the file.
        assert [(logger.handlers[:], logger.propagate) for logger in library_loggers] == before
        transformers_logging.get_logger("transformers.image_processing").warning("after the build")
        assert "after the build" not in log.read_text()
        assert transformers_logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.get_logger().removeHandler(extra)
