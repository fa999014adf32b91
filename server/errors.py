"""The one table from exceptions to wire errors.

Engine errors carry their own code and parameter.  Anything else is an
internal error: it is logged with its traceback and the client sees only a
generic message, never the exception text.
"""

from __future__ import annotations

import logging

from engine.errors import EngineError
from protocol.errors import ErrorCode, WireError, wire_error

log = logging.getLogger("wisp.server")


def to_wire_error(exc: BaseException, task_type: str | None, task_uuid: str | None) -> WireError:
    if isinstance(exc, EngineError):
        return wire_error(
            exc.code, exc.message, task_type=task_type, task_uuid=task_uuid, parameter=exc.parameter, **exc.extra
        )
    log.error("task %s (%s) failed", task_uuid, task_type, exc_info=exc)
    return wire_error(
        ErrorCode.INTERNAL_ERROR,
        "the server failed while running this task; it has been logged",
        task_type=task_type,
        task_uuid=task_uuid,
    )
