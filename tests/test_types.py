"""Types are checked by the test command: mypy with the configuration in pyproject.toml.

``[tool.mypy]`` holds the whole setup: strict on ``protocol/`` (the wire
vocabulary), a lenient baseline on ``server/``, ``engine/`` and ``bench/``
(unannotated functions are not checked inside; torch, diffusers and the other
heavy libraries are not followed, so their names are ``Any``).  Tighten the
baseline package by package in pyproject.toml, never here.

mypy runs as a subprocess (its own process, its own import state) with its
cache in a temporary folder, so the check never depends on a cache left
behind by an earlier run.  On failure mypy's own report is the message (a
missing mypy fails too: it is in the ``test`` extra the README installs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mypy failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
