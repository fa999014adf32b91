"""One WebSocket: read frames, hand them to the gateway, write replies.

Reading is sequential, so a client that stops reading our replies stops
being read too (backpressure through websockets' write buffer).  A socket
silent for ``idle_timeout_s`` is closed, as Runware does after 120 s.

Slow consumers.  Results are emitted by the task that produced them, not by
the reader, so backpressure on reading alone does not bound what waits for a
socket: websockets writes every ``send`` into the transport at once and only
then waits for it to drain, so N finished tasks behind a client that stopped
reading would sit in an ever-growing write buffer.  Here one frame at a time
is written (a per-socket lock), frames waiting for the lock are counted, and
the socket is given up — aborted, its session left to the resume buffer,
every result still in the task store for getResponse — when what waits
(transport buffer + queued frames) stays over ``max_outgoing_bytes`` for
``send_stall_s`` (emits wait for room meanwhile: that is the backpressure a
reading client sees), or when one write makes no progress that long.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from server.gateway import Gateway, RequestContext
from server.sessions import Session

log = logging.getLogger("wisp.server")

DEFAULT_MAX_OUTGOING_BYTES = 8 * 1024 * 1024
DEFAULT_SEND_STALL_S = 30.0
PRE_AUTH_MAX_MESSAGE_BYTES = 1024 * 1024
"""What websockets will buffer of one message before authentication (the gateway answers frames over 64 KiB with one error)."""


def request_context(
    host_header: str | None, config_host: str, port: int, public_url: str | None, scheme: str = "http", peer: str = ""
) -> RequestContext:
    hosts = {f"{config_host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}
    if host_header:
        hosts.add(host_header)
    base = public_url.rstrip("/") if public_url else f"{scheme}://{host_header or f'{config_host}:{port}'}"
    return RequestContext(base_url=base, own_hosts=frozenset(hosts), peer=peer)


class SocketConn:
    """The gateway's view of one socket; also the session's sink while bound."""

    def __init__(self, ws: ServerConnection, gateway: Gateway, ctx: RequestContext) -> None:
        self.ws = ws
        self.gateway = gateway
        self.ctx = ctx
        self.session: Session | None = None
        self.closed = False
        self.last_seen = 0.0
        config = gateway.config
        self.max_outgoing_bytes: int = getattr(config, "max_outgoing_bytes", DEFAULT_MAX_OUTGOING_BYTES)
        self.send_stall_s: float = getattr(config, "send_stall_s", DEFAULT_SEND_STALL_S)
        self._send_lock = asyncio.Lock()
        self._queued = 0  # bytes of frames waiting for the send lock
        self.gave_up: str | None = None
        """Why the socket was given up as a slow consumer (None while it is not)."""
        self._direct = hasattr(ws, "send_in_progress") and hasattr(ws, "send_data")
        """Whether this websockets has what :meth:`_write_now` uses (16 and later; else every frame takes ``ws.send``)."""

    def outgoing_bytes(self) -> int:
        """What waits for this client: the transport's write buffer and the frames queued for it."""
        transport = self.ws.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self._queued

    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        """Send ``frames`` in order; returns those not sent (socket closed or given up as a slow consumer)."""
        for index, frame in enumerate(frames):
            if not await self._send_one(frame):
                return frames[index:]
        return []

    async def _send_one(self, frame: bytes) -> bool:
        """Write one frame once there is room for it; False if the socket is closed or was given up."""
        if self.closed:
            return False
        transport = self.ws.transport
        if (not self._send_lock.locked() and transport is not None
                and transport.get_write_buffer_size() + len(frame) <= transport.get_write_buffer_limits()[1]):
            # Nothing waits and the frame fits under the high-water mark: websockets writes it without
            # yielding (it only waits when the buffer is over that mark), so order holds without the lock
            # and nothing can stall (a pong, most replies): no lock, timer or room check to pay for.
            if self._direct and self.ws.send_in_progress is None and self.ws.protocol.state is State.OPEN:
                return self._write_now(frame)
            try:
                await self.ws.send(frame, text=True)
            except ConnectionClosed:
                self.closed = True
                return False
            return True
        if not await self._room_for(len(frame)):
            if not self.closed:
                self._give_up(f"more than {self.max_outgoing_bytes} bytes have waited {self.send_stall_s:g} s "
                              "for a client that does not read")
            return False
        self._queued += len(frame)
        try:
            await self._send_lock.acquire()
        finally:
            self._queued -= len(frame)
        try:
            if self.closed:
                return False
            # ws.send writes the frame, then waits for the buffer to drain below its limit.
            await asyncio.wait_for(self.ws.send(frame, text=True), self.send_stall_s)
        except TimeoutError:
            self._give_up(f"a write made no progress for {self.send_stall_s:g} s")
            return False
        except ConnectionClosed:
            self.closed = True
            return False
        finally:
            self._send_lock.release()
        return True

    def _write_now(self, frame: bytes) -> bool:
        """What ``ws.send(frame, text=True)`` does when the connection is open, no fragmented message is being sent
        and the frame fits under the write buffer's high-water mark: frame it with websockets' own protocol object
        and hand the bytes to the transport.  ``send`` wraps the same two calls in an async context manager whose
        other branches (closing, draining a full buffer) cannot run then; skipping it saves ~3 µs of a reply that
        costs ~15 (bench/RESULTS.md, "Small tasks").  A write that fails ends the connection as ``send`` would."""
        try:
            self.ws.protocol.send_text(frame)
            self.ws.send_data()
        except Exception:
            log.debug("write failed; closing the socket", exc_info=True)
            self.closed = True
            if self.ws.transport is not None:
                self.ws.transport.abort()
            return False
        return True

    async def _room_for(self, size: int) -> bool:
        """Wait until ``size`` more bytes fit under ``max_outgoing_bytes``; False after ``send_stall_s`` without room.

        No await separates the last check from the caller's ``_queued +=``,
        so however many emits wait here, the bound holds.  A socket with
        nothing in flight always takes one frame, whatever its size.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_stall_s
        while not self.closed:
            if not self._send_lock.locked() or self.outgoing_bytes() + size <= self.max_outgoing_bytes:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(0.02, remaining))
        return False

    def _give_up(self, why: str) -> None:
        """Drop a slow consumer: abort the socket (a close frame would queue behind unread data).

        The reader then ends and detaches the session: what could not be
        sent goes to its resume buffer, and every result stays in the task
        store for getResponse.
        """
        if self.closed:
            return
        self.closed = True
        self.gave_up = why
        session = self.session.uuid if self.session is not None else "-"
        log.warning("slow consumer: %s; closing the socket (session %s kept for resume/getResponse)", why, session)
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def reply(self, frames: Iterable[bytes]) -> None:
        """Immediate replies, taken (and so encoded) one frame at a time as the client makes room.

        What cannot be sent is dropped: replies are not kept for a resume
        (the results they carry stay in the task store).
        """
        for frame in frames:
            if not await self._send_one(frame):
                return

    def close_for(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (its session is already gone: nothing is kept for a resume)."""
        if not self.closed:
            self.closed = True
            self.session = None
            asyncio.ensure_future(self.ws.close(code, reason))

    def bind(self, session: Session) -> list[bytes]:
        if self.session is not None and self.session is not session:
            self.session.detach(self)
        if self.session is None:
            # Authenticated: frames may now be as large as the server allows, and the
            # connection no longer counts against its address's unauthenticated allowance.
            self.ws.protocol.max_message_size = self.gateway.config.hard_frame_bytes
            lease = getattr(self.ws, "lease", None)
            if lease is not None:
                lease.authenticated()
        self.session = session
        return session.attach(self)

    async def _close_when_idle(self, idle: float, auth_deadline: float) -> None:
        """Close the socket once no frame has arrived for ``idle`` seconds, or unauthenticated at ``auth_deadline``.

        One timer per socket that wakes only when a deadline may have
        passed; re-arming a timeout on every frame cost as much as handling
        a ping (measured in bench/protocol.py).  Frames (pings included) do
        not move the authentication deadline: a socket that never proves a
        key is closed whatever it sends.
        """
        loop = asyncio.get_running_loop()
        while not self.closed:
            now = loop.time()
            if self.session is None and now >= auth_deadline:
                await self.ws.close(1008, "authenticate within "
                                    f"{self.gateway.config.auth_timeout_s:g} s of connecting")
                return
            remaining = self.last_seen + idle - now
            if remaining <= 0:
                await self.ws.close(1000, "idle timeout")
                return
            if self.session is None:
                remaining = min(remaining, auth_deadline - now)
            await asyncio.sleep(remaining)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_seen = loop.time()
        # Until it authenticates a peer may send one small frame's worth (an authentication task);
        # larger frames close the socket (1009) before they are buffered.
        self.ws.protocol.max_message_size = PRE_AUTH_MAX_MESSAGE_BYTES
        config = self.gateway.config
        watchdog = loop.create_task(self._close_when_idle(config.idle_timeout_s, self.last_seen + config.auth_timeout_s))
        try:
            async for message in _frames(self.ws):
                self.last_seen = loop.time()
                await self.gateway.handle_frame(self, message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            watchdog.cancel()
            if self.session is not None:
                self.session.detach(self)


async def _frames(ws: ServerConnection):  # type: ignore[no-untyped-def]
    """Whole messages as bytes (text frames too: msgspec decodes UTF-8 bytes directly)."""
    while True:
        yield await ws.recv(decode=False)
