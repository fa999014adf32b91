"""Sessions outlive sockets: the resume buffer.

A session is what ``connectionSessionUUID`` names.  While a socket is
attached, frames go straight to it; while none is, they are kept for
``resume_ttl_s`` (Runware keeps them 2 minutes) and flushed, in order, to the
next socket that authenticates with the session's UUID and the same team.
The buffer is bounded, in frames and in bytes; what falls off its end is
still in the task store, for getResponse.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from typing import Protocol

log = logging.getLogger("wisp.server")

MAX_BUFFERED_FRAMES = 1024
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
"""A frame is at most 1 MiB: without a byte bound 1,024 of them could hold 1 GiB per session."""


class Sink(Protocol):
    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        """Send frames in order; return those that could not be sent (socket gone)."""


class Session:
    def __init__(self, team: str, session_uuid: str | None = None, resumable: bool = True, key_id: int | None = None) -> None:
        self.uuid = session_uuid or str(uuid.uuid4())
        self.team = team
        self.key_id = key_id
        """The API key that opened the session: revoking it ends the session (see ``Gateway.enforce_revocations``)."""
        self.resumable = resumable
        self.sink: Sink | None = None
        self.detached_at: float | None = time.monotonic()
        self.buffer: deque[bytes] = deque()
        self.buffered_bytes = 0
        self.in_flight = 0

    async def emit(self, frames: list[bytes]) -> None:
        """Deliver frames to the attached socket, or keep them for a resume."""
        if self.sink is not None:
            frames = await self.sink.send_frames(frames)
        if frames:
            self._keep(frames)

    def _keep(self, frames: list[bytes]) -> None:
        if not self.resumable:
            return
        self.buffer.extend(frames)
        self.buffered_bytes += sum(len(f) for f in frames)
        while len(self.buffer) > MAX_BUFFERED_FRAMES or (self.buffered_bytes > MAX_BUFFERED_BYTES and len(self.buffer) > 1):
            self.buffered_bytes -= len(self.buffer.popleft())
            log.warning("session %s: resume buffer full, oldest frame dropped (still in getResponse)", self.uuid)

    def attach(self, sink: Sink) -> list[bytes]:
        """Bind a socket; returns the buffered frames it must be sent first."""
        self.sink = sink
        self.detached_at = None
        pending = list(self.buffer)
        self.buffer.clear()
        self.buffered_bytes = 0
        return pending

    def detach(self, sink: Sink, unsent: list[bytes] = []) -> None:
        if self.sink is sink:
            self.sink = None
            self.detached_at = time.monotonic()
            if unsent:
                self._keep(unsent)


class SessionRegistry:
    def __init__(self, resume_ttl_s: float) -> None:
        self.resume_ttl_s = resume_ttl_s
        self._sessions: dict[str, Session] = {}

    def create(self, team: str, key_id: int | None = None) -> Session:
        session = Session(team, key_id=key_id)
        self._sessions[session.uuid] = session
        return session

    def in_flight(self) -> int:
        """Tasks running or queued, over every session."""
        return sum(s.in_flight for s in self._sessions.values())

    def key_ids(self) -> set[int]:
        """The keys behind the sessions held now."""
        return {s.key_id for s in self._sessions.values() if s.key_id is not None}

    def drop_keys(self, revoked: set[int]) -> list[Session]:
        """Forget every session opened with one of ``revoked`` (no resume); returns them, so their sockets can be closed."""
        dropped = [s for s in self._sessions.values() if s.key_id in revoked]
        for session in dropped:
            del self._sessions[session.uuid]
        return dropped

    def resume(self, session_uuid: str, team: str) -> Session | None:
        """The live session with that UUID if it belongs to ``team``; None otherwise."""
        session = self._sessions.get(session_uuid.lower())
        if session is None or session.team != team:
            return None
        if session.detached_at is not None and time.monotonic() - session.detached_at > self.resume_ttl_s:
            self._sessions.pop(session.uuid, None)
            return None
        return session

    def sweep(self) -> int:
        """Forget sessions detached longer than the resume window."""
        now = time.monotonic()
        dead = [
            s.uuid
            for s in self._sessions.values()
            if s.detached_at is not None and now - s.detached_at > self.resume_ttl_s and s.in_flight == 0
        ]
        for key in dead:
            del self._sessions[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._sessions)
