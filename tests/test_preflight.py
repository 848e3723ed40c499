"""Checks before a run starts (`pipeline.preflight`): a bad work directory, model or input file is one line, exit 2,
before any stage or Prefect starts (no server, no traceback)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from is4.config import BuildConfig, ModelRef, load_config
from is4.pipeline.preflight import PreflightError, check_inputs, check_model, check_workdir, preflight
from tests.support import IS4, ROOT, prefect_env


def test_work_directory_must_be_a_writable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match=r"file: the work directory is a file, not a directory"):
        check_workdir(tmp_path / "file")
    with pytest.raises(PreflightError, match=r"file, a parent of the work directory, is a file"):
        check_workdir(tmp_path / "file" / "work")
    with pytest.raises(PreflightError, match="the work directory is not writable"):
        check_workdir(Path("/sys/is4-work"))  # not writable even for root
    work = check_workdir(tmp_path / "new" / "work")
    assert work.is_dir() and list(work.iterdir()) == [], "made, and the write probe removed"


def test_models_resolvable_without_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PreflightError, match=r"models.segmenter is not configured \(stage annotate needs it\)"):
        check_model(None, "segmenter", "annotate")
    with pytest.raises(PreflightError, match="unknown tiny model kind 'nope'"):
        check_model(ModelRef(model_id="tiny-random:nope"), "prescreen", "prescreen")
    with pytest.raises(PreflightError, match="is not a model directory"):
        check_model(ModelRef(model_id=str(tmp_path / "absent")), "detector", "annotate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PreflightError, match=r"no-such-org/no-such-model@main is not in the Hugging Face cache"):
        check_model(ModelRef(model_id="no-such-org/no-such-model"), "image_generator", "generate")
    (tmp_path / "local-model").mkdir()
    check_model(ModelRef(model_id=str(tmp_path / "local-model")), "detector", "annotate")
    check_model(ModelRef(model_id="tiny-random:clip"), "prescreen", "prescreen")


def test_inputs_of_the_configured_stages(tmp_path: Path) -> None:
    cfg = BuildConfig.model_validate({"categories": {"overrides": str(tmp_path / "absent.yaml")}})
    with pytest.raises(PreflightError, match=r"absent.yaml: input file overrides of stage categories does not exist"):
        check_inputs(cfg, ["categories"])
    demo = load_config(ROOT / "configs/demo.yaml")
    assert preflight(demo, tmp_path / "work") == tmp_path / "work"  # the demo has everything it needs


def _build(tmp_path: Path, config: dict, workdir: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = prefect_env(tmp_path / "prefect-home", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    return subprocess.run(
        [IS4, "build", "--config", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _one_line_before_the_flow(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout == "", "nothing ran: no Prefect server, no flow run"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]


def test_build_with_a_missing_model_fails_before_the_flow(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    config["categories"]["overrides"] = str(ROOT / "configs/category_overrides.yaml")
    config["models"]["image_generator"] = {"model_id": "no-such-org/no-such-model"}
    result = _build(tmp_path, config, tmp_path / "work")
    _one_line_before_the_flow(result, "models.image_generator (used by stage generate)", "no-such-org/no-such-model")
    assert not (tmp_path / "work/manifests").exists(), "no stage ran"


def test_build_into_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "work").write_text("not a directory")
    result = _build(tmp_path, {"stages": ["categories"]}, tmp_path / "work")
    _one_line_before_the_flow(result, str(tmp_path / "work"), "is a file, not a directory")


def test_errors_that_cannot_succeed_on_retry_are_not_retried() -> None:
    """What the flow's retry condition says for a task that failed with each error (a real Prefect state)."""
    from prefect.states import Failed

    from is4.flows.tasks import _retry_transient
    from is4.pipeline.common.models import ModelError

    never = [
        ModelError("models.x: no such model"),
        PermissionError(13, "denied"),
        FileNotFoundError(2, "absent"),
        NotADirectoryError(20, "a file"),
        IsADirectoryError(21, "a dir"),
        MemoryError(),
    ]
    assert [_retry_transient(None, None, Failed(data=exc)) for exc in never] == [False] * len(never)
    assert _retry_transient(None, None, Failed(data=ConnectionError("reset by peer"))) is True
