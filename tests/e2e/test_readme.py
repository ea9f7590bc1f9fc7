"""README code that runs as a test, and newcomer commands that stay the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"

RUN_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && saga serve"
TEST_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def shell_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"^```(?:sh|bash|console)\n(.*?)^```$", markdown, re.DOTALL | re.MULTILINE)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_the_readme_has_a_python_example() -> None:
    assert python_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("number", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_example_runs(tmp_path: Path, number: int) -> None:
    code = python_blocks(README.read_text(encoding="utf-8"))[number]
    script = tmp_path / f"readme_example_{number}.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if "Orchestrator(" in code:
        assert result.stdout.splitlines() == ["20 completed", "released R-A-1", "500 compensated"]


@pytest.mark.parametrize("command", [RUN_COMMAND, TEST_COMMAND])
def test_the_newcomer_commands_are_single_lines_of_the_readme(command: str) -> None:
    assert command in shell_lines(README.read_text(encoding="utf-8"))


def test_ci_runs_the_readme_test_command() -> None:
    *setup, run = TEST_COMMAND.split(" && ")
    install = setup[-1]
    script = CI_SCRIPT.read_text(encoding="utf-8")
    lines = [line.strip() for line in script.splitlines()]
    assert any(line.startswith(install) for line in lines), f"{install!r} not in {CI_SCRIPT}"
    assert run in lines, f"{CI_SCRIPT} does not run {run!r} as a command of its own"
    assert "set -euo pipefail" in lines
