"""``PUT /v1/files``: a user's local model file, turned into a short-lived URL.

The body streams to ``uploads/`` on disk (never held in memory), under a
size cap.  The answer is ``{"url": ".../v1/files/<token>", "expiresIn": s}``;
that URL is usable as ``downloadURL`` on this server for ``ttl_s`` seconds:
the upload phase reads it from disk instead of fetching it over HTTP, so it
needs no private-address exception.  Tokens are random and single-team.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
FILES_PATH = "/v1/files/"


@dataclass
class DroppedFile:
    path: Path
    team: str
    expires_at: float


def _storage_failure(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the server has no room left to store this upload"
    return "the server could not store this upload"


class FileSink:
    """Streams one request body into ``uploads/<token>.part``."""

    def __init__(self, drop: "FileDrop", team: str, max_bytes: int) -> None:
        self.drop = drop
        self.team = team
        self.max_bytes = max_bytes
        self.token = secrets.token_urlsafe(24)
        self.part = drop.root / f"{self.token}.part"
        self.size = 0
        self.failure: str | None = None
        """Why the body could not be stored (a full disk), as the client is told; None while it could."""
        self._file = open(self.part, "wb")

    def write(self, data: bytes) -> bool:
        """Take a chunk; False when the body is over its limit or could not be stored (then :attr:`failure` says why)."""
        self.size += len(data)
        if self.size > self.max_bytes:
            return False
        try:
            self._file.write(data)
        except OSError as exc:
            self.failure = _storage_failure(exc)
            return False
        return True

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.part.unlink(missing_ok=True)

    def finish(self) -> str:
        """Close the file and publish it; returns its token."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.drop.root / f"{self.token}.bin"
        os.replace(self.part, final)
        self.drop.files[self.token] = DroppedFile(final, self.team, time.monotonic() + self.drop.ttl_s)
        return self.token


class FileDrop:
    def __init__(self, root: Path, ttl_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        shutil.rmtree(self.root, ignore_errors=True)  # tokens do not survive a restart
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, DroppedFile] = {}

    def sink(self, team: str, max_bytes: int) -> FileSink:
        return FileSink(self, team, max_bytes)

    def lookup(self, token: str, team: str) -> Path | None:
        """The dropped file for ``token`` if it is live and ``team``'s own."""
        if not _TOKEN_RE.match(token):
            return None
        entry = self.files.get(token)
        if entry is None or entry.team != team or entry.expires_at < time.monotonic():
            return None
        return entry.path

    def sweep(self) -> None:
        now = time.monotonic()
        for token, entry in list(self.files.items()):
            if entry.expires_at < now:
                entry.path.unlink(missing_ok=True)
                del self.files[token]
