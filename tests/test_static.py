"""The package type-checks (mypy, with its py.typed marker shipped) and lints clean (ruff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import poisonlab

ROOT = Path(poisonlab.__file__).parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_is_clean(tmp_path: Path) -> None:
    assert (ROOT / "poisonlab" / "py.typed").is_file()
    result = run("mypy", "--cache-dir", str(tmp_path), "poisonlab")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "poisonlab", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
