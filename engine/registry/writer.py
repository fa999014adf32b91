"""Write-behind for SQLite: statements queued from any thread, committed by one thread in bunches.

Some rows must be durable soon but not before the caller moves on: the task
journal's claims and outcomes, the owner of each generated image.  Writing
them where they happen cost an imageInference ~0.3 ms of its device thread
(an autocommit INSERT: file locks and WAL writes) and the event loop a
wake-up of the journal's thread per statement (bench/inference.py;
RESULTS.md, 2026-12-05).  Here every statement is appended to a queue (no
lock, no wake-up while the writer is busy) and one thread commits what is
queued every ``interval_s`` (50 ms) in one transaction: a short task's
claim, image owner and outcome share one commit.  A writer that finds the
queue empty after a commit sleeps until the next statement wakes it, then
gathers for an interval again: an idle server does not poll, and a long
task's claim and outcome cost two wake-ups each rather than one per
interval (on the 2-core VM a timed wake-up of an idle thread cost ~0.15 ms
of CPU; RESULTS.md, 2026-12-05).

Other bunch-at-a-time work may ride on the same thread (:meth:`WriteBehind.share`):
the server's task lines and task metrics are written after each commit
instead of by a thread of their own, so a finished task wakes one thread,
not two (a second thread's wake-ups ran in the middle of the next request's
denoising and moved between the cores; RESULTS.md, 2026-12-05).

What is queued is lost by a kill -9 within ``interval_s``; callers say what
that means for them (the journal: the task is unknown, never half-known).
:meth:`WriteBehind.sync` waits for what was queued before it (readers that
must see this process's own writes); :meth:`WriteBehind.close` writes the
rest and stops the thread; a statement put after it is written at once on
the caller's thread.
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from engine.threads import name_os_thread

log = logging.getLogger("wisp.db")

WRITE_INTERVAL_S = 0.05
"""How long a statement may wait in the queue before it is committed (with whatever else came meanwhile); the server's
``WISP_JOURNAL_INTERVAL``."""

MAX_WRITE_INTERVAL_S = 10.0
"""The longest interval a server accepts: beyond it a kill -9 would lose more than a client's retry covers."""


class Connects(Protocol):
    """What the writer needs of :class:`engine.registry.db.Database` (which makes one writer of its own)."""

    def connect(self) -> sqlite3.Connection: ...


@dataclass(frozen=True, slots=True)
class _Statement:
    sql: str
    params: tuple[Any, ...]
    after_commit: Callable[[], None] | None
    script: bool
    """Run with ``executescript`` after the bunch's commit (``PRAGMA incremental_vacuum`` steps to its end that way)."""


