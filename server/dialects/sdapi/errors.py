"""stablediffusionapi / ModelsLab error shape: ``{"status": "error", "message": ...}``.

Those APIs answer refusals with HTTP 200 and ``status: "error"``, so clients
read ``status``; wisp does the same (the body is the contract).  The native
code is added as ``code`` and the offending field, in the dialect's names, as
``parameter`` — extra keys those clients ignore.
"""

from __future__ import annotations

from typing import Any

from server.dialects.errors import DialectError
from server.http import Response, json_response


def render_error(error: DialectError) -> Response:
    body: dict[str, Any] = {"status": "error", "message": error.message, "code": error.code}
    if error.parameter:
        body["parameter"] = error.parameter
    return json_response(200, body)
