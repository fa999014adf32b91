"""One WebSocket: read frames, hand them to the gateway, write replies.

Reading is sequential, so a client that stops reading our replies stops
being read too (backpressure through websockets' write buffer).  A socket
silent for ``idle_timeout_s`` is closed, as Runware does after 120 s.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.gateway import Gateway, RequestContext
from server.sessions import Session

log = logging.getLogger("wisp.server")


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

    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        for index, frame in enumerate(frames):
            if self.closed:
                return frames[index:]
            try:
                await self.ws.send(frame, text=True)
            except ConnectionClosed:
                self.closed = True
                return frames[index:]
        return []

    async def reply(self, frames: list[bytes]) -> None:
        await self.send_frames(frames)

    def bind(self, session: Session) -> list[bytes]:
        if self.session is not None and self.session is not session:
            self.session.detach(self)
        self.session = session
        return session.attach(self)

    async def _close_when_idle(self, idle: float) -> None:
        """Close the socket once no frame has arrived for ``idle`` seconds.

        One timer per socket that wakes only when the deadline may have
        passed; re-arming a timeout on every frame cost as much as handling
        a ping (measured in bench/protocol.py).
        """
        loop = asyncio.get_running_loop()
        while not self.closed:
            remaining = self.last_seen + idle - loop.time()
            if remaining <= 0:
                await self.ws.close(1000, "idle timeout")
                return
            await asyncio.sleep(remaining)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_seen = loop.time()
        watchdog = loop.create_task(self._close_when_idle(self.gateway.config.idle_timeout_s))
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
