"""Dispatch: decoded tasks in, replies and engine calls out.

The gateway is transport-free: a WebSocket connection and an HTTP ``POST /v1``
both hand it a frame and a :class:`Conn` (where immediate replies go, which
session is bound).  Results of long tasks go to the *session*, so they survive
a dropped socket (resume buffer) and are recorded in the team's task store
(getResponse, getTaskDetails, conflictTaskUUID).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Iterable, Protocol, TypeVar
from urllib.parse import urlsplit

import msgspec

from engine.core import Engine, GeneratedImage
from engine.errors import EngineError, QueueFull
from engine.registry.keys import KeyStore
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.frames import (
    DecodedTask, decode_elements, element_head, encode_data, encode_errors, iter_frames, parse_frame, task_heads,
)
from protocol.inference import AsyncAck, ImageInference, ImageResult, ImageUpload, ImageUploadResult, ProgressItem
from protocol.models import ModelSearch, ModelUpload, ModelUploadStatus
from protocol.training import TaskCancel, TaskCancelResult, Training, TrainingStatus
from protocol.session import (
    Authentication,
    AuthenticationResult,
    GetResponse,
    GetTaskDetails,
    Ping,
    Pong,
    ProcessingItem,
    TaskDetailsResult,
)
from server.config import ServerConfig
from server.errors import to_wire_error
from server.files import FILES_PATH, FileDrop
from server.ratelimit import AuthLimiter
from server.sessions import Session, SessionRegistry
from server.tasks import TaskRecord, TaskStore
from server.webhooks import WEBHOOK_FIELDS, WebhookSender
from engine.pricing import training_cost

log = logging.getLogger("wisp.server")
T = TypeVar("T")


def _as_success(item: Any) -> Any:
    """A finished item as getResponse shows it: ``status:"success"`` unless it has a status (upload phases)."""
    if isinstance(item, dict):  # from the journal, after a restart
        return item if "status" in item else {**item, "status": "success"}
    if getattr(item, "status", None) is msgspec.UNSET:
        return msgspec.structs.replace(item, status="success")
    return item


class _ProgressReporter:
    """Pushes an imageInference's opt-in progress items to its session, in step order.

    Steps arrive on the event loop (``Engine.generate``'s callback); each push
    waits for the previous one, and :meth:`flush` lets the results wait for all.
    Progress is never recorded for getResponse: it is a live view only.
    """

    def __init__(self, session: Session, task: ImageInference) -> None:
        self.session = session
        self.task = task
        self._last: asyncio.Future[None] | None = None

    def step(self, step: int, steps: int, previews: list[str] | None) -> None:
        item = ProgressItem(
            taskType="imageInference", taskUUID=self.task.taskUUID, status="processing",
            progress=round(min(1.0, step / max(1, steps)), 4), step=step, steps=steps,
            previewImages=previews if previews is not None else msgspec.UNSET,
        )
        self._last = asyncio.ensure_future(self._send(self._last, encode_data([item])))

    async def _send(self, previous: "asyncio.Future[None] | None", frames: list[bytes]) -> None:
        if previous is not None:
            await previous
        await self.session.emit(frames)

    async def flush(self) -> None:
        if self._last is not None:
            await self._last


class UploadSourceGone(EngineError):
    code = ErrorCode.DOWNLOAD_FAILED

_PONG_FRAME = encode_data([Pong(taskType="ping", pong=True)])[0]
_PING_BYTES = b'[{"taskType":"ping","ping":true}]'
_PING_MAX = 48
PRE_AUTH_MAX_FRAME_BYTES = 64 * 1024
"""Before authentication a frame needs room for one authentication task, not for a batch of work."""
PRE_AUTH_PARSED_BYTES = 4096
_AUTH_MARK = b'"authentication"'
"""Every frame that can authenticate holds these bytes (the taskType's value, unescaped, as every SDK writes it)."""
MAX_REFUSAL_ERRORS = 256
"""A frame refused whole (too large, too many tasks) gets at most this many per-task errors, then one summary."""


@dataclass(frozen=True)
class RequestContext:
    """What a connection knows about how the client reached us."""

    base_url: str
    own_hosts: frozenset[str]
    peer: str = ""
    """The client's address (failed-authentication limiting)."""


class Conn(Protocol):
    """A transport's side of the conversation (socket or HTTP request)."""

    session: Session | None
    ctx: RequestContext

    async def reply(self, frames: Iterable[bytes]) -> None:
        """Send immediate replies; ``frames`` may be a lazy iterator (encoded as it is taken)."""

    def bind(self, session: Session) -> list[bytes]: ...


class Gateway:
    def __init__(
        self,
        config: ServerConfig,
        engine: Engine,
        keys: KeyStore,
        tasks: TaskStore,
        sessions: SessionRegistry,
        webhooks: WebhookSender,
        files: "FileDrop | None" = None,
    ) -> None:
        self.files = files
        self.auth_limiter = AuthLimiter(config.auth_max_failures, config.auth_window_s)
        self.config = config
        self.engine = engine
        self.keys = keys
        self.tasks = tasks
        self.sessions = sessions
        self.webhooks = webhooks
        self.jobs: set[asyncio.Task[None]] = set()
        self.counters = {"frames": 0, "tasks": 0, "errors": 0}

    # ---- frames -----------------------------------------------------------

    async def handle_frame(self, conn: Conn, frame: bytes | str) -> list[asyncio.Task[None]]:
        """Answer every task of one frame; returns the jobs it started.

        What a frame costs is bounded before it is paid for.  Before
        authentication a frame may be small (:data:`PRE_AUTH_MAX_FRAME_BYTES`)
        and is looked at only for its authentication task: one that holds
        none gets one error, whatever it holds.  After it, the elements are
        counted before any is decoded, and a refused frame's per-task errors
        are capped (:data:`MAX_REFUSAL_ERRORS`).  Replies are encoded frame by
        frame as the client takes them (``iter_frames``).
        """
        self.counters["frames"] += 1
        if len(frame) <= _PING_MAX and isinstance(frame, bytes) and frame.replace(b" ", b"") == _PING_BYTES:
            # The SDKs' heartbeat, several per second per socket: answered without the general decoder.
            self.counters["tasks"] += 1
            await conn.reply([_PONG_FRAME])
            return []
        authenticated = conn.session is not None
        if not authenticated and len(frame) > PRE_AUTH_MAX_FRAME_BYTES:
            await self._refuse(conn, [wire_error(
                ErrorCode.NOT_AUTHENTICATED,
                f"authenticate first: before authentication a frame may hold at most {PRE_AUTH_MAX_FRAME_BYTES} bytes",
            )])
            return []
        if (not authenticated and len(frame) > PRE_AUTH_PARSED_BYTES
                and _AUTH_MARK not in (frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass"))):
            # Not even the word: refused without parsing (a stranger's junk costs a byte scan, not a decode).
            # Small frames are parsed, so that a client's task sent too early gets its error under its taskUUID.
            await self._refuse(conn, [wire_error(
                ErrorCode.NOT_AUTHENTICATED, "authenticate first: send an authentication task with your apiKey",
            )])
            return []
        if len(frame) > self.config.max_frame_bytes:
            await self._refuse_frame(
                conn, frame, ErrorCode.FRAME_TOO_LARGE, f"frame of {len(frame)} bytes is over the {self.config.max_frame_bytes}-byte limit"
            )
            return []
        elements = parse_frame(frame)
        if isinstance(elements, WireError):
            await self._refuse(conn, [elements])
            return []
        if not authenticated and not any(isinstance(e, dict) and e.get("taskType") == "authentication" for e in elements):
            task_type, task_uuid = element_head(elements[0])
            await self._refuse(conn, [wire_error(
                ErrorCode.NOT_AUTHENTICATED, "authenticate first: send an authentication task with your apiKey",
                task_type=task_type, task_uuid=task_uuid,
            )])
            return []
        if len(elements) > self.config.max_tasks_per_frame:
            await self._refuse_frame(
                conn, elements, ErrorCode.TOO_MANY_TASKS, f"a frame may hold at most {self.config.max_tasks_per_frame} tasks"
            )
            return []
        data: list[Any] = []
        errors: list[WireError] = []
        started: list[asyncio.Task[None]] = []
        resumed: list[tuple[Session, list[bytes]]] = []
        for item in decode_elements(elements):
            self.counters["tasks"] += 1
            if item.error is not None:
                errors.append(item.error)
                continue
            task = item.task
            if isinstance(task, Ping):
                data.append(Pong(taskType="ping", pong=True, taskUUID=task.taskUUID or msgspec.UNSET))
            elif isinstance(task, Authentication):
                reply = await self._authenticate(conn, task, resumed)
                (errors if isinstance(reply, WireError) else data).append(reply)
            elif conn.session is None:
                errors.append(
                    wire_error(
                        ErrorCode.NOT_AUTHENTICATED,
                        "authenticate first: send an authentication task with your apiKey",
                        task_type=item.task_type,
                        task_uuid=item.task_uuid,
                    )
                )
            else:
                reply = None
                if any(getattr(task, name, None) for name in WEBHOOK_FIELDS):  # a refused webhook fails the task before its ack
                    reply = await self.webhooks.refusal(task, item.task_type, item.task_uuid)
                if reply is None:
                    reply = self._dispatch(conn, conn.session, item, started)
                if isinstance(reply, WireError):
                    errors.append(reply)
                elif isinstance(reply, list):
                    data.extend(reply)
                elif reply is not None:
                    data.append(reply)
        self.counters["errors"] += len(errors)
        if data or errors:
            await conn.reply(iter_frames(data, errors))
        for session, pending in resumed:
            # What was kept while no socket was attached goes out after the auth reply.
            await session.emit(pending)
        return started

    async def _refuse(self, conn: Conn, errors: list[WireError]) -> None:
        self.counters["errors"] += len(errors)
        await conn.reply(encode_errors(errors))

    async def _refuse_frame(self, conn: Conn, frame: bytes | str | list[Any], code: str, message: str) -> None:
        """Refuse a whole frame: one error per task (routed by its taskUUID), at most :data:`MAX_REFUSAL_ERRORS`."""
        heads = task_heads(frame) if isinstance(frame, list) or len(frame) <= self.config.hard_frame_bytes else []
        errors = [wire_error(code, message, task_type=t, task_uuid=u) for t, u in heads[:MAX_REFUSAL_ERRORS]] or [wire_error(code, message)]
        if len(heads) > MAX_REFUSAL_ERRORS:
            errors.append(wire_error(code, f"{message}; {len(heads) - MAX_REFUSAL_ERRORS} more tasks of this frame were refused too"))
        await self._refuse(conn, errors)

    # ---- session tasks ----------------------------------------------------

    async def _authenticate(self, conn: Conn, task: Authentication, resumed: list[tuple[Session, list[bytes]]]) -> Any:
        if not isinstance(task.apiKey, str) or not task.apiKey:
            return wire_error(ErrorCode.MISSING_API_KEY, "apiKey is missing", task_type="authentication")
        found = await self.key_for(task.apiKey, conn.ctx.peer)
        if isinstance(found, WireError):
            return found
        key_id, team = found
        session = None
        if task.connectionSessionUUID:
            session = self.sessions.resume(task.connectionSessionUUID, team)
            if session is not None:
                session.key_id = key_id  # the key that holds it now is the one whose revocation ends it
        if session is None:
            session = self.sessions.create(team, key_id)
        pending = conn.bind(session)
        if pending:
            resumed.append((session, pending))
        return AuthenticationResult(connectionSessionUUID=session.uuid)

    async def team_for_key(self, key: str, peer: str) -> "str | WireError":
        """The key's team, or the error to answer (invalid key, or this address is rate-limited)."""
        found = await self.key_for(key, peer)
        return found if isinstance(found, WireError) else found[1]

    async def key_for(self, key: str, peer: str) -> "tuple[int, str] | WireError":
        """(key id, team) of a live key, or the error to answer (invalid key, or this address is rate-limited).

        The attempt is counted before the key is looked at, so a burst of
        concurrent wrong keys from one address cannot all be checked.
        """
        wait = self.auth_limiter.begin(peer)
        if wait > 0:
            return self.rate_limited(wait)
        found = None
        try:
            found = await asyncio.to_thread(self.keys.identify, key)
        finally:
            self.auth_limiter.end(peer, failed=found is None)
        if found is None:
            return wire_error(ErrorCode.INVALID_API_KEY, "Invalid API key", task_type="authentication")
        return found

    @staticmethod
    def rate_limited(wait: float) -> WireError:
        return wire_error(
            ErrorCode.AUTH_RATE_LIMITED,
            f"too many failed authentications from this address; retry in {int(wait) + 1} s",
            task_type="authentication",
        )

    async def enforce_revocations(self) -> int:
        """End every session whose key was revoked since it authenticated; returns how many.

        Keys are revoked by another process (``wisp keys revoke``), so the
        registry is asked; the server calls this every few seconds.  The
        session is forgotten (no resume) and its socket closed with 1008;
        its tasks run on, their results stay in the team's task store.
        """
        ids = self.sessions.key_ids()
        if not ids:
            return 0
        revoked = await asyncio.to_thread(self.keys.revoked_among, ids)
        dropped = self.sessions.drop_keys(revoked) if revoked else []
        for session in dropped:
            sink, session.sink = session.sink, None
            close = getattr(sink, "close_for", None)
            if close is not None:
                close(1008, "API key revoked")
        if dropped:
            log.warning("closed %d session(s) whose API key was revoked", len(dropped))
        return len(dropped)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        job = asyncio.ensure_future(coro)
        self.jobs.add(job)
        job.add_done_callback(self._job_done)
        return job

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self.jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("background job failed", exc_info=job.exception())

    def _dispatch(self, conn: Conn, session: Session, item: DecodedTask, started: list[asyncio.Task[None]]) -> Any:
        task = item.task
        if isinstance(task, GetResponse):
            return self._get_response(session, task)
        if isinstance(task, GetTaskDetails):
            return self._get_task_details(session, task)
        if isinstance(task, TaskCancel):
            return self._cancel(session, task)
        assert isinstance(task, (ImageInference, ImageUpload, ModelUpload, ModelSearch, Training))
        task_type, task_uuid = item.task_type or "", item.task_uuid or ""
        try:
            if isinstance(task, ImageInference):
                self.engine.check(task, session.team)
            elif isinstance(task, Training):
                self.engine.check_training(task, session.team)
        except EngineError as exc:
            return to_wire_error(exc, task_type, task_uuid)
        if session.in_flight >= self.config.max_in_flight_per_session:
            return wire_error(
                ErrorCode.TOO_MANY_TASKS_IN_FLIGHT,
                f"this session already has {session.in_flight} tasks running; retry when one finishes",
                task_type=task_type,
                task_uuid=task_uuid,
            )
        record = self.tasks.claim(session.team, task_uuid, task_type, item.raw, session.uuid, durable=not isinstance(task, ModelSearch))
        if record is None:
            return wire_error(
                ErrorCode.CONFLICT_TASK_UUID,
                "a task with this taskUUID already exists; poll it with getResponse",
                task_type=task_type,
                task_uuid=task_uuid,
                parameter="taskUUID",
            )
        session.in_flight += 1
        if isinstance(task, Training):
            started.append(self._spawn(self._run_training(session, record, task, conn.ctx)))
            return AsyncAck(taskType=task_type, taskUUID=task_uuid)
        started.append(self._spawn(self._run(session, record, task, conn.ctx)))
        if getattr(task, "deliveryMethod", "sync") == "async":
            return AsyncAck(taskType=task_type, taskUUID=task_uuid)
        return None

    async def _run(
        self, session: Session, record: TaskRecord, task: ImageInference | ImageUpload | ModelUpload | ModelSearch, ctx: RequestContext
    ) -> None:
        is_async = getattr(task, "deliveryMethod", "sync") == "async"
        webhook: str | None = getattr(task, "webhookURL", None)
        streamed: list[Any] = []

        async def publish(item: Any) -> None:
            """Deliver one item of a long task the moment it exists (upload phases)."""
            streamed.append(item)
            record.items = list(streamed)
            if not is_async:
                await session.emit(encode_data([item]))
            if webhook:
                self._hook(webhook, session, record.task_uuid, encode_data([item])[0])

        async def produce() -> list[Any]:
            if isinstance(task, ImageInference):
                reporter = _ProgressReporter(session, task) if task.includeProgress else None

                def progress(step: int, steps: int, previews: list[str] | None) -> None:
                    record.progress = min(1.0, step / max(1, steps))
                    if reporter is not None:
                        reporter.step(step, steps, previews)

                images = await self.engine.generate(
                    task, team=session.team, owner=session.uuid, own_hosts=ctx.own_hosts, progress=progress, on_start=record.start
                )
                if reporter is not None:
                    await reporter.flush()  # every progress item goes out before the results
                return [self._image_item(task, image, ctx) for image in images]
            if isinstance(task, ImageUpload):
                image_uuid, name = await self.engine.upload_image(task.image, ctx.own_hosts)
                return [ImageUploadResult(taskType="imageUpload", taskUUID=task.taskUUID, imageUUID=image_uuid, imageURL=f"{ctx.base_url}/images/{name}")]
            if isinstance(task, ModelUpload):
                upload = task

                async def phase(status: str, message: str) -> None:
                    await publish(ModelUploadStatus(taskType="modelUpload", taskUUID=upload.taskUUID, status=status, message=message, air=upload.air))

                await self.engine.upload_model(task, session.team, phase, local_source=self._dropped_file(task.downloadURL, session.team, ctx))
                return []
            return [await self.engine.search_models(task, session.team)]

        items = await self._outcome(session, record, webhook, produce())
        if items is None:
            return
        record.succeed(streamed + items)
        self.tasks.finish(record)
        if items and not is_async:
            await session.emit(encode_data(items))
        if webhook:
            for result in items:
                self._hook(webhook, session, record.task_uuid, encode_data([result])[0])

    async def _outcome(self, session: Session, record: TaskRecord, webhook: str | None, work: Awaitable[T]) -> T | None:
        """The result of a task's work, or None once a failure was recorded and reported.

        A cancelled job (server stopping) is recorded as interrupted.  The
        session's in-flight count drops whatever happens, and before the
        failure is reported: a client that hears of it may send its next task
        at once, and that task must find the slot free.
        """
        try:
            result = await work
        except asyncio.CancelledError:
            session.in_flight -= 1
            self._interrupted(record)
            raise
        except BaseException as exc:
            session.in_flight -= 1
            await self._failed(session, record, exc, webhook)
            return None
        session.in_flight -= 1
        return result

    def _hook(self, url: str, session: Session, task_uuid: str, frame: bytes) -> None:
        """POST one frame to a task's webhook, in order with the task's other posts."""
        self.webhooks.post(url, frame, sequence=f"{session.team}\x00{task_uuid}")

    def _interrupted(self, record: TaskRecord) -> None:
        record.fail(wire_error(ErrorCode.TASK_INTERRUPTED, "the server stopped before this task finished; send it again with a new taskUUID",
                               task_type=record.task_type, task_uuid=record.task_uuid))
        self.tasks.finish(record)

    async def _failed(self, session: Session, record: TaskRecord, exc: BaseException, webhook: str | None) -> None:
        """A task ended in an error: record it (unless retryable), tell the session and the webhook."""
        error = to_wire_error(exc, record.task_type, record.task_uuid)
        if isinstance(exc, QueueFull):
            self.tasks.release(record)
        else:
            record.fail(error)
            self.tasks.finish(record)
        self.counters["errors"] += 1
        await session.emit(encode_errors([error]))
        if webhook:
            self._hook(webhook, session, record.task_uuid, encode_errors([error])[0])

    async def _run_training(self, session: Session, record: TaskRecord, task: Training, ctx: RequestContext) -> None:
        """A training job: every status goes to the session (pushed) and the webhook; getResponse shows the latest."""
        plan = task.plan()
        webhook = plan.webhook if not isinstance(plan, WireError) else None
        last_status: list[str] = []

        async def emit(status: str, message: str, **fields: Any) -> None:
            item = TrainingStatus(
                taskType="training", taskUUID=task.taskUUID, status="processing", trainingStatus=status, message=message,
                progress=fields.get("progress"), step=fields.get("step"), steps=fields.get("steps"), loss=fields.get("loss"),
            )
            record.items = [item]  # the latest status only: a long job's progress never piles up
            await session.emit(encode_data([item]))
            if webhook and last_status[-1:] != [status]:  # one POST per status change, not per step, in order
                self._hook(webhook, session, task.taskUUID, encode_data([item])[0])
            last_status[:] = [status]

        outcome = await self._outcome(session, record, webhook, self.engine.train(task, session.team, emit, ctx.own_hosts))
        if outcome is None:
            return
        final = TrainingStatus(
            taskType="training", taskUUID=task.taskUUID, status="success", trainingStatus="model_ready",
            message="The trained model is ready for use.", progress=1.0, step=outcome.steps, steps=outcome.steps,
            loss=outcome.loss, air=outcome.air,
            outputs={"air": outcome.air, "architecture": outcome.architecture, "steps": outcome.steps, "loss": outcome.loss,
                     "images": outcome.images, "seconds": round(outcome.seconds, 3)},
            cost=training_cost(outcome.steps) if task.includeCost else None,
        )
        record.succeed([final])
        self.tasks.finish(record)
        await session.emit(encode_data([final]))
        if webhook:
            self._hook(webhook, session, task.taskUUID, encode_data([final])[0])

    def _cancel(self, session: Session, task: TaskCancel) -> Any:
        record = self.tasks.get(session.team, task.taskUUID)
        if record is None:
            return self._missing("taskCancel", task.taskUUID)
        if record.task_type == "imageInference":
            cancelled = record.finished_at is None and self.engine.cancel_inference(session.team, task.taskUUID)
        elif record.task_type == "training":
            cancelled = record.finished_at is None and self.engine.cancel_training(session.team, task.taskUUID)
        else:
            return wire_error(ErrorCode.INVALID_PARAMETER,
                              f"only imageInference and training tasks can be cancelled; {task.taskUUID} is a {record.task_type}",
                              task_type="taskCancel", task_uuid=task.taskUUID, parameter="taskUUID")
        return TaskCancelResult(taskType="taskCancel", taskUUID=task.taskUUID, cancelled=cancelled)

    def _dropped_file(self, url: str, team: str, ctx: RequestContext) -> Path | None:
        """A ``/v1/files/<token>`` URL of this server, as the local file it names (or None)."""
        parts = urlsplit(url)
        if self.files is None or parts.netloc not in ctx.own_hosts or not parts.path.startswith(FILES_PATH):
            return None
        path = self.files.lookup(parts.path[len(FILES_PATH):], team)
        if path is None:
            raise UploadSourceGone("this file URL has expired or belongs to another team; PUT the file again", parameter="downloadURL")
        return path

    def _image_item(self, task: ImageInference, image: GeneratedImage, ctx: RequestContext) -> ImageResult:
        fields: dict[str, Any] = {}
        encoded: str | None = None
        for kind in task.output_types:
            if kind == "URL":
                fields["imageURL"] = f"{ctx.base_url}/images/{image.file_name}"
                continue
            encoded = encoded or base64.b64encode(image.data).decode("ascii")
            if kind == "base64Data":
                fields["imageBase64Data"] = encoded
            else:
                fields["imageDataURI"] = f"data:{image.mime};base64,{encoded}"
        if task.includeCost:
            fields["cost"] = image.cost
        return ImageResult(taskType="imageInference", taskUUID=task.taskUUID, imageUUID=image.image_uuid, seed=image.seed, NSFWContent=False, **fields)

    # ---- look-ups ---------------------------------------------------------

    def _missing(self, task_type: str, task_uuid: str) -> WireError:
        return wire_error(
            ErrorCode.TASK_NOT_FOUND,
            "no task with this taskUUID is known for your team (it may have expired)",
            task_type=task_type,
            task_uuid=task_uuid,
            parameter="taskUUID",
        )

    def _get_response(self, session: Session, task: GetResponse) -> Any:
        record = self.tasks.get(session.team, task.taskUUID)
        if record is None:
            return self._missing("getResponse", task.taskUUID)
        if record.errors:
            return record.errors[0]
        if record.finished_at is None:
            items = list(record.items)
            if not any(getattr(i, "status", None) == "processing" for i in items):
                items.append(ProcessingItem(taskType=record.task_type, taskUUID=record.task_uuid))
            return items
        return [_as_success(item) for item in record.items]

    def _get_task_details(self, session: Session, task: GetTaskDetails) -> Any:
        record = self.tasks.get(session.team, task.taskUUID)
        if record is None:
            return self._missing("getTaskDetails", task.taskUUID)
        response = [msgspec.to_builtins(i) for i in (record.errors or record.items)]
        if record.finished_at is None:
            response = [msgspec.to_builtins(ProcessingItem(taskType=record.task_type, taskUUID=record.task_uuid))]
        return TaskDetailsResult(taskUUID=record.task_uuid, request=[record.request], response=response)
