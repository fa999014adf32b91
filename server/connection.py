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


def request_context(host_header: str | None, config_host: str, port: int, public_url: str | None, scheme: str = "http") -> RequestContext:
    hosts = {f"{config_host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}
    if host_header:
        hosts.add(host_header)
    base = public_url.rstrip("/") if public_url else f"{scheme}://{host_header or f'{config_host}:{port}'}"
    return RequestContext(base_url=base, own_hosts=frozenset(hosts))


class SocketConn:
    """The gateway's view of one socket; also the session's sink while bound."""

    def __init__(self, ws: ServerConnection, gateway: Gateway, ctx: RequestContext) -> None:
        self.ws = ws
        self.gateway = gateway
        self.ctx = ctx
        self.session: Session | None = None
        self.closed = False

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

    async def serve(self) -> None:
        idle = self.gateway.config.idle_timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        message = await self.ws.recv(decode=False)
                except TimeoutError:
                    await self.ws.close(1000, "idle timeout")
                    return
                await self.gateway.handle_frame(self, message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            if self.session is not None:
                self.session.detach(self)
