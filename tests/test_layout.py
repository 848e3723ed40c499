"""The package layout resolves without an import hook: static tools see every project import, a wheel ships it all."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

PYRIGHT = Path(sys.executable).with_name("pyright")
SOURCES = ("is4", "manifests", "pipeline", "flows", "annotation", "trainers", "tests", "benchmarks")  # [tool.pyright]


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


def _module_file(name: str) -> Path | None:
    """Where a static tool finds module `name` from the repository root (through the `is4/<layer>` links)."""
    base = ROOT.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def _top_level_names(file: Path) -> set[str]:
    """The names a module defines at its top level (also inside top-level `if` / `try` blocks)."""
    names: set[str] = set()
    body = list(ast.parse(file.read_text(encoding="utf-8")).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try | ast.With):
            body += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            body += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


def _unresolved_imports(file: Path) -> list[str]:
    """Every `is4.*` import in `file`, function-level ones included, that the file system does not resolve."""
    problems = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            missing = [a.name for a in node.names if a.name.split(".")[0] == "is4" and not _module_file(a.name)]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "is4":
            module = _module_file(node.module or "")
            missing = [node.module or ""] if module is None else []
            if module is not None:
                defined = _top_level_names(module)
                missing = [
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if a.name not in defined and not _module_file(f"{node.module}.{a.name}")
                ]
        else:
            continue
        where = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
        problems += [f"{where}:{node.lineno}: {name}" for name in missing]
    return problems


def test_every_project_import_resolves_through_the_file_system() -> None:
    """What pyright sees, without its minutes: every `is4.*` import in the tree names a file or a top-level name."""
    files = [
        Path(folder) / name
        for source in SOURCES
        for folder, _dirs, names in os.walk(ROOT / source)  # not into the `is4/<layer>` links: each file once
        for name in names
        if name.endswith(".py")
    ]
    assert len(files) > 150
    assert [p for f in files for p in _unresolved_imports(f)] == []


def test_the_import_check_sees_broken_imports(tmp_path: Path) -> None:
    canary = tmp_path / "canary.py"
    canary.write_text(
        "import is4.pipeline.registry\nimport is4.pipeline.no_such_module\n"
        "from is4.pipeline.registry import stage, no_such_name\n"
        "def later():\n    from is4.pipeline import no_such_submodule\n"
    )
    problems = _unresolved_imports(canary)
    assert [p.split(": ")[1] for p in problems] == [
        "is4.pipeline.no_such_module",
        "is4.pipeline.registry.no_such_name",
        "is4.pipeline.no_such_submodule",
    ]


def test_pyright_resolves_project_imports_and_sees_a_broken_one(tmp_path: Path) -> None:
    """Pyright itself, on one small file: a project import resolves through the links, a broken one is caught."""
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
        "is4/configs/demo.yaml",  # `is4 init` writes them for a pip-only user
        "is4/configs/paper.yaml",
        "is4/configs/category_overrides.yaml",
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
