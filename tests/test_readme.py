"""The README's two set-up commands are the ones CI runs."""

from __future__ import annotations

import re

from tests.support import ROOT


def test_ci_runs_the_readme_commands_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block and readme.index(first_block.group(0)) < readme.index("\n## "), "commands come first"
    commands = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    for command in commands:
        assert command in ci_lines, f".ci/run does not run: {command}"
    assert "is4 build --config configs/demo.yaml" in commands[0]
    assert "pytest" in commands[1]
