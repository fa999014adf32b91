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

from server.limits import ConnectionLimits, Lease, refusal_response

MAX_HEAD_BYTES = 16 * 1024


class SniffingConnection(ServerConnection):
    """A connection admitted by :class:`~server.limits.ConnectionLimits`, sniffed, then served.

    The request head must arrive whole within ``head_timeout_s`` of the
    connection opening (a peer that sends half a head and waits gets ``408``
    and is closed), so an idle stranger cannot hold a descriptor for long.
    """

    def __init__(
        self, *args: Any, http_factory: Callable[[], asyncio.Protocol], limits: ConnectionLimits | None = None,
        head_timeout_s: float = 10.0, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._http_factory = http_factory
        self._limits = limits
        self._head_timeout_s = head_timeout_s
        self._head = bytearray()
        self._decided = False
        self._raw_transport: asyncio.Transport | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self.lease: Lease | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits is not None:
            peername = transport.get_extra_info("peername")
            admitted = self._limits.admit(str(peername[0]) if peername else "")
            if isinstance(admitted, str):
                self._decided = True
                transport.write(refusal_response(admitted))  # type: ignore[attr-defined]
                transport.close()
                return
            self.lease = admitted
        self._raw_transport = transport  # type: ignore[assignment]
        self._head_timer = asyncio.get_running_loop().call_later(self._head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        transport = self._raw_transport
        if self._decided or transport is None:
            return
        self._decided = True
        self._raw_transport = None
        transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        transport.close()
        self._release()

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()

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
                self._cancel_timer()
                self._release()
            return
        self._decided = True
        self._cancel_timer()
        buffered = bytes(self._head)
        self._head = bytearray()
        if _is_upgrade(buffered[:end]):
            super().connection_made(transport)
            super().data_received(buffered)
        else:
            protocol = self._http_factory()
            if self.lease is not None:
                protocol.lease = self.lease  # type: ignore[attr-defined]  # the HTTP side releases it when it ends
                self.lease = None
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            protocol.data_received(buffered)

    def _cancel_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def eof_received(self) -> bool | None:
        if not self._decided:
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._release()
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
