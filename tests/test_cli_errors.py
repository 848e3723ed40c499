"""Every `is4` command given a bad input exits 2 with one line on stderr and no traceback (README's promise).

A config that does not validate says so in that line and lists each bad key on an indented line below it. Every
command runs in-process (Typer's runner: the subject is the CLI's error path); a few also run as real `is4`
processes, for the exit status the shell sees and the stderr a user reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from is4.cli import app
from tests.support import is4

MISSING = "does-not-exist"
IN_A_PROCESS = ("build", "ingest", "release verify")  # a config error, a missing input file, a missing archive


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Each command with a bad input: missing files, a config that does not validate, an empty work directory."""
    bad_config = tmp / "bad.yaml"
    w = ["--workdir", str(tmp / "empty-work")]
    return {
        "init": ["init", str(bad_config)],  # a file, not a directory
        "ingest": ["ingest", "--csv", str(tmp / f"{MISSING}.csv"), *w],
        "export": ["export", *w],
        "demo-media": ["demo-media", "--out", str(tmp / "m"), "--config", str(tmp / f"{MISSING}.yaml")],
        "categories": ["categories", "--config", str(bad_config), *w],
        "prompts": ["prompts", *w],
        "generate": ["generate", *w, "--shard", "3/2"],
        "prescreen": ["prescreen", *w],
        "review verify": ["review", "verify", "--config", str(bad_config), *w],
        "review sync": ["review", "sync", "--config", str(tmp / f"{MISSING}.yaml"), *w],
        "review done": ["review", "done", "--flow-run", "not-a-run-id"],
        "review predictions": [
            "review",
            "predictions",
            "--release",
            str(tmp / MISSING),
            "--predictions",
            str(tmp / f"{MISSING}.npz"),
            *w,
        ],
        "annotate": ["annotate", *w],
        "annotate refine": ["annotate", "refine", *w, "--instance", "a_b_0_a"],
        "match": ["match", *w],
        "caption": ["caption", *w],
        "release": ["release", *w],
        "release verify": ["release", "verify", str(tmp / f"{MISSING}.tar.gz")],
        "release push": ["release", "push", str(tmp / MISSING), "--repo-id", "org/is4"],
        "stages": ["stages", "--config", str(bad_config)],
        "eval": ["eval", "--release", str(tmp / MISSING), "--predictions", str(tmp / f"{MISSING}.npz")],
        "build": ["build", "--config", str(bad_config)],
        "serve": ["serve", "--config", str(tmp / f"{MISSING}.yaml")],
        "neighbours": ["neighbours", "--config", str(bad_config), *w],
        "train": ["train", "--config", str(tmp / f"{MISSING}.yaml"), *w],
        "serve-train": ["serve-train", "--config", str(bad_config)],
        "deploy-train": ["deploy-train", "--config", str(tmp / f"{MISSING}.yaml"), "--work-pool", "gpu"],
        "embed": ["embed", "--run", str(tmp / MISSING), "--release", str(tmp / MISSING), "--out", str(tmp / "e.npz")],
        "predict": [
            "predict",
            "--run",
            str(tmp / MISSING),
            "--release",
            str(tmp / MISSING),
            "--out",
            str(tmp / "m.npz"),
        ],
    }


def _all_command_names() -> set[str]:
    import typer.main

    group = typer.main.get_group(app)
    names = set()
    for name, command in group.commands.items():
        subs = getattr(command, "commands", {})
        if not subs or getattr(command, "invoke_without_command", False):
            names.add(name)
        names |= {f"{name} {sub}" for sub in subs}
    return names


def test_every_command_is_covered(tmp_path: Path) -> None:
    covered = set(_commands(tmp_path)) | {"manifests"}  # prints a table of every manifest: tested in test_cli
    assert _all_command_names() <= covered


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "empty-work").mkdir()
    (tmp / "bad.yaml").write_text("seed: yes\n")
    return _commands(tmp)


def _assert_one_error_line(stderr: str) -> None:
    first, *keys = stderr.strip().splitlines()
    assert first.startswith("error: "), stderr
    assert all(line.startswith("  ") for line in keys) and (not keys or first.endswith("invalid config"))
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", sorted(_commands(Path("/tmp"))))
def test_bad_input_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, _bad_inputs(tmp_path)[name], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # the decorator's exit, nothing escaped
    _assert_one_error_line(result.stderr)


@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_bad_input_exits_2_with_one_line_in_a_real_process(name: str, tmp_path: Path) -> None:
    result = is4(*_bad_inputs(tmp_path)[name], timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    _assert_one_error_line(result.stderr)
