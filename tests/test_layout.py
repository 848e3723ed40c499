"""The package layout resolves without an import hook: static tools see project imports, a wheel ships it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

PYRIGHT = Path(sys.executable).with_name("pyright")


def _pyright(cwd: Path) -> dict:
    out = subprocess.run(
        [str(PYRIGHT), "--outputjson", "--pythonpath", sys.executable],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout)


def _unresolved_project_imports(report: dict) -> list[str]:
    return [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if (d.get("rule") == "reportMissingImports" and '"is4' in d["message"])
        or (d.get("rule") == "reportAttributeAccessIssue" and 'module "is4' in d["message"])
    ]


def test_pyright_resolves_project_imports_and_sees_a_broken_one(tmp_path: Path) -> None:
    """On one small file; CI's own `pyright` step checks every file of the tree (pyproject's [tool.pyright])."""
    canary = tmp_path / "canary.py"
    canary.write_text("import is4.pipeline.registry\nimport is4.pipeline.no_such_module\n")
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({"include": ["canary.py"], "extraPaths": [str(ROOT)]}))
    problems = _unresolved_project_imports(_pyright(cwd=tmp_path))
    assert len(problems) == 1 and "is4.pipeline.no_such_module" in problems[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return next(out.glob("is4_builder-*.whl"))


def test_the_wheel_ships_real_files_and_imports_everything(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    for expected in (
        "is4/pipeline/registry.py",
        "is4/annotation/review/tags.py",
        "is4/flows/build.py",
        "is4/manifests/schema.py",
        "is4/annotation/plugin/fiftyone.yml",
        "is4/pipeline/release/card_template.md",
        "is4/data/vggss_classes.txt",
    ):
        assert expected in names
    assert not any(n.startswith(("pipeline/", "flows/", "tests/")) for n in names), "only the is4 namespace"
    code = (
        "import importlib, pkgutil, sys, is4\n"
        "mods = [m.name for m in pkgutil.walk_packages(is4.__path__, 'is4.') if not m.name.endswith('gama_driver')]\n"
        "for m in mods: assert importlib.import_module(m).__file__.startswith(sys.argv[1]), m\n"
        "print(len(mods))\n"
    )
    site = str(tmp_path / "site")
    out = subprocess.run(
        [sys.executable, "-c", code, site],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": site},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) > 60
