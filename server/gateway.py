"""Dispatch: decoded tasks in, replies and engine calls out.

The gateway is transport-free: a WebSocket connection and an HTTP ``POST /v1``
both hand it a frame and a :class:`Conn` (where immediate replies go, which
session is bound).  Results of long tasks go to the *session*, so they survive
a dropped socket (resume buffer) and are recorded in the team's task store
(getResponse, getTaskDetails, conflictTaskUUID).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import urlsplit

import msgspec

from engine.core import Engine
from engine.errors import EngineError
from engine.jobs import Job
from engine.registry.keys import KeyStore
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.frames import (
    DecodedTask, decode_elements, element_head, encode_data, encode_errors, encode_item, iter_frames, parse_frame, task_heads,
)
from protocol.inference import AsyncAck, ImageInference, ImageUpload
from protocol.media import AccountManagement, MediaStorage, MediaStorageResult
from protocol.models import EncodedModelSearchResult, ModelDelete, ModelDeleteResult, ModelInfo, ModelSearch, ModelUpload
from protocol.preprocess import ControlNetPreprocess, ImageControlNetPreProcess
from protocol.upscale import ImageUpscale, Upscale
from protocol.training import TaskCancel, TaskCancelResult, Training
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
from server.context import RequestContext
from server.delivery import Delivery, interrupted_error
from server.errors import to_wire_error
from server.files import FILES_PATH, FileDrop
from server.ratelimit import AuthLimiter
from server.sessions import Session, SessionRegistry
from server.tasklog import query_answered, task_finished
from server.tasks import TaskRecord, TaskStore
from server.webhooks import WEBHOOK_FIELDS, WebhookSender

log = logging.getLogger("wisp.server")


def _as_success(item: Any) -> Any:
    """A finished item as getResponse shows it: ``status:"success"`` unless it has a status (upload phases)."""
    if isinstance(item, dict):  # from the journal, after a restart
        return item if "status" in item else {**item, "status": "success"}
    if getattr(item, "status", None) is msgspec.UNSET:
        return msgspec.structs.replace(item, status="success")
    return item


_WEBHOOK_FIELDS_OF: dict[type, tuple[str, ...]] = {}


def _webhook_fields(task_class: type) -> tuple[str, ...]:
    """Which of :data:`WEBHOOK_FIELDS` a task type has (looked up once per type, not per task)."""
    found = _WEBHOOK_FIELDS_OF.get(task_class)
    if found is None:
        found = _WEBHOOK_FIELDS_OF[task_class] = tuple(
            name for name in WEBHOOK_FIELDS if name in getattr(task_class, "__struct_fields__", ()))
    return found


class UploadSourceGone(EngineError):
    """A modelUpload named a `/v1/files` URL that has expired or is another team's."""

    code = ErrorCode.DOWNLOAD_FAILED

