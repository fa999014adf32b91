"""Which dialect path goes to which handler; the one entry point ``server/app.py`` calls.

Each dialect is a :class:`~server.dialects.request.Dialect`: a path prefix,
a route table and a renderer for its own error shape.  The router owns the parts every route
shares: matching, 404/405 in the dialect's shape, and turning a raised
:class:`DialectError` (or an unexpected exception, logged, never shown)
into that dialect's error response.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from server.dialects.bridge import NativeBridge
from server.dialects.errors import DialectError
from server.dialects.novita import NovitaDialect
from server.dialects.request import Dialect, DialectRequest, Handler
from server.dialects.sdapi import SDAPIDialect
from server.gateway import Gateway, RequestContext
from server.http import Response

__all__ = ["Dialect", "DialectRequest", "DialectRouter", "Handler"]

log = logging.getLogger("wisp.dialects")


class DialectRouter:
    def __init__(self, gateway: Gateway, dialects: list[Dialect] | None = None) -> None:
        self.bridge = NativeBridge(gateway)
        if dialects is None:
            dialects = [NovitaDialect(self.bridge), SDAPIDialect(self.bridge)]
        self.dialects = dialects

    def owns(self, path: str) -> bool:
        return any(path.startswith(d.prefix) for d in self.dialects)

    async def handle(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, ctx: RequestContext) -> Response:
        """The response to a request on a path the router :meth:`owns`."""
        dialect = next(d for d in self.dialects if path.startswith(d.prefix))
        route = path.rstrip("/") or path
        handler = dialect.routes.get((method, route))
        path_arg = None
        parent, _, last = route.rpartition("/")
        if handler is None and last and (method, parent) in getattr(dialect, "param_routes", {}):
            handler, path_arg, route = dialect.param_routes[(method, parent)], last, parent  # type: ignore[attr-defined]
        try:
            if handler is None:
                if any(p == route for _, p in dialect.routes):
                    allowed = sorted(m for m, p in dialect.routes if p == route)
                    raise DialectError("methodNotAllowed", f"{route} accepts {', '.join(allowed)}")
                raise DialectError("notFound", f"wisp's {dialect.name} dialect has no route {route[:100]}")
            request = DialectRequest(method, route, {k: v[-1] for k, v in parse_qs(query).items()}, headers, body, ctx, path_arg)
            return await handler(request)
        except DialectError as error:
            return dialect.render_error(error)
        except Exception:
            log.exception("%s dialect: %s %s failed", dialect.name, method, route)
            return dialect.render_error(DialectError("internalError", "the server failed on this request; it has been logged"))
