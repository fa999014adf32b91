"""The task journal: every accepted task in SQLite, so a restart loses none.

Writes never run on the event loop: the loop appends each statement to a
queue and one writer thread commits what is queued, in batches, every
``interval_s`` (50 ms).  The loop never wakes the writer while it is busy:
waking a thread costs the waker a futex call and the woken a GIL hand-off
with the device thread, and two per task (claim, finish) were ~0.1 ms of the
loop's CPU and ~0.2 ms of the writer's per imageInference on a 2-core VM
(bench/inference.py, RESULTS.md, 2026-12-05); by the interval, a short
task's claim and finish share one commit.  A writer idle for a whole
interval goes to sleep and the next statement wakes it, so an idle server
does not poll.  At start-up, tasks still marked ``processing`` were
interrupted by a crash or kill; they are marked failed (``taskInterrupted``)
so ``getResponse`` answers them instead of leaving them processing forever.
A task claimed in the last ``interval_s`` before a kill -9 may not have
reached the journal; it is then unknown (``taskNotFound``), never half-known.
A graceful stop (:meth:`TaskJournal.close`) writes everything queued.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

from engine.registry.db import Database
from protocol.errors import ErrorCode

log = logging.getLogger("wisp.journal")

_VACUUM = "PRAGMA incremental_vacuum"
INTERRUPTED_MESSAGE = "the server stopped while this task was running; send it again with a new taskUUID"
WRITE_INTERVAL_S = 0.05
"""How long a statement may wait in the queue before it is committed (with whatever else came meanwhile)."""

_Statement = tuple[str, tuple[Any, ...]]


class TaskJournal:
    def __init__(self, db: Database, interval_s: float = WRITE_INTERVAL_S) -> None:
        self.db = db
        self.interval_s = interval_s
        self._pending: deque[_Statement | threading.Event] = deque()
        """Statements to write, in order; an Event is a :meth:`sync` waiting for what was queued before it."""
        self._asleep = False
        """The writer waits on ``_wake`` (it found nothing for a whole interval): the next statement must wake it."""
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="wisp-journal", daemon=True)
        self._thread.start()

    # ---- writes (any thread; applied in order by the writer) ----------------

    def claimed(self, team: str, task_uuid: str, task_type: str, request: Any) -> None:
        self._put((
            "INSERT OR REPLACE INTO tasks(team, task_uuid, task_type, status, request, created_at) VALUES (?,?,?,?,?,?)",
            (team, task_uuid.lower(), task_type, "processing", json.dumps(request), time.time()),
        ))

    def finished(self, team: str, task_uuid: str, status: str, items: list[Any], errors: list[Any]) -> None:
        self._put((
            "UPDATE tasks SET status=?, items=?, errors=?, finished_at=? WHERE team=? AND task_uuid=?",
            (status, json.dumps(items), json.dumps(errors), time.time(), team, task_uuid.lower()),
        ))

    def released(self, team: str, task_uuid: str) -> None:
        self._put(("DELETE FROM tasks WHERE team=? AND task_uuid=?", (team, task_uuid.lower())))

    def prune(self, retention_s: float) -> None:
        """Drop what retention expired, and give the freed pages back to the file system (the db is auto_vacuum=INCREMENTAL)."""
        self._put(("DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?", (time.time() - retention_s,)))
        self._put((_VACUUM, ()))

    def sync(self, timeout_s: float = 10.0) -> bool:
        """Worker threads: wait until everything queued before this call is committed (False: timed out).

        For readers of the ``tasks`` table that must see the tasks this
        process has just claimed or finished (``getUsageActivity``).
        """
        done = threading.Event()
        self._pending.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def _put(self, statement: _Statement) -> None:
        self._pending.append(statement)  # deque.append is atomic: no lock, no wake-up while the writer is busy
        if self._asleep:
            self._wake.set()

    def _run(self) -> None:
        conn = self.db.connect()
        while True:
            if not self._closing:
                self._wake.wait(self.interval_s)
            self._wake.clear()
            batch = self._take()
            if batch:
                self._write(conn, batch)
            elif self._closing:
                return
            else:  # a whole interval without work: sleep until the next statement
                self._asleep = True
                if not self._pending:  # a statement queued before the flag was seen is not left waiting
                    self._wake.wait()
                self._asleep = False

    def _take(self) -> list[_Statement | threading.Event]:
        batch: list[_Statement | threading.Event] = []
        while True:
            try:
                batch.append(self._pending.popleft())
            except IndexError:
                return batch

    def _write(self, conn: Any, batch: list[_Statement | threading.Event]) -> None:
        statements = [b for b in batch if not isinstance(b, threading.Event) and b[0] != _VACUUM]
        if len(statements) == 1:  # a server that is not flooded: one call, its own transaction
            try:
                conn.execute(*statements[0])
            except Exception:
                log.exception("task journal write failed")
        elif statements:
            try:
                conn.execute("BEGIN")
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except Exception:
                log.exception("task journal write failed")
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
        if any(not isinstance(b, threading.Event) and b[0] == _VACUUM for b in batch):
            try:
                # executescript steps the pragma to its end (execute frees a single page) after a commit.
                conn.executescript(f"{_VACUUM};")
            except Exception:
                log.exception("task journal vacuum failed")
        for b in batch:
            if isinstance(b, threading.Event):
                b.set()

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=10)

    # ---- reads (the event loop: single indexed rows) ------------------------

    def load(self, team: str, task_uuid: str) -> dict[str, Any] | None:
        row = self.db.connect().execute(
            "SELECT task_type, status, request, items, errors, finished_at FROM tasks WHERE team=? AND task_uuid=?",
            (team, task_uuid.lower()),
        ).fetchone()
        if row is None:
            return None
        return {
            "task_type": row[0], "status": row[1], "request": json.loads(row[2]), "items": json.loads(row[3]),
            "errors": json.loads(row[4]), "finished_at": row[5],
        }

    def keys(self, retention_s: float) -> set[tuple[str, str]]:
        """(team, taskUUID) of every task still within retention: what a restart knows without reading rows."""
        rows = self.db.connect().execute(
            "SELECT team, task_uuid FROM tasks WHERE finished_at IS NULL OR finished_at >= ?", (time.time() - retention_s,)
        ).fetchall()
        return {(str(team), str(task_uuid)) for team, task_uuid in rows}

    def newest_with(self, team: str, task_type: str, field: str, value: str) -> str | None:
        """The taskUUID of ``team``'s newest journaled ``task_type`` whose request has ``field`` = ``value``.

        The REST dialects find their tasks by what was asked (stablediffusionapi's
        load_model_status by model id) after a restart has emptied their memory.
        """
        row = self.db.connect().execute(
            "SELECT task_uuid FROM tasks WHERE team=? AND task_type=? AND json_extract(request, ?)=? "
            "ORDER BY created_at DESC LIMIT 1",
            (team, task_type, f"$.{field}", value),
        ).fetchone()
        return None if row is None else str(row[0])

    def mark_interrupted(self) -> int:
        """Start-up: tasks left ``processing`` by a crash become failed. Returns how many."""
        conn = self.db.connect()
        rows = conn.execute("SELECT team, task_uuid, task_type FROM tasks WHERE status='processing'").fetchall()
        now = time.time()
        conn.execute("BEGIN")
        for team, task_uuid, task_type in rows:
            error = {"code": ErrorCode.TASK_INTERRUPTED, "message": INTERRUPTED_MESSAGE, "taskType": task_type, "taskUUID": task_uuid}
            conn.execute(
                "UPDATE tasks SET status='error', errors=?, finished_at=? WHERE team=? AND task_uuid=?",
                (json.dumps([error]), now, team, task_uuid),
            )
        conn.execute("COMMIT")
        return len(rows)