_PONG_FRAME = encode_data([Pong(taskType="ping", pong=True)])[0]
_PING_BYTES = b'[{"taskType":"ping","ping":true}]'
_PING_MAX = 48
_ENCODED_RESULTS_KEPT = 128
"""Search results lists kept encoded (:meth:`Gateway._results_json`); the engine's view remembers as many answers."""
PRE_AUTH_MAX_FRAME_BYTES = 64 * 1024
"""Before authentication a frame needs room for one authentication task, not for a batch of work."""
PRE_AUTH_PARSED_BYTES = 4096
_AUTH_MARK = b'"authentication"'
"""Every frame that can authenticate holds these bytes (the taskType's value, unescaped, as every SDK writes it)."""
MAX_REFUSAL_ERRORS = 256
"""A frame refused whole (too large, too many tasks) gets at most this many per-task errors, then one summary."""


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
        self.routes: dict[type, Callable[[Conn, Session, DecodedTask, list[asyncio.Task[None]]], Any]] = {
            GetResponse: lambda conn, session, item, started: self._get_response(session, item.task),  # type: ignore[arg-type]
            GetTaskDetails: lambda conn, session, item, started: self._get_task_details(session, item.task),  # type: ignore[arg-type]
            TaskCancel: lambda conn, session, item, started: self._cancel(session, item.task),  # type: ignore[arg-type]
            ImageInference: self._submit,
            ImageUpload: self._submit,
            ModelUpload: self._submit,
            ModelSearch: self._search,
            ModelDelete: lambda conn, session, item, started: self._delete_model(session, item.task),  # type: ignore[arg-type]
            ImageControlNetPreProcess: self._submit,
            ControlNetPreprocess: self._submit,
            ImageUpscale: self._submit,
            Upscale: self._submit,
            Training: self._submit,
            MediaStorage: self._media,
            AccountManagement: lambda conn, session, item, started: self._account(session, item.task),  # type: ignore[arg-type]
        }
        """taskType (its struct) → the handler of an authenticated task of that type."""
        self.counters = {"frames": 0, "tasks": 0, "errors": 0}
        self._encoded_results: dict[int, tuple[list[ModelInfo], msgspec.Raw]] = {}

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
                for name in _webhook_fields(type(task)):
                    if getattr(task, name):  # a refused webhook fails the task before its ack
                        reply = await self.webhooks.refusal(task, item.task_type, item.task_uuid)
                        break
                if reply is None:
                    reply = await self._dispatch(conn, conn.session, item, started)
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
            log.info("authentication failed from %s (an unknown or revoked key)", peer or "-")  # never the key itself
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

    async def _dispatch(self, conn: Conn, session: Session, item: DecodedTask, started: list[asyncio.Task[None]]) -> Any:
        """One authenticated task: the handler its type names in :attr:`routes` answers it."""
        reply = self.routes[type(item.task)](conn, session, item, started)
        return await reply if asyncio.iscoroutine(reply) else reply

    async def _submit(self, conn: Conn, session: Session, item: DecodedTask, started: list[asyncio.Task[None]]) -> Any:
        """A task that is work: prepared into a job once (before any ack), claimed, then run by a :class:`Delivery`."""
        task = item.task
        assert isinstance(task, (ImageInference, ImageUpload, ModelUpload, ModelSearch, Training, ImageControlNetPreProcess,
                                 ControlNetPreprocess, ImageUpscale, Upscale, MediaStorage))
        task_type, task_uuid = item.task_type or "", item.task_uuid or ""
        try:
            job = await self.engine.prepare_job(task, session.team, session.uuid)
        except EngineError as exc:
            now = time.monotonic()  # refused before its ack: logged and counted like any finished task
            task_finished(task_type, task_uuid, session.team, getattr(task, "model", None) or getattr(task, "air", None),
                          exc.code, now, now, ran=False)
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
        delivery = Delivery(self, session, record, task, conn.ctx)
        prepare: Callable[[Job], Job] | None = None
        if isinstance(task, ModelUpload):
            prepare = self._local_source(task, session.team, conn.ctx)
        started.append(self._spawn(delivery.run(job, prepare)))
        if isinstance(task, Training) or getattr(task, "deliveryMethod", "sync") == "async":
            return AsyncAck(taskType=task_type, taskUUID=task_uuid)
        return None

    def _local_source(self, task: ModelUpload, team: str, ctx: RequestContext) -> Callable[[Job], Job]:
        """A modelUpload's last step before it runs: a ``/v1/files`` URL of this server becomes the file it names."""

        def prepare(job: Job) -> Job:
            path = self._dropped_file(task.downloadURL, team, ctx)
            return job if path is None else msgspec.structs.replace(job, local_source=str(path))

        return prepare

    def _search(self, conn: Conn, session: Session, item: DecodedTask, started: list[asyncio.Task[None]]) -> Any:
        """modelSearch: answered at once from the engine's in-memory view when it is fresh, else as a job."""
        task = item.task
        assert isinstance(task, ModelSearch)
        if getattr(task, "deliveryMethod", "sync") == "sync" and not getattr(task, "webhookURL", None):
            result = self.engine.search_now(task, session.team)
            if result is not None:
                record = self.tasks.claim(session.team, task.taskUUID, "modelSearch", item.raw, session.uuid, durable=False)
                if record is None:
                    return wire_error(ErrorCode.CONFLICT_TASK_UUID, "a task with this taskUUID already exists; poll it with getResponse",
                                      task_type="modelSearch", task_uuid=task.taskUUID, parameter="taskUUID")
                answer = EncodedModelSearchResult(taskType=result.taskType, taskUUID=result.taskUUID,
                                                  totalResults=result.totalResults, results=self._results_json(result.results))
                record.succeed_encoded(answer)  # kept as it is: its results are bytes shared with every repeat
                self.tasks.finish(record)  # not journaled (durable=False): packed for the hour getResponse keeps it
                query_answered("modelSearch", task.taskUUID, session.team, record.created_at)  # no queue or run time to observe
                return answer
        return self._submit(conn, session, item, started)

    def _results_json(self, results: list[ModelInfo]) -> msgspec.Raw:
        """``results`` as JSON, encoded once per list: the engine's view hands the same list to every search that
        repeats one (until the registry changes), so a repeated search costs no encoding of its results.  Keyed by
        the list's identity; the entry holds the list, so its id cannot be reused while the entry lives."""
        found = self._encoded_results.get(id(results))
        if found is None or found[0] is not results:
            if len(self._encoded_results) >= _ENCODED_RESULTS_KEPT:
                self._encoded_results.clear()
            found = self._encoded_results[id(results)] = (results, msgspec.Raw(encode_item(results)))
        return found[1]

    def _media(self, conn: Conn, session: Session, item: DecodedTask, started: list[asyncio.Task[None]]) -> Any:
        """mediaStorage: an upload is work like imageUpload; a delete of the team's own media is answered at once."""
        task = item.task
        assert isinstance(task, MediaStorage)
        if task.operation == "upload":
            return self._submit(conn, session, item, started)
        return self._delete_media(session, task)

    async def _delete_media(self, session: Session, task: MediaStorage) -> Any:
        assert task.mediaUUID is not None
        started = time.monotonic()
        deleted = await asyncio.to_thread(self.engine.images.delete, task.mediaUUID, session.team)
        outcome = "success" if deleted else ErrorCode.IMAGE_NOT_FOUND
        task_finished("mediaStorage", task.taskUUID, session.team, None, outcome, started, started, ran=False)
        if not deleted:
            return wire_error(ErrorCode.IMAGE_NOT_FOUND, "no media of your team has this mediaUUID", task_type="mediaStorage",
                              task_uuid=task.taskUUID, parameter="mediaUUID")
        return MediaStorageResult(taskType="mediaStorage", taskUUID=task.taskUUID, mediaUUID=task.mediaUUID.lower(),
                                  operation="delete", status="deleted")

    async def _account(self, session: Session, task: AccountManagement) -> Any:
        """accountManagement (getDetails, getUsageActivity): the session's own team, read in a worker thread."""
        from server.account import full_details, usage_activity

        db = self.keys.db
        if task.operation == "getDetails":
            details = await asyncio.to_thread(full_details, db, session.team, self.config.max_model_bytes)
        else:
            details = await asyncio.to_thread(usage_activity, db, session.team, task.days, self.config.task_retention_s)
        return {"taskType": "accountManagement", "taskUUID": task.taskUUID, "operation": task.operation, **details}

    async def _delete_model(self, session: Session, task: ModelDelete) -> Any:
        """modelDelete (a wisp extension): the team's own model, answered at once; its file goes once unused."""
        started = time.monotonic()
        try:
            row = await asyncio.to_thread(self.engine.delete_model, task.air, session.team)
        except EngineError as exc:
            task_finished("modelDelete", task.taskUUID, session.team, task.air, exc.code, started, started, ran=False)
            return to_wire_error(exc, "modelDelete", task.taskUUID)
        task_finished("modelDelete", task.taskUUID, session.team, row.air, "success", started, started, ran=False)
        return ModelDeleteResult(taskType="modelDelete", taskUUID=task.taskUUID, air=row.air)

    def interrupted(self, record: TaskRecord) -> None:
        """Record a task the server stopped before it finished."""
        record.fail(interrupted_error(record))
        self.tasks.finish(record)

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
