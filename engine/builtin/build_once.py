"""Build a folder under ``data_dir/builtin`` once, atomically.

The build writes into a temporary folder that is renamed into place, so a
crash mid-build leaves nothing that looks finished, and two builders racing
both end with the same complete folder (the loser's copy is discarded).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

_lock = threading.Lock()
MARKER = "model_index.json"


def build_once(data_dir: Path, name: str, build: Callable[[Path], None], marker: str = MARKER) -> Path:
    """``data_dir/builtin/<name>``, calling ``build(target)`` the first time only.

    ``marker``: the file whose presence says the folder is complete (a pipeline's
    ``model_index.json``; a lone model's ``config.json``).
    """
    root = Path(data_dir) / "builtin"
    final = root / name
    if (final / marker).exists():
        return final
    with _lock:
        if (final / marker).exists():
            return final
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            target = staging / "out"
            build(target)
            try:
                os.rename(target, final)
            except OSError:
                if not (final / marker).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final
