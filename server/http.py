"""Plain HTTP on the WebSocket port, parsed with h11.

Routes: ``POST /v1`` (the task array, ``Authorization: Bearer KEY``),
``GET /images/<file>`` (results and uploads), ``GET /healthz``.  Each request
is answered in full before the next is read (keep-alive, no pipelining).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

import h11

log = logging.getLogger("wisp.http")

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
Handler = Callable[[h11.Request, bytes], Awaitable[Response]]


def json_response(status: int, body: Any) -> Response:
    return status, [(b"content-type", b"application/json")], json.dumps(body).encode()


class HTTPProtocol(asyncio.Protocol):
    """asyncio protocol serving one HTTP/1.1 connection with a single handler."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self.transport: asyncio.Transport | None = None
        self._body = bytearray()
        self._request: h11.Request | None = None
        self._busy = False
        self._too_big = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _pump(self) -> None:
        while not self._busy and self.transport is not None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_error(exc.error_status_hint, "bad request")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._request, self._body, self._too_big = event, bytearray(), False
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self.max_body:
                    self._too_big = True
                else:
                    self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                request, body = self._request, bytes(self._body)
                self._busy = True
                asyncio.get_running_loop().create_task(self._respond(request, body))
                return
            elif isinstance(event, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    async def _respond(self, request: h11.Request | None, body: bytes) -> None:
        try:
            if self._too_big:
                response = json_response(413, {"errors": [{"code": "payloadTooLarge", "message": f"request body over {self.max_body} bytes"}]})
            else:
                assert request is not None
                response = await self.handler(request, body)
        except Exception:
            log.exception("HTTP handler failed")
            response = json_response(500, {"errors": [{"code": "internalError", "message": "internal error"}]})
        status, headers, payload = response
        if request is not None and request.method == b"HEAD":
            # Same headers as GET (content-length included), no body.
            headers = headers + [(b"content-length", str(len(payload)).encode())]
            payload = b""
        self._write(status, headers, payload)
        self._busy = False
        if self.transport is not None and self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self._pump()

    def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.transport is None:
            return
        try:
            if not any(name == b"content-length" for name, _ in headers):
                headers = headers + [(b"content-length", str(len(body)).encode())]
            headers = headers + [(b"server", b"wisp")]
            out = self.conn.send(h11.Response(status_code=status, headers=headers))
            out += self.conn.send(h11.Data(data=body)) if body else b""
            out += self.conn.send(h11.EndOfMessage())
            self.transport.write(out)
        except h11.LocalProtocolError:
            self.transport.close()

    def _send_error(self, status: int, message: str) -> None:
        if self.transport is None:
            return
        try:
            self._write(*json_response(status, {"errors": [{"code": "badRequest", "message": message}]}))
        finally:
            if self.transport is not None:
                self.transport.close()
