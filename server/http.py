"""Plain HTTP on the WebSocket port, parsed with h11.

Routes: ``POST /v1`` (the task array, ``Authorization: Bearer KEY``),
``GET /images/<file>`` (results and uploads), ``GET /healthz``.  Each request
is answered in full before the next is read (keep-alive, no pipelining).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Protocol

import h11

from protocol.errors import ErrorCode

log = logging.getLogger("wisp.http")

Response = tuple[int, list[tuple[bytes, bytes]], bytes]


class BodySink(Protocol):
    """Where a streamed request body goes (large uploads never sit in memory)."""

    def write(self, data: bytes) -> bool:
        """Take a chunk; False means the body is over its limit."""

    def abort(self) -> None: ...


Handler = Callable[[h11.Request, bytes, "BodySink | None", str], Awaitable[Response]]
SinkFactory = Callable[[h11.Request, str], "BodySink | None"]


def json_response(status: int, body: Any) -> Response:
    return status, [(b"content-type", b"application/json")], json.dumps(body).encode()


def error_response(status: int, code: str, message: str) -> Response:
    """The one shape of an HTTP error body: ``{"errors": [{"code", "message"}]}``, ``code`` an :class:`ErrorCode`."""
    return json_response(status, {"errors": [{"code": code, "message": message}]})


class HTTPProtocol(asyncio.Protocol):
    """asyncio protocol serving one HTTP/1.1 connection with a single handler."""

    def __init__(
        self, handler: Handler, max_body: int, sink_factory: SinkFactory | None = None,
        head_timeout_s: float = 10.0, idle_timeout_s: float = 30.0,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.sink_factory = sink_factory
        self.head_timeout_s = head_timeout_s
        """A request head must arrive whole this long after its first byte."""
        self.idle_timeout_s = idle_timeout_s
        """Silence allowed between requests (keep-alive) and within a body; then the connection is closed."""
        self.lease: Any = None
        """The connection's place in the server's counts (:class:`server.limits.Lease`), released when it ends."""
        self._last_data = 0.0
        self._head_started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sink: BodySink | None = None
        self.peer = ""
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self.transport: asyncio.Transport | None = None
        self._body = bytearray()
        self._request: h11.Request | None = None
        self._busy = False
        self._too_big = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        loop = asyncio.get_running_loop()
        self._last_data = loop.time()
        self._timer = loop.call_later(min(self.head_timeout_s, self.idle_timeout_s), self._check_deadlines)

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self._last_data = now
        if self._head_started is None and self.conn.their_state is h11.IDLE:
            self._head_started = now
        self.conn.receive_data(data)
        self._pump()

    def _check_deadlines(self) -> None:
        """Close a connection whose peer is too slow: a head not whole in time, a silent body, an idle keep-alive.

        A request being answered is never timed out here: that is the
        server's own work, bounded elsewhere.
        """
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self.idle_timeout_s
        if not self._busy:
            if self._head_started is not None and self.conn.their_state is h11.IDLE:
                left = self._head_started + self.head_timeout_s - now
                if left <= 0:
                    self._send_error(408, "the request head did not arrive in time")
                    return
                wait = left
            else:
                left = self._last_data + self.idle_timeout_s - now
                if left <= 0:
                    if self.conn.their_state is h11.SEND_BODY:
                        self._send_error(408, "the request body stalled")
                    else:
                        transport.close()  # an idle keep-alive connection: nothing to answer
                    return
                wait = left
        self._timer = loop.call_later(max(0.05, wait), self._check_deadlines)

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

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
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    # RFC 9112 §6.1: the two framings disagree, a sign of request smuggling; refuse and close.
                    self._send_error(400, "a request may not carry both Content-Length and Transfer-Encoding")
                    return
                self._head_started = None
                self._request, self._body, self._too_big = event, bytearray(), False
                self._sink = self.sink_factory(event, self.peer) if self.sink_factory is not None else None
            elif isinstance(event, h11.Data):
                if self._sink is not None:
                    if not self._too_big and not self._sink.write(event.data):
                        self._too_big = True
                        self._sink.abort()
                elif len(self._body) + len(event.data) > self.max_body:
                    self._too_big = True
                else:
                    self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                request, body, sink = self._request, bytes(self._body), self._sink
                self._sink = None
                self._busy = True
                asyncio.get_running_loop().create_task(self._respond(request, body, sink))
                return
            elif isinstance(event, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    async def _respond(self, request: h11.Request | None, body: bytes, sink: BodySink | None) -> None:
        try:
            failure = getattr(sink, "failure", None)
            if self._too_big and failure:
                response = error_response(507, ErrorCode.INSUFFICIENT_STORAGE, failure)
            elif self._too_big:
                response = error_response(413, ErrorCode.PAYLOAD_TOO_LARGE, "request body over the size limit")
            else:
                assert request is not None
                response = await self.handler(request, body, sink, self.peer)
        except Exception:
            log.exception("HTTP handler failed")
            response = error_response(500, ErrorCode.INTERNAL_ERROR, "internal error")
        status, headers, payload = response
        if request is not None and request.method == b"HEAD":
            # Same headers as GET (content-length included), no body.
            headers = headers + [(b"content-length", str(len(payload)).encode())]
            payload = b""
        self._write(status, headers, payload)
        self._busy = False
        self._last_data = asyncio.get_running_loop().time()  # keep-alive silence counts from the answer
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
            self._write(*error_response(status, ErrorCode.BAD_REQUEST, message))
        finally:
            if self.transport is not None:
                self.transport.close()
