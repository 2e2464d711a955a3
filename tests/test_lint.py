"""The linter is part of the test command: `ruff check .` with the rules in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401 - only to know the package is installed
    except ImportError:
        exe = shutil.which("ruff")
        if exe is None:
            pytest.fail("ruff is not installed; `pip install -e '.[test]'` brings it")
        return [exe]
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_passes():
    r = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ruff check . found problems:\n{r.stdout}{r.stderr}"


def test_ruff_config_is_the_one_in_pyproject():
    # a noqa comment only means something when the rule it names is enabled
    r = subprocess.run([*_ruff(), "check", "--show-settings", "engine/algorithms.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert str(ROOT / "pyproject.toml") in r.stdout
    for code in ("BLE001", "RUF100", "F401", "E402", "I001"):
        assert code in r.stdout, f"rule {code} is not enabled"
