"""What a dialect is and what its handlers receive: the types shared by the router and every dialect.

A leaf of the dialects package (the router imports the dialects it serves,
and every dialect imports these types, so they cannot live in the router).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from protocol.frames import lone_surrogate_path
from server.dialects.errors import DialectError
from server.gateway import RequestContext
from server.http import Response


@dataclass(frozen=True)
class DialectRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    ctx: RequestContext
    path_arg: str | None = None
    """The last path segment when the route is ``<route>/<arg>`` (e.g. ``fine_tune_status/<id>``)."""

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; raises :class:`DialectError` otherwise."""
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise DialectError("invalidFrame", "the request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise DialectError("invalidFrame", "the request body must be a JSON object")
        path = lone_surrogate_path(value)
        if path is not None:  # such text cannot be encoded again: refused here, as decode_frame refuses it
            raise DialectError("invalidParameter", f"`{path or 'body'}` holds an unpaired surrogate escape", parameter=path or None)
        return value

    def bearer(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


Handler = Callable[[DialectRequest], Awaitable[Response]]


class Dialect(Protocol):
    name: str
    prefix: str
    """Every path under it belongs to this dialect (unknown ones get its 404)."""
    routes: dict[tuple[str, str], Handler]
    """``(method, path) → handler``."""

    def render_error(self, error: DialectError) -> Response: ...
