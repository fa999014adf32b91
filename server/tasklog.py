"""One log line per finished task, and the log format (plain or JSON) the operator asked for.

``wisp.tasks`` at INFO (modelSearch answered from memory: DEBUG): time, taskType, taskUUID, team, model (AIR), outcome or error code, ms queued,
ms running, images and bytes sent.  Never a prompt, a key or an image: what a request said stays out of
the log.  ``WISP_LOG_LEVEL`` (default INFO) and ``WISP_LOG_FORMAT=json`` (one JSON object per line, the
fields as keys) are read by :func:`configure`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from server import metrics

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


def configure() -> None:
    """The server's logging, from ``WISP_LOG_LEVEL`` and ``WISP_LOG_FORMAT`` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    if os.environ.get("WISP_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("WISP_LOG_LEVEL", "INFO").upper(), handlers=[handler])
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def task_finished(
    task_type: str, task_uuid: str, team: str, model: str | None, outcome: str, created_at: float,
    started_at: float | None, images: int = 0, sent_bytes: int = 0, level: int = logging.INFO, ran: bool = True,
) -> None:
    """Log one finished task (``outcome``: ``success`` or the error code) at ``level``.

    Work tasks log at INFO.  A modelSearch answered from memory logs at DEBUG:
    it costs ~30 µs, and a log line as much again (measured), so at INFO a
    search-heavy client would double the server's CPU for them.
    """
    now = time.monotonic()
    begun = started_at if started_at is not None else now
    metrics.task_done(task_type, outcome, max(0.0, begun - created_at), now - begun, images, sent_bytes, ran)
    if not log.isEnabledFor(level):
        return
    fields = {"taskType": task_type, "taskUUID": task_uuid, "team": team, "model": model or "-", "outcome": outcome,
              "queuedMs": round((begun - created_at) * 1000, 1), "runningMs": round((now - begun) * 1000, 1),
              "images": images, "bytes": sent_bytes}
    log.log(level, "%(taskType)s %(taskUUID)s team=%(team)s model=%(model)s %(outcome)s queued=%(queuedMs)sms "
            "running=%(runningMs)sms images=%(images)s bytes=%(bytes)s", fields, extra={"task": fields})
