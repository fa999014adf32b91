"""How many connections the server holds, and for how long a stranger may hold one.

A connection costs a file descriptor from its first byte, long before it says
who it is.  So every connection is admitted here first: the whole server
holds at most ``max_connections`` (derived from the process's fd limit, which
:func:`raise_fd_limit` lifts to its hard ceiling), and one address holds at
most ``max_unauthenticated_per_address`` connections that have not (yet)
authenticated — HTTP connections count there for their whole life, a
WebSocket until its authentication succeeds.  IPv6 peers are counted by /64,
the block one host is usually handed.  A connection refused here is answered
``503`` with a ``tooManyConnections`` error and closed before its request is
read.

Time bounds live beside the protocols they bound (the request head in
:mod:`server.listener`, bodies and keep-alive in :mod:`server.http`, the
authentication deadline in :mod:`server.connection`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import resource

from protocol.errors import ErrorCode

log = logging.getLogger("wisp.server")

FD_RESERVE = 64
"""Descriptors kept back from connections: the database, model files, uploads in flight, worker pipes."""
DEFAULT_MAX_CONNECTIONS_CEILING = 16384


def raise_fd_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard one where allowed; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a container may forbid it: live with the soft limit
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(fd_limit: int) -> int:
    """Connections the fd limit allows, less :data:`FD_RESERVE` (at least 16, at most 16,384)."""
    return max(16, min(DEFAULT_MAX_CONNECTIONS_CEILING, fd_limit - FD_RESERVE))


def address_key(peer: str) -> str:
    """The unit one client is counted by: an IPv4 address, or an IPv6 /64 (IPv4-mapped ones as IPv4)."""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def refusal_response(message: str, retry_after_s: int = 5) -> bytes:
    """The whole HTTP answer to a connection refused before its request is read."""
    body = json.dumps({"errors": [{"code": ErrorCode.TOO_MANY_CONNECTIONS, "message": message}]}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: " + str(retry_after_s).encode() + b"\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\nconnection: close\r\nserver: wisp\r\n\r\n" + body)


class Lease:
    """One admitted connection's place in the counts; released exactly once."""

    __slots__ = ("_limits", "_key", "_pending", "_released")

    def __init__(self, limits: "ConnectionLimits", key: str) -> None:
        self._limits = limits
        self._key = key
        self._pending = True
        self._released = False

    def authenticated(self) -> None:
        """The peer proved a key: it no longer counts against its address's unauthenticated allowance."""
        if self._pending and not self._released:
            self._pending = False
            self._limits._unpend(self._key)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._pending:
            self._limits._unpend(self._key)
        self._limits.open -= 1


class ConnectionLimits:
    def __init__(self, max_connections: int, max_unauthenticated_per_address: int) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated_per_address = max_unauthenticated_per_address
        self.open = 0
        self.pending: dict[str, int] = {}
        self.refused = 0

    def admit(self, peer: str) -> "Lease | str":
        """A lease for a new connection from ``peer``, or why it is refused."""
        if self.open >= self.max_connections:
            self.refused += 1
            return f"the server holds its maximum of {self.max_connections} connections; retry shortly"
        key = address_key(peer)
        held = self.pending.get(key, 0)
        if held >= self.max_unauthenticated_per_address:
            self.refused += 1
            return (f"your address holds {held} connections that have not authenticated "
                    f"(at most {self.max_unauthenticated_per_address}); authenticate or close some")
        self.pending[key] = held + 1
        self.open += 1
        return Lease(self, key)

    def _unpend(self, key: str) -> None:
        left = self.pending.get(key, 0) - 1
        if left > 0:
            self.pending[key] = left
        else:
            self.pending.pop(key, None)

    def stats(self) -> dict[str, int]:
        return {"open": self.open, "unauthenticated": sum(self.pending.values()), "refused": self.refused,
                "max": self.max_connections}
