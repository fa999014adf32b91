"""A replica node's model files: a content-addressed disk cache filled from the front end's origin.

A job names its files by sha256 (:mod:`engine.jobs`); a replica maps each to
``<root>/ab/cd/<sha256>.safetensors`` — the same layout as the front end's
:class:`engine.upload.store.ModelStore`, so the replica's engine reads it as
its store.  A missing file is fetched from the origin the job names
(``GET /internal/v1/blobs/<sha256>`` with the fleet token, in ``Range``
chunks so neither side holds a whole file in memory), hashed while it
arrives, fsynced and renamed into place: a wrong or partial file never
appears under its hash.

Every replica on a node shares one root.  A per-file lock (``flock`` on
``locks/<sha256>``) makes the download happen once per node: the second
replica waits and then finds the file.  The root has a byte budget: before a
download, least-recently-used files (by mtime, touched on every use) that no
replica on this node has in use are deleted until the new file fits.  "In
use" is a shared lock held on the same lock file for as long as a job runs
with the file, so another replica's eviction skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.errors import ModelUnavailable

log = logging.getLogger("wisp.fleet")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
BLOB_PATH = "/internal/v1/blobs/"
"""The origin route: ``GET {origin}/internal/v1/blobs/<sha256>`` with ``Authorization: Bearer <fleet token>``."""
CHUNK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Origin:
    """Where a replica fetches model bytes: the front end's base URL and the fleet token it accepts."""

    url: str
    token: str


class BlobCache:
    def __init__(self, root: Path, budget_bytes: int, timeout_s: float = 600.0) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.downloads = 0
        """Files this process fetched from an origin (the rest were found on disk)."""
        self.bytes_fetched = 0

    def path_for(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}.safetensors"

    def _lock_path(self, sha256: str) -> Path:
        return self.root / "locks" / sha256

    @contextlib.contextmanager
    def holding(self, hashes: list[str], origin: Origin | None) -> Iterator[None]:
        """Every file of ``hashes`` present (fetched from ``origin`` if missing) and kept from eviction until exit."""
        held: list[int] = []
        try:
            for sha256 in dict.fromkeys(hashes):
                held.append(self._ensure(sha256, origin))
            yield
        finally:
            for fd in held:
                os.close(fd)  # releases the shared lock

    def _ensure(self, sha256: str, origin: Origin | None) -> int:
        """The file present; returns a descriptor holding a shared lock on it (in use: not evicted)."""
        path = self.path_for(sha256)
        fd = os.open(self._lock_path(sha256), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if path.is_file():
                os.utime(path)
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            fcntl.flock(fd, fcntl.LOCK_EX)  # one download per file per node; others wait here
            if not path.is_file():
                if origin is None:
                    raise ModelUnavailable(f"model file {sha256[:12]}… is not on this replica and the job names no origin")
                self._fetch(sha256, origin, path)
            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade: now only in use
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _fetch(self, sha256: str, origin: Origin, path: Path) -> None:
        import httpx

        url = origin.url.rstrip("/") + BLOB_PATH + sha256
        headers = {"authorization": f"Bearer {origin.token}"}
        digest = hashlib.sha256()
        started = time.monotonic()
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{sha256[:12]}-")
        try:
            with os.fdopen(fd, "wb") as out, httpx.Client(timeout=60.0) as client:
                offset, total = 0, None
                while total is None or offset < total:
                    if time.monotonic() - started > self.timeout_s:
                        raise ModelUnavailable(f"fetching model file {sha256[:12]}… took over {self.timeout_s:g} s")
                    end = offset + CHUNK_BYTES - 1
                    response = client.get(url, headers={**headers, "range": f"bytes={offset}-{end}"})
                    if response.status_code not in (200, 206):
                        raise ModelUnavailable(f"the origin answered {response.status_code} for model file {sha256[:12]}…")
                    if total is None:
                        total = _total_size(response)
                        self._make_room(total)
                    body = response.content
                    if not body and offset < total:
                        raise ModelUnavailable(f"the origin sent a short model file {sha256[:12]}…")
                    digest.update(body)
                    out.write(body)
                    offset += len(body)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ModelUnavailable(f"model file {sha256[:12]}… arrived with other bytes (hash mismatch); not used")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, path)
            self.downloads += 1
            self.bytes_fetched += offset
            log.info("fetched model file %s… (%d bytes) in %.2f s", sha256[:12], offset, time.monotonic() - started)
        except ModelUnavailable:
            raise
        except Exception as exc:  # network errors: said plainly, never a traceback on the wire
            raise ModelUnavailable(f"could not fetch model file {sha256[:12]}… from the origin: {type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def files(self) -> list[tuple[Path, int, float]]:
        """(path, size, mtime) of every cached file, least recently used first."""
        found = []
        for path in self.root.glob("??/??/*.safetensors"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, st.st_size, st.st_mtime))
        return sorted(found, key=lambda item: item[2])

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self.files())

    def _make_room(self, incoming: int) -> None:
        """Delete least-recently-used files no replica on the node has in use until ``incoming`` bytes fit the budget."""
        files = self.files()
        used = sum(size for _, size, _ in files)
        for path, size, _ in files:
            if used + incoming <= self.budget_bytes:
                return
            fd = os.open(self._lock_path(path.stem), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while any replica holds it shared (in use)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                path.unlink(missing_ok=True)
                used -= size
                log.info("evicted model file %s… (%d bytes) from the node's disk cache", path.stem[:12], size)
            finally:
                os.close(fd)
        if used + incoming > self.budget_bytes:
            log.warning("the node's model disk cache is over its budget (%d + %d > %d bytes): every file is in use",
                        used, incoming, self.budget_bytes)


def _total_size(response: "object") -> int:
    """A ranged response's whole size (``Content-Range: bytes a-b/total``), or a plain response's length."""
    headers = response.headers  # type: ignore[attr-defined]
    content_range = headers.get("content-range", "")
    if "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(headers.get("content-length", len(response.content)))  # type: ignore[attr-defined]
