"""CI gate: pyright resolves every project import (`is4.*`) in the files of `[tool.pyright]`.

The tree carries older pyright diagnostics of other kinds, so the gate is this one rule: an `is4` import that a
static tool cannot resolve (a moved module, a renamed name) fails it. Run from the repository root:
`.venv/bin/python tools/check_imports.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PYRIGHT = Path(sys.executable).with_name("pyright")


def unresolved_project_imports(report: dict) -> list[str]:
    """The diagnostics of `report` (pyright's JSON) that are project imports it could not resolve."""
    return [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if (d.get("rule") == "reportMissingImports" and '"is4' in d["message"])
        or (d.get("rule") == "reportAttributeAccessIssue" and 'module "is4' in d["message"])
    ]


def main() -> int:
    out = subprocess.run(
        [str(PYRIGHT), "--outputjson", "--pythonpath", sys.executable], capture_output=True, text=True, check=False
    )
    if not out.stdout.strip():
        print(f"pyright gave no report: {out.stderr.strip()}", file=sys.stderr)
        return 2
    report = json.loads(out.stdout)
    problems = unresolved_project_imports(report)
    for line in problems:
        print(line)
    print(f"pyright: {report['summary']['filesAnalyzed']} files, {len(problems)} unresolved project imports")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
