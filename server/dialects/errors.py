"""The one exception dialects raise, and how native error codes become HTTP statuses.

Handlers raise :class:`DialectError`; the router catches it and hands it to
the dialect's own renderer (Novita's ``{code, reason, message, metadata}``,
stablediffusionapi's ``{"status":"error","message"}``).  A native error
answered by the gateway (a ``WireError`` as a dict) becomes a DialectError
through :func:`from_native`, keeping its code, message and parameter, so a
client of a dialect reads the same words a native client would.
"""

from __future__ import annotations

from typing import Any, Callable

_STATUS_BY_CODE = {
    "missingApiKey": 401,
    "invalidApiKey": 401,
    "authRateLimited": 429,
    "quotaExceeded": 403,
    "sourceNotAllowed": 403,
    "taskNotFound": 404,
    "conflictTaskUUID": 409,
    "tooManyTasksInFlight": 429,
    "queueFull": 503,
    "taskInterrupted": 503,
    "internalError": 500,
    "notFound": 404,
    "methodNotAllowed": 405,
}


class DialectError(Exception):
    """A refusal, in native vocabulary: ``code`` (camelCase, as on the wire), message, parameter."""

    def __init__(self, code: str, message: str, *, parameter: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter
        self.status = status if status is not None else _STATUS_BY_CODE.get(code, 400)


def from_native(error: dict[str, Any], rename: Callable[[str], str] | None = None) -> DialectError:
    """A native error dict as a :class:`DialectError`; ``rename`` maps a native field path to the dialect's."""
    parameter = error.get("parameter")
    message = str(error.get("message", ""))
    if parameter and rename is not None:
        native, parameter = str(parameter), rename(str(parameter))
        message = message.replace(f"`{native}`", f"`{parameter}`")
    return DialectError(str(error.get("code", "internalError")), message, parameter=parameter)
