"""What a connection knows about how the client reached the server (shared by the gateway and delivery)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """What a connection knows about how the client reached us."""

    base_url: str
    own_hosts: frozenset[str]
    peer: str = ""
    """The client's address (failed-authentication limiting)."""
