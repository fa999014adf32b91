"""An in-memory, read-through view of the model rows, for modelSearch on the event loop.

A search is a filter over a few hundred or thousand rows; asking SQLite for it
costs a worker-thread round trip per task, more than everything else a search
does.  So the rows live here as well: loaded in a worker thread, read on the
loop, and dropped the moment the registry changes — by this process (the
registry calls :meth:`ModelView.invalidate` after every write) or by another
one sharing the database (each write also bumps ``registry_version``, which
:meth:`ModelView.check` compares, from a worker thread, with the version the
rows were loaded at).  While the view is stale, searches take the job path
(SQL in a thread) and the view is reloaded there.

The filter is the SQL one (:meth:`ModelRegistry.search`) in Python: ASCII-only
case folding as SQLite's ``lower``/``LIKE``, the raw stored meta text for
text matches, the same order (newest update first, then AIR).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from engine.registry.models import RESERVED_SOURCES, ModelRegistry, ModelRow, _row

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


T = TypeVar("T")

MEMO_ENTRIES = 128
"""Answers remembered per loaded generation of rows (:meth:`ModelView.memoised`); past that the memo starts afresh."""


def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class _Indexed:
    row: ModelRow
    text: tuple[str, str, str]
    """name, AIR and raw meta JSON, ASCII-lowered: what ``search``'s LIKE looks in."""
    updated_at: float


class ModelView:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._loaded: tuple[int, list[_Indexed]] | None = None
        """(generation, rows), swapped whole, so that a reader on the loop never pairs one load's rows with
        another's generation while a worker thread reloads."""
        self._generation = 0
        self._version: int | None = None
        self._lock = threading.Lock()
        self._memo: dict[tuple[int, Hashable], object] = {}
        registry.on_change.append(self.invalidate)

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def invalidate(self) -> None:
        """The registry changed: the next search goes to SQLite (and reloads the view)."""
        self._loaded = None

    def reload(self) -> None:
        """Worker thread: load every row (and the version they are at)."""
        with self._lock:
            version = self.registry.version()
            conn = self.registry.db.connect()
            rows = []
            for r in conn.execute("SELECT m.*, t.name AS team FROM models m JOIN teams t ON t.id = m.team_id"):
                if r["source"] in RESERVED_SOURCES:
                    continue
                row = _row(r)
                rows.append(_Indexed(row, (_fold(row.name), _fold(row.air), _fold(r["meta"])), float(r["updated_at"])))
            rows.sort(key=lambda e: e.row.air)
            rows.sort(key=lambda e: e.updated_at, reverse=True)  # stable: newest first, then AIR
            self._version = version
            self._generation += 1
            self._loaded = (self._generation, rows)

    def check(self) -> None:
        """Worker thread: drop the rows if another process wrote the registry since they were loaded."""
        if self._loaded is not None and self.registry.version() != self._version:
            self.invalidate()

    def memoised(self, key: Hashable, compute: "Callable[[ModelView], T]") -> T | None:
        """``compute(self)``'s answer for ``key``, remembered until the rows are reloaded; None while stale.

        A search is a pure function of the rows and its filters, and a busy client (a model picker, a
        load balancer's health check) asks the same few again and again: the second time costs a dict
        lookup instead of a pass over every row and a result struct per match.  Keys carry the rows'
        generation, so an answer computed from rows a reload has replaced is never served after it.
        """
        loaded = self._loaded
        if loaded is None:
            return None
        memo_key = (loaded[0], key)
        found = self._memo.get(memo_key)
        if found is None:
            found = compute(self)
            if found is None or self._loaded is not loaded:
                return found  # the rows changed while it was computed: answer, but do not remember
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo = {}
            self._memo[memo_key] = found
        return found  # type: ignore[return-value]

    def search(
        self, team: str, *, text: str | None = None, category: str | None = None, type_: str | None = None,
        architectures: tuple[str, ...] | None = None, conditioning: str | None = None, visibility: str = "all",
        tags: list[str] | None = None,
    ) -> list[ModelRow] | None:
        """What :meth:`ModelRegistry.search` returns (all matches, in order), or None while the view is stale."""
        loaded = self._loaded
        if loaded is None:
            return None
        rows = loaded[1]
        needle = _fold(text.lower()) if text else None
        wanted = set(tags) if tags else None
        found = []
        for entry in rows:
            row = entry.row
            if row.private and row.team != team:
                continue
            if visibility == "public" and row.private or visibility == "private" and not row.private:
                continue
            if category is not None and row.category != category or type_ is not None and row.type != type_:
                continue
            if conditioning is not None and row.conditioning != conditioning:
                continue
            if architectures and row.architecture not in architectures:
                continue
            if needle is not None and not any(needle in field for field in entry.text):
                continue
            if wanted is not None and not wanted <= set(row.tags):
                continue
            found.append(row)
        return found

