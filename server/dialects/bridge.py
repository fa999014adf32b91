"""The native side every dialect shares: keys, task submission, task records, webhooks.

A dialect never calls the engine directly.  It builds a native task (a dict
shaped like one element of a ``POST /v1`` array) and hands it to
:meth:`NativeBridge.submit`, which runs it through ``Gateway.handle_frame``
with a :class:`DialectConn` standing in for the socket.  The task is always
``deliveryMethod: "async"``: the gateway answers at once (an ack, or an error
such as a validation failure or an unknown model), and the outcome is read
later from the team's task store by taskUUID — the same record getResponse
and getTaskDetails read, so a dialect's task is visible natively too.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import msgspec

from engine.registry.team_settings import TeamSettings
from server.dialects.errors import DialectError, from_native
from server.gateway import Gateway, RequestContext
from server.sessions import Session
from server.tasks import TaskRecord


class DialectConn:
    """The gateway's view of one dialect request.

    Immediate replies (the ack or a refusal) are kept for the handler; frames
    a task emits later are dropped, because the dialect reads results from the
    task store, and the session is not resumable (nothing piles up).
    """

    def __init__(self, team: str, ctx: RequestContext, on_frame: Callable[[bytes], None] | None = None) -> None:
        self.session: Session | None = Session(team, resumable=False)
        self.ctx = ctx
        self.frames: list[bytes] = []
        self.on_frame = on_frame
        self.session.attach(self)

    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        if self.on_frame is not None:  # a dialect that reports as the task goes (training webhooks)
            for frame in frames:
                self.on_frame(frame)
        return []

    async def reply(self, frames: Iterable[bytes]) -> None:
        self.frames.extend(frames)

    def bind(self, session: Session) -> list[bytes]:
        return []

    def errors(self) -> list[dict[str, Any]]:
        return [e for frame in self.frames for e in json.loads(frame).get("errors", [])]


@dataclass
class Submitted:
    """A native task the gateway accepted: its taskUUID and the job running it."""

    task_uuid: str
    job: asyncio.Task[None] | None


class NativeBridge:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = TeamSettings(gateway.engine.registry.db)

    async def team(self, key: str, peer: str) -> str:
        """The key's team; raises :class:`DialectError` (missing/invalid key, rate-limited address)."""
        if not key:
            raise DialectError("missingApiKey", "no API key: send the key of a wisp team")
        team = await self.gateway.team_for_key(key, peer)
        if not isinstance(team, str):
            raise DialectError(team.code, team.message)
        return team

    async def submit(
        self, team: str, task: dict[str, Any], ctx: RequestContext, rename: Callable[[str], str] | None = None,
        on_frame: Callable[[bytes], None] | None = None,
    ) -> Submitted:
        """Run ``task`` (taskType set, taskUUID added) as an async native task of ``team``.

        Raises :class:`DialectError` with the gateway's own error when it is
        refused at once; ``rename`` maps native field names in it back to the
        dialect's.  ``on_frame`` sees every frame the task pushes later (its
        statuses), for dialects whose webhooks follow the task's progress.
        """
        task = {**task, "taskUUID": task.get("taskUUID") or str(uuid.uuid4()), "deliveryMethod": "async"}
        conn = DialectConn(team, ctx, on_frame)
        jobs = await self.gateway.handle_frame(conn, msgspec.json.encode([task]))
        errors = conn.errors()
        if errors:
            raise from_native(errors[0], rename)
        return Submitted(task["taskUUID"], jobs[0] if jobs else None)

    def record(self, team: str, task_uuid: str) -> TaskRecord | None:
        """The team's task by taskUUID (None: unknown, expired, or another team's)."""
        return self.gateway.tasks.get(team, task_uuid)

    async def first_news(self, record: TaskRecord, timeout_s: float) -> None:
        """Wait until ``record`` has an item, an error or an end (or ``timeout_s`` passes)."""
        deadline = time.monotonic() + timeout_s
        while not (record.items or record.errors or record.finished_at is not None) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def on_finished(self, submitted: Submitted, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop once the task's job has ended (for webhooks)."""
        if submitted.job is None:
            callback()
        else:
            submitted.job.add_done_callback(lambda _job: callback())

    def post_webhook(self, url: str, payload: Any, sequence: str | None = None) -> None:
        """POST ``payload`` as JSON to ``url`` through the server's webhook sender (URL guard, retries);
        posts sharing ``sequence`` arrive in order."""
        self.gateway.webhooks.post(url, msgspec.json.encode(payload), sequence=sequence)

    @property
    def task_retention_s(self) -> float:
        return self.gateway.tasks.retention_s


def items(record: TaskRecord) -> list[dict[str, Any]]:
    """A record's items as plain dicts (live structs and journal dicts alike)."""
    return [i if isinstance(i, dict) else msgspec.to_builtins(i) for i in record.items]


def first_error(record: TaskRecord) -> dict[str, Any] | None:
    return msgspec.to_builtins(record.errors[0]) if record.errors else None
