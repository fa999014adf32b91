"""Stored model files are checked against their name before a process first uses them.

The store names each file by the SHA-256 of its bytes
(``store/ab/cd/<sha256>.safetensors``), so a file whose bytes changed on disk
(a flipped bit, a truncated copy, a hand edit) no longer matches its name.
:func:`verify_stored_file` hashes a file the first time a process loads it
(again only if its size or mtime change) and raises the loader's own error
(``modelLoadFailed``, ``loraLoadFailed``) on a mismatch, so a damaged file is
refused instead of silently used.  It reads the whole file: call it where the
file is loaded, on a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path

from engine.errors import EngineError

log = logging.getLogger("wisp.store")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 4 * 1024 * 1024
_verified: set[tuple[str, int, int]] = set()
"""(path, size, mtime_ns) of files whose bytes matched their name in this process."""
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_stored_file(path: Path, error: type[EngineError], parameter: str | None) -> None:
    """Raise ``error`` (at ``parameter``) unless ``path``'s bytes hash to the sha256 its name carries.

    A file not named by a sha256 (the built-in models' folders) is not
    checked.  Each file is hashed once per process while its size and mtime
    stay the same; two threads loading it at once hash it once.
    """
    expected = path.stem
    if not _SHA_RE.match(expected):
        return
    with _locks_guard:
        lock = _locks.setdefault(str(path), threading.Lock())
    with lock:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise error("the stored file for this model is missing; upload it again", parameter=parameter) from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _verified:
            return
        actual = file_sha256(path)
        if actual != expected:
            log.error("stored file %s is damaged: its bytes hash to %s", path, actual)
            raise error(
                "the stored file for this model is damaged (its bytes no longer match their hash); upload it again",
                parameter=parameter,
            )
        _verified.add(key)
