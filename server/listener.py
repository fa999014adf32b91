"""One port, two protocols: WebSocket upgrades go to websockets, the rest to HTTP.

websockets only parses ``GET`` handshakes, yet ``POST /v1`` and file routes
must share its port.  :class:`SniffingConnection` (a ``create_connection``
factory, websockets' documented hook) reads the request head first: an
``Upgrade: websocket`` request continues as a normal websockets connection;
anything else is handed, transport and bytes, to :class:`~server.http.HTTPProtocol`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection

MAX_HEAD_BYTES = 16 * 1024


class SniffingConnection(ServerConnection):
    def __init__(self, *args: Any, http_factory: Callable[[], asyncio.Protocol], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http_factory = http_factory
        self._head = bytearray()
        self._decided = False
        self._raw_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw_transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._decided:
            super().data_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        transport = self._raw_transport
        assert transport is not None
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                transport.close()
                self._decided = True
                self._raw_transport = None
            return
        self._decided = True
        buffered = bytes(self._head)
        self._head = bytearray()
        if _is_upgrade(buffered[:end]):
            super().connection_made(transport)
            super().data_received(buffered)
        else:
            protocol = self._http_factory()
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            protocol.data_received(buffered)

    def eof_received(self) -> bool | None:
        if not self._decided:
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._decided or self._raw_transport is None:
            return
        if hasattr(self, "transport"):
            super().connection_lost(exc)


def _is_upgrade(head: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False
