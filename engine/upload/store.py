"""The content-addressed model store: ``store/ab/cd/<sha256>.safetensors``.

Files are immutable once written: a file is fsynced in ``tmp/`` and renamed
into place, so a crash leaves either nothing or the whole file.  Two AIRs
with the same bytes share one file.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}.safetensors"

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put(self, tmp_file: Path, sha256: str) -> Path:
        """Move a finished temp file into place (or drop it if the bytes are already stored)."""
        target = self.path_for(sha256)
        if target.is_file():
            tmp_file.unlink(missing_ok=True)
            os.utime(target)  # in use again: a sweep's age threshold now protects it until it is registered
            return target
        with open(tmp_file, "rb") as f:
            os.fsync(f.fileno())
        _test_pause_before_rename()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_file, target)
        return target

    def remove(self, sha256: str, older_than_s: float) -> bool | None:
        """Delete one stored file unless it was written or reused in the last ``older_than_s``.

        True: removed (or already gone); None: kept for now, being too fresh
        (an upload of the same bytes may be about to register it: :meth:`put`
        touches a reused file).  The caller has checked that no row refers to it.
        """
        path = self.path_for(sha256)
        try:
            if path.stat().st_mtime > time.time() - older_than_s:
                return None
            path.unlink()
        except FileNotFoundError:
            pass
        return True

    def sweep(self, referenced: set[str], older_than_s: float) -> int:
        """Delete stored files no model references and not touched for ``older_than_s``; returns how many.

        Such files are left by a crash between storing a file and registering
        it, or by a registration refused at the last moment (the team's LoRA
        quota filled up by a concurrent upload).  The age threshold keeps a
        file that another process sharing the data dir has just stored and is
        about to register (its mtime is when its bytes were written, moments
        before the rename into place).
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.root.glob("*/*/*.safetensors"):
            if path.stem in referenced or not _SHA_RE.match(path.stem):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


_PAUSE_ENV = "WISP_TEST_STORE_PAUSE_FILE"


def _test_pause_before_rename() -> None:
    """TEST-ONLY hook (tests/server/test_faults_store.py): hold the store phase while a flag file exists.

    With ``WISP_TEST_STORE_PAUSE_FILE`` unset (always, outside tests) this
    does nothing.  Set, a put waits between the fsync and the rename for as
    long as that file exists (60 s at most), so a test can kill the server
    inside the store phase.  Runs on a worker thread, never the event loop.
    """
    flag = os.environ.get(_PAUSE_ENV)
    if not flag:
        return
    deadline = time.monotonic() + 60.0
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
