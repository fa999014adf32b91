"""The task journal: every accepted task in SQLite, so a restart loses none.

Writes never run on the event loop: the loop queues each statement to the
database's write-behind thread (engine.registry.writer), which commits what
is queued every 50 ms without being woken per statement, so a short task's
claim and outcome share one commit (two wake-ups of a journal thread per
task were ~0.1 ms of the loop's CPU and ~0.2 ms of the writer's per
imageInference).  At start-up, tasks still marked ``processing`` were
interrupted by a crash or kill; they are marked failed (``taskInterrupted``)
so ``getResponse`` answers them instead of leaving them processing forever.
A task claimed in the last 50 ms (``WISP_JOURNAL_INTERVAL``) before a kill -9 may not have reached the
journal; it is then unknown (``taskNotFound``), never half-known.  A
graceful stop (:meth:`TaskJournal.close`) writes everything queued.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Sequence

import msgspec

from engine.registry.db import Database
from engine.registry.writer import WriteBehind
from protocol.errors import ErrorCode

log = logging.getLogger("wisp.journal")

_VACUUM = "PRAGMA incremental_vacuum"
INTERRUPTED_MESSAGE = "the server stopped while this task was running; send it again with a new taskUUID"


_ENCODER = msgspec.json.Encoder()


def _json(value: Any) -> str:
    """JSON text for a column, on the loop: msgspec's encoder (a wire struct as is, ~5× json.dumps' speed)."""
    try:
        return _ENCODER.encode(value).decode()
    except (TypeError, ValueError, UnicodeError):  # what only the standard library writes (a lone surrogate: as an escape)
        return json.dumps(msgspec.to_builtins(value))


class TaskJournal:
    def __init__(self, db: Database, writer: WriteBehind | None = None) -> None:
        """``writer``: where statements queue (default: the database's own write-behind, shared with the image owners)."""
        self.db = db
        self.writer = writer or db.writer

    # ---- writes (any thread; applied in order by the writer) ----------------

    def claimed(self, team: str, task_uuid: str, task_type: str, request: Any) -> None:
        self.writer.put(
            "INSERT OR REPLACE INTO tasks(team, task_uuid, task_type, status, request, created_at) VALUES (?,?,?,?,?,?)",
            (team, task_uuid.lower(), task_type, "processing", _json(request), time.time()),
        )

    def finished(self, team: str, task_uuid: str, status: str, items: Sequence[Any], errors: Sequence[Any]) -> None:
        """``items`` and ``errors``: plain values or wire structs (encoded as the wire encodes them)."""
        self.writer.put(
            "UPDATE tasks SET status=?, items=?, errors=?, finished_at=? WHERE team=? AND task_uuid=?",
            (status, _json(items), _json(errors), time.time(), team, task_uuid.lower()),
        )

    def released(self, team: str, task_uuid: str) -> None:
        self.writer.put("DELETE FROM tasks WHERE team=? AND task_uuid=?", (team, task_uuid.lower()))

    def prune(self, retention_s: float) -> None:
        """Drop what retention expired, and give the freed pages back to the file system (the db is auto_vacuum=INCREMENTAL)."""
        self.writer.put("DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?", (time.time() - retention_s,))
        self.writer.put(_VACUUM, script=True)

    def close(self) -> None:
        """Write what is queued and stop the writer (the server's last step)."""
        self.writer.close()

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
