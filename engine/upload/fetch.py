"""Streaming download of a model file to ``tmp/``, hashing as it goes.

Runs in a worker thread (never on the event loop): the body is written in
1 MiB chunks and fed to SHA-256 on the way, so memory stays flat whatever the
file size.  Every hop (first URL and each redirect) passes the URL guard; the
size cap applies to both the declared length and the bytes actually read.
Network errors and 5xx answers are retried ``retries`` times with backoff.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin

import httpx

from engine.errors import DownloadFailed
from engine.net import NetPolicy, check_url_sync, guarded_client

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    size: int


class _Retryable(Exception):
    pass


class PipelinedHash:
    """SHA-256 on a second thread, so hashing overlaps receiving and writing.

    hashlib releases the GIL on large buffers; a bounded queue (8 chunks)
    keeps memory flat.  Use as a context manager; ``hexdigest`` waits for the
    queue to drain.
    """

    def __init__(self, depth: int = 8) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="wisp-sha256", daemon=True)
        self._thread.start()
        self._done = False

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._finish()
        return self._digest.hexdigest()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> "PipelinedHash":
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()


@dataclass(frozen=True)
class Limits:
    """When a download must give up: a total time and a stop flag (the engine stopping)."""

    timeout_s: float = float("inf")
    cancel: threading.Event | None = None
    deadline: float = float("inf")
    """Set by :meth:`started`: the clock starts when the download does, not when it was queued."""

    def started(self) -> "Limits":
        return Limits(self.timeout_s, self.cancel, time.monotonic() + self.timeout_s)

    def check(self, parameter: str) -> float:
        """Seconds left; raises DownloadFailed once the deadline passed or the flag is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadFailed(f"{parameter}: the server is stopping", parameter=parameter)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadFailed(f"{parameter}: the download ran past its time limit", parameter=parameter)
        return left


def download(
    url: str,
    dest: Path,
    policy: NetPolicy,
    *,
    max_bytes: int,
    retries: int = 2,
    parameter: str = "downloadURL",
    progress: Callable[[int, int | None], None] | None = None,
    limits: Limits = Limits(),
) -> Downloaded:
    """Fetch ``url`` into ``dest``; returns its SHA-256 and size, or raises DownloadFailed/URLNotAllowed.

    ``limits`` are checked between reads and before each retry, so a server
    that trickles bytes cannot hold the download past its deadline, nor the
    process past its stop.
    """
    delay = 0.5
    limits = limits.started()
    for attempt in range(retries + 1):
        try:
            return _once(url, dest, policy, max_bytes, parameter, progress, limits)
        except _Retryable as exc:
            dest.unlink(missing_ok=True)
            if attempt == retries:
                raise DownloadFailed(f"{parameter}: {exc} (after {retries + 1} attempts)", parameter=parameter) from None
            if limits.check(parameter) <= delay:
                raise DownloadFailed(f"{parameter}: {exc}; no time left to retry", parameter=parameter) from None
            if limits.cancel is not None:
                limits.cancel.wait(delay)
            else:
                time.sleep(delay)
            delay *= 2
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable")


def _once(
    url: str, dest: Path, policy: NetPolicy, max_bytes: int, parameter: str,
    progress: Callable[[int, int | None], None] | None, limits: Limits,
) -> Downloaded:
    step = min(policy.timeout_s, limits.check(parameter))
    timeout = httpx.Timeout(step, connect=min(step, 10.0))
    with guarded_client(policy, parameter, timeout) as client:
        for _ in range(policy.max_redirects + 1):
            check_url_sync(url, policy, parameter)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 500:
                        raise _Retryable(f"server answered HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise DownloadFailed(f"{parameter}: GET answered HTTP {response.status_code}", parameter=parameter)
                    declared = response.headers.get("content-length")
                    total = int(declared) if declared and declared.isdigit() else None
                    if total is not None and total > max_bytes:
                        raise DownloadFailed(
                            f"{parameter}: file of {total} bytes is over the {max_bytes}-byte limit", parameter=parameter
                        )
                    size = 0
                    with open(dest, "wb") as out, PipelinedHash() as digest:
                        pending = bytearray()
                        # Each network read comes back here, so the limits are checked however slowly bytes arrive.
                        for piece in response.iter_bytes():
                            limits.check(parameter)
                            size += len(piece)
                            if size > max_bytes:
                                raise DownloadFailed(f"{parameter}: body is over the {max_bytes}-byte limit", parameter=parameter)
                            pending += piece
                            if len(pending) >= CHUNK:
                                chunk = bytes(pending)
                                pending.clear()
                                digest.update(chunk)
                                out.write(chunk)
                                if progress is not None:
                                    progress(size, total)
                        if pending:
                            digest.update(bytes(pending))
                            out.write(pending)
                            if progress is not None:
                                progress(size, total)
                        out.flush()
                        os.fsync(out.fileno())
                        sha = digest.hexdigest()
                    if total is not None and size != total:
                        raise _Retryable(f"got {size} of {total} bytes")
                    return Downloaded(dest, sha, size)
            except httpx.HTTPError as exc:
                raise _Retryable(f"download failed ({type(exc).__name__})") from None
        raise DownloadFailed(f"{parameter}: too many redirects", parameter=parameter)


def copy_and_hash(src: Path, dest: Path, max_bytes: int) -> Downloaded:
    """The local twin of :func:`download`: copy a file we already hold, hashing it."""
    size = 0
    with open(src, "rb") as f, open(dest, "wb") as out, PipelinedHash() as digest:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise DownloadFailed(f"file is over the {max_bytes}-byte limit", parameter="downloadURL")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        sha = digest.hexdigest()
    return Downloaded(dest, sha, size)
