"""Static checks in the quick tier: ruff and mypy, each configured in pyproject.toml, report nothing.

mypy keeps its incremental cache in .mypy_cache: about a minute the first time (it reads torch's
types), seconds after that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def report(tool: str, *args: str) -> str:
    """What ``python -m <tool> <args>`` prints in the repository root; empty when its exit status is 0
    and it printed only its success line."""
    result = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0 and f"No module named {tool}" in result.stderr:
        return f"{tool} is not installed in {sys.executable}: pip install -e '.[test]'\n{result.stderr}"
    lines = (result.stdout + result.stderr).splitlines()
    success = ("All checks passed!", "Success: no issues found")
    if result.returncode == 0 and all(line.startswith(success) for line in lines):
        return ""
    return "\n".join(lines) or f"exit status {result.returncode}"


def test_ruff_reports_nothing():
    output = report("ruff", "check", "src", "tests", "benchmarks")
    if output:
        pytest.fail(f"ruff (pyproject.toml's [tool.ruff.lint] rules) reports:\n{output}", pytrace=False)


def test_mypy_reports_nothing():
    output = report("mypy")
    if output:
        pytest.fail(f"mypy (pyproject.toml's [tool.mypy] options) reports:\n{output}", pytrace=False)
