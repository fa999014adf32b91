"""Which stored model files running jobs are using, so a deleted model's file outlives its last use.

Deleting a model removes its registry row at once (the AIR stops
resolving), but a job prepared before that still names the file by its hash
and must be able to read it.  Jobs hold a lease on every hash they name for
as long as they run; the engine removes a doomed file only when no lease is
held and no row refers to it (see :meth:`engine.core.Engine.collect_files`).
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterable, Iterator


class FileLeases:
    def __init__(self) -> None:
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, sha256s: Iterable[str | None]) -> Iterator[None]:
        """Hold each named hash (None entries, the built-in models, are skipped) for the ``with`` block."""
        names = [s for s in sha256s if s]
        with self._lock:
            self._held.update(names)
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(names)
                for name in names:
                    if self._held[name] <= 0:
                        del self._held[name]

    def held(self, sha256: str) -> bool:
        with self._lock:
            return self._held.get(sha256, 0) > 0
