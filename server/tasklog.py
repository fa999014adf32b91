"""One log line per finished task, and the log format (plain or JSON) the operator asked for.

``wisp.tasks`` at INFO (modelSearch answered from memory: DEBUG): time, taskType, taskUUID, team, model (AIR), outcome or error code, ms queued,
ms running, images and bytes sent.  Never a prompt, a key or an image: what a request said stays out of
the log.  ``WISP_LOG_LEVEL`` (default INFO) and ``WISP_LOG_FORMAT=json`` (one JSON object per line, the
fields as keys) are read by :func:`configure`.

A task line is logged on the event loop, once per task, so what it costs the
loop is budgeted (issue 16: at most 0.1 ms; ``bench/observability.py``).
The loop only queues the finished task; in a server, the thread that commits
the database's write-behind queue (the journal's outcome of the same task)
observes its metrics and writes its line after that commit (see
:func:`ride_on`), and the record skips what wisp's formats never show (the
caller's frame, thread and process names), as the logging HOWTO's
"Optimization" section suggests.

Why that thread: per task the loop only appends a tuple to a deque (no
wake-up while the thread is awake, and the journal's outcome has just woken
it).  Doing the work on the loop, or waking a thread per task, cost the loop
~0.1 ms per task in a busy server (bench/observability.py).  A thread of the
task log's own, gathering for 0.1 s, was a second thread woken per task:
~0.1–0.2 ms of CPU per imageInference that ran in the middle of the next
request's denoising, on either core (bench/inference.py; RESULTS.md,
2026-12-05).  A line is at most the write-behind interval (``WISP_JOURNAL_INTERVAL``, 50 ms) late; its
time is the task's own end.  ``/metrics`` drains first, so a scrape sees
every task that has ended.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from server import metrics

if TYPE_CHECKING:
    from engine.registry.writer import WriteBehind

log = logging.getLogger("wisp.tasks")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and a task line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        fields = getattr(record, "task", None)
        if isinstance(fields, dict):
            body.update(fields)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


_pending: deque[tuple[Any, ...]] = deque()
_writer: "WriteBehind | None" = None
"""The thread task lines ride on (:func:`ride_on`); None: each task is counted and logged where it ends."""
_answered: dict[str, int] = {}
"""Queries answered from memory, by taskType, while no line is wanted for them (written on the event loop only)."""
_counted: dict[str, int] = {}
"""Of :data:`_answered`, what the metrics have been given (written under :data:`_count_lock` only)."""
_count_lock = threading.Lock()


def configure(stream: Any = None) -> None:
    """The server's logging, from ``WISP_LOG_LEVEL`` and ``WISP_LOG_FORMAT`` (``text`` or ``json``), to stderr (or ``stream``)."""
    flush()  # configured again (a benchmark switching formats): what is pending is written the old way first
    handler = logging.StreamHandler(stream)
    if os.environ.get("WISP_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Neither format shows the caller's file and line, thread or process: don't pay to find them per record.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=os.environ.get("WISP_LOG_LEVEL", "INFO").upper(), handlers=[handler], force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    atexit.register(flush)


def ride_on(writer: "WriteBehind") -> None:
    """From now on, task lines and task metrics are written by ``writer``'s thread after its commits.

    ``wisp serve`` gives the database's write-behind queue, which the
    journal's outcome of every task has just woken.  Without this (in-process
    use), each task is counted and logged where it ends.
    """
    global _writer
    if _writer is not None and _writer is not writer:
        _writer.unshare(drain)
    _writer = writer
    writer.share(drain, _waiting)


def _waiting() -> bool:
    return bool(_pending)


def flush() -> None:
    """Write every pending task line here and stop handing them to a thread (before the process exits, ``os._exit`` included)."""
    global _writer
    if _writer is not None:
        writer, _writer = _writer, None
        writer.unshare(drain)
    drain()


def drain() -> None:
    """Observe and log every finished task not yet handled (the write-behind thread; ``/metrics`` before a scrape)."""
    _count_answered()
    while True:
        try:
            item = _pending.popleft()
        except IndexError:
            return
        _record(*item)


_LINE = ("%(taskType)s %(taskUUID)s team=%(team)s model=%(model)s %(outcome)s queued=%(queuedMs)sms "
         "running=%(runningMs)sms images=%(images)s bytes=%(bytes)s")


def _record(task_type: str, task_uuid: str, team: str, model: str | None, outcome: str, queued_s: float, running_s: float,
            images: int, sent_bytes: int, level: int, ran: bool, ended: float) -> None:
    metrics.task_done(task_type, outcome, queued_s, running_s, images, sent_bytes, ran)
    if not log.isEnabledFor(level):
        return
    fields = {"taskType": task_type, "taskUUID": task_uuid, "team": team, "model": model or "-", "outcome": outcome,
              "queuedMs": round(queued_s * 1000, 1), "runningMs": round(running_s * 1000, 1), "images": images,
              "bytes": sent_bytes}
    record = log.makeRecord(log.name, level, "(task)", 0, _LINE, (fields,), None, extra={"task": fields})
    record.created = ended
    record.msecs = int((ended - int(ended)) * 1000)
    log.handle(record)


def query_answered(task_type: str, task_uuid: str, team: str, created_at: float) -> None:
    """Count one query answered from memory (a modelSearch); its DEBUG line only when DEBUG is on.

    Such a query costs the loop ~15 µs in all, so even queueing it for the
    writer (a tuple, two clocks) and counting it there was a share worth
    saving: with DEBUG off it is one dict increment, and the metrics take the
    sum at the writer's next pass (or a scrape's).
    """
    if log.isEnabledFor(logging.DEBUG):
        task_finished(task_type, task_uuid, team, None, "success", created_at, created_at, level=logging.DEBUG, ran=False)
        return
    _answered[task_type] = _answered.get(task_type, 0) + 1
    if _writer is None:
        _count_answered()


def _count_answered() -> None:
    """Give the metrics what :func:`query_answered` counted since the last time."""
    with _count_lock:
        for task_type, count in list(_answered.items()):
            added = count - _counted.get(task_type, 0)
            if added:
                metrics.tasks_counted(task_type, "success", added)
                _counted[task_type] = count


def task_finished(
    task_type: str, task_uuid: str, team: str, model: str | None, outcome: str, created_at: float,
    started_at: float | None, images: int = 0, sent_bytes: int = 0, level: int = logging.INFO, ran: bool = True,
) -> None:
    """Count and log one finished task (``outcome``: ``success`` or the error code) at ``level``.

    Work tasks log at INFO.  A modelSearch answered from memory logs at DEBUG:
    it costs ~30 µs, and a log line as much again (measured), so at INFO a
    search-heavy client would double the server's CPU for them.  With the
    writer running (``wisp serve``) this only queues the task; otherwise
    (in-process use) it is counted and logged at once.
    """
    now = time.monotonic()
    begun = started_at if started_at is not None else now
    item = (task_type, task_uuid, team, model, outcome, max(0.0, begun - created_at), now - begun, images, sent_bytes,
            level, ran, time.time())
    writer = _writer
    if writer is None:
        _record(*item)
    else:
        _pending.append(item)
        writer.nudge()
