"""Novita's error shape: HTTP status + ``{"code", "reason", "message", "metadata"}``.

``code`` repeats the HTTP status and ``reason`` is an UPPER_SNAKE word, as
Novita answers (e.g. 401 ``INVALID_API_KEY``).  The native code is kept in
``metadata.wisp_code`` and the offending field, in Novita's names, in
``metadata.parameter``.
"""

from __future__ import annotations

import re

from server.dialects.errors import DialectError
from server.http import Response, json_response

_REASONS = {
    "missingApiKey": "INVALID_API_KEY",
    "invalidApiKey": "INVALID_API_KEY",
    "authRateLimited": "RATE_LIMIT_EXCEEDED",
    "tooManyTasksInFlight": "RATE_LIMIT_EXCEEDED",
    "queueFull": "SERVICE_BUSY",
    "invalidFrame": "INVALID_REQUEST_BODY",
    "invalidParameter": "INVALID_REQUEST_BODY",
    "missingParameter": "INVALID_REQUEST_BODY",
    "unknownParameter": "INVALID_REQUEST_BODY",
    "unsupportedParameter": "INVALID_REQUEST_BODY",
    "internalError": "INTERNAL_SERVER_ERROR",
}


def reason_for(code: str) -> str:
    return _REASONS.get(code) or re.sub(r"(?<!^)(?=[A-Z])", "_", code).upper()


def render_error(error: DialectError) -> Response:
    metadata = {"wisp_code": error.code}
    if error.parameter:
        metadata["parameter"] = error.parameter
    return json_response(error.status, {"code": error.status, "reason": reason_for(error.code), "message": error.message, "metadata": metadata})