class WriteBehind:
    def __init__(self, db: Connects, name: str = "wisp-db-writer", interval_s: float = WRITE_INTERVAL_S) -> None:
        self.db = db
        self.name = name
        self.interval_s = interval_s
        self._pending: deque[_Statement | threading.Event] = deque()
        """Statements to write, in order; an Event is a :meth:`sync` waiting for what was queued before it."""
        self._asleep = False
        """The writer waits on ``_wake`` (the queue was empty after its last commit): the next statement must wake it."""
        self._wake = threading.Event()
        self._syncing = False
        """A :meth:`sync` waits: write without gathering for an interval first."""
        self._closing = False
        self._closed = False
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shared: list[tuple[Callable[[], None], Callable[[], bool]]] = []
        """Work riding on this thread (:meth:`share`): (drain, has work queued)."""

    def put(self, sql: str, params: tuple[Any, ...] = (), *, after_commit: Callable[[], None] | None = None,
            script: bool = False) -> None:
        """Queue one statement (any thread); ``after_commit`` runs on the writer's thread once it is committed (or failed)."""
        if self._thread is None:
            self._start()
        self._pending.append(_Statement(sql, params, after_commit, script))  # atomic: no lock, no wake-up while busy
        self._rouse()
        if self._closed:  # the thread is gone: write it here (with anything queued before it, in order)
            self._write_left()

    def share(self, drain: Callable[[], None], waiting: Callable[[], bool]) -> None:
        """Let other work queued a bunch at a time ride on this thread.

        ``drain()`` runs on the writer's thread after each pass's commit and
        once more at :meth:`close`; ``waiting()`` says whether it has work
        queued (the thread does not go to sleep while it has).  Its
        producers call :meth:`nudge` after queueing.  Sharing the same
        ``drain`` again does nothing.
        """
        if all(drain is not shared for shared, _ in self._shared):
            self._shared = [*self._shared, (drain, waiting)]  # a new list: the thread may be iterating the old one

    def unshare(self, drain: Callable[[], None]) -> None:
        """Stop running ``drain`` (what it has queued is its owner's to handle)."""
        self._shared = [(d, w) for d, w in self._shared if d is not drain]

    def nudge(self) -> None:
        """Work for a shared drain was queued (any thread): wake the thread if it sleeps; free while it is awake.

        After :meth:`close` the drains run here, on the caller's thread.
        """
        if self._thread is None:
            self._start()
        self._rouse()
        if self._closed:
            self._drain_shared()

    def _rouse(self) -> None:
        """After queueing: wake the writer if it sleeps and nobody has woken it yet (both flags are read without a lock:
        the work was queued first, and the writer re-checks the queue after raising ``_asleep``)."""
        if self._asleep and not self._wake.is_set():
            self._wake.set()

    def sync(self, timeout_s: float = 10.0) -> bool:
        """Wait (never on the event loop) until everything queued before this call is committed; False: timed out."""
        if self._thread is None or self._closed:
            return True
        done = threading.Event()
        self._pending.append(done)
        self._syncing = True
        self._wake.set()
        return done.wait(timeout_s)

    def close(self) -> None:
        """Write what is queued and stop the thread; later statements are written at once by their caller."""
        with self._start_lock:
            thread = self._thread
            self._closing = True
        if thread is not None:
            self._wake.set()
            thread.join(timeout=10)
        self._closed = True  # before the last drain: a statement queued after it sees the flag and writes itself
        self._write_left()
        self._drain_shared()

    def _write_left(self) -> None:
        """After close, on the caller's thread: write what is still queued (one writer at a time, in order)."""
        with self._start_lock:
            left = self._take()
            if left:
                self._write(self.db.connect(), left)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                atexit.register(self.close)  # a CLI command that stored an image exits with its row written

    def _run(self) -> None:
        name_os_thread()
        conn = self.db.connect()
        while True:
            if not self._closing and not self._syncing:
                self._wake.wait(self.interval_s)  # gather what comes within the interval (a sync or close cuts it short)
            self._wake.clear()
            self._syncing = False  # before the take: the sync's marker was queued before its flag was set
            batch = self._take()
            if batch:
                self._write(conn, batch)
            self._drain_shared()
            if self._closing:
                if not self._pending:
                    return
            elif not self._queued():  # nothing more: sleep until the next statement (no timed wake-ups while idle)
                self._asleep = True
                if not self._queued():  # work queued before the flag was seen is not left waiting
                    self._wake.wait()
                self._asleep = False
                if not self._syncing and not self._closing:
                    self._wake.clear()  # woken by a statement: gather for an interval from now

    def _queued(self) -> bool:
        """Statements, or a shared drain's work, waiting."""
        return bool(self._pending) or any(waiting() for _, waiting in self._shared)

    def _drain_shared(self) -> None:
        for drain, _ in self._shared:
            try:
                drain()
            except Exception:
                log.exception("%s: shared work failed", self.name)

    def _take(self) -> list[_Statement | threading.Event]:
        batch: list[_Statement | threading.Event] = []
        while True:
            try:
                batch.append(self._pending.popleft())
            except IndexError:
                return batch

    def _write(self, conn: Any, batch: list[_Statement | threading.Event]) -> None:
        statements = [b for b in batch if isinstance(b, _Statement) and not b.script]
        if len(statements) == 1:  # a server that is not flooded: one call, its own transaction
            try:
                conn.execute(statements[0].sql, statements[0].params)
            except Exception:
                log.exception("%s: a write failed", self.name)
        elif statements:
            try:
                conn.execute("BEGIN")
                for statement in statements:
                    conn.execute(statement.sql, statement.params)
                conn.execute("COMMIT")
            except Exception:
                log.exception("%s: a write failed", self.name)
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
        for item in batch:
            if isinstance(item, threading.Event):
                item.set()
                continue
            if item.script:
                try:
                    conn.executescript(f"{item.sql};")
                except Exception:
                    log.exception("%s: %s failed", self.name, item.sql)
            if item.after_commit is not None:
                try:
                    item.after_commit()
                except Exception:
                    log.exception("%s: an after-commit callback failed", self.name)
