"""Assemble and run the server: engine, registry, gateway, one listening port.

Shutdown goes in order (uvicorn's habit): stop accepting, close sockets with
1001 (going away), let running jobs finish for a grace period, then cancel
what is left; every cancelled task is recorded as failed, none vanishes.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterable, TextIO
from urllib.parse import unquote, urlsplit

import h11
import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from engine.core import Engine
from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from protocol.errors import ErrorCode
from server.config import ServerConfig
from server.connection import SocketConn, request_context
from server.dialects import DialectRouter
from server.gateway import Gateway, RequestContext
from server.files import FILES_PATH, FileDrop, FileSink
from server.http import BodySink, HTTPProtocol, Response as HTTPResponse, json_response
from server.limits import ConnectionLimits, default_max_connections, raise_fd_limit
from server.listener import SniffingConnection
from server.sessions import Session, SessionRegistry
from server.journal import TaskJournal
from server.tasks import TaskStore
from server.webhooks import WebhookSender

log = logging.getLogger("wisp.server")


class DataDirInUse(Exception):
    """Another server holds this data directory (its message is one line, for the operator)."""


def lock_data_dir(data_dir: Path) -> TextIO:
    """Hold ``wisp.lock`` in ``data_dir`` for the life of the process, or raise :class:`DataDirInUse`.

    Two servers on one data dir would each clear the other's ``tmp/`` and
    ``uploads/`` and mark the other's running tasks interrupted.  The lock is
    an ``flock``: the kernel drops it when the process dies, however it dies,
    so a crash never leaves a stale lock behind.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "wisp.lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DataDirInUse(f"the data dir {data_dir} is in use by another wisp server ({holder}); "
                           "stop it, or give this one its own --data-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def prepare_data_dir(data_dir: Path) -> None:
    """Create the layout and clear ``tmp/`` (anything there is a crashed write)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(exist_ok=True)
    (data_dir / "images").mkdir(exist_ok=True)


STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".json": "application/json"}


def _static_response(name: str) -> HTTPResponse:
    """A file of the playground (``server/static``); names with any path trick are 404."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return json_response(404, {"errors": [{"code": "notFound", "message": "no such file"}]})
    path = STATIC_DIR / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or not path.is_file():
        return json_response(404, {"errors": [{"code": "notFound", "message": "no such file"}]})
    headers = [(b"content-type", kind.encode()), (b"cache-control", b"no-cache"),
               (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'")]
    return 200, headers, path.read_bytes()


class CollectingConn:
    """The gateway's view of one ``POST /v1``: replies are gathered into the body."""

    def __init__(self, session: Session, ctx: RequestContext, max_bytes: int) -> None:
        self.session = session
        self.ctx = ctx
        self.frames: list[bytes] = []
        self.max_bytes = max_bytes
        """The response body's budget: what a request can make the server hold is bounded in bytes, not tasks."""
        self.size = 0
        self.dropped = 0
        session.attach(self)

    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        for frame in frames:
            self._take(frame)
        return []

    def _take(self, frame: bytes) -> bool:
        """Keep one frame for the body while the body stays under its budget; False once it is over."""
        if self.size + len(frame) > self.max_bytes:
            self.dropped += 1
            return False
        self.size += len(frame)
        self.frames.append(frame)
        return True

    async def reply(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            if not self._take(frame):
                return

    def bind(self, session: Session) -> list[bytes]:
        return []

    def body(self) -> dict:
        data: list = []
        errors: list = []
        for frame in self.frames:
            obj = json.loads(frame)
            data.extend(obj.get("data", []))
            errors.extend(obj.get("errors", []))
        if self.dropped:
            errors.append({"code": ErrorCode.RESPONSE_TOO_LARGE, "message": (
                f"the replies to this request passed {self.max_bytes} bytes; {self.dropped} frame(s) of results were left out "
                "(each result stays available to getResponse: ask for fewer per request, or use a WebSocket)")})
        body: dict = {}
        if data or not errors:
            body["data"] = data
        if errors:
            body["errors"] = errors
        return body


class WispServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = lock_data_dir(config.data_dir)  # before anything in it is cleared
        prepare_data_dir(config.data_dir)
        self.db = Database(config.data_dir / "wisp.db")
        self.keys = KeyStore(self.db)
        engine_config = config.engine_config()
        policy = engine_config.net
        self.engine = Engine(engine_config, db=self.db)
        self.journal = TaskJournal(self.db)
        interrupted = self.journal.mark_interrupted()
        if interrupted:
            log.warning("%d task(s) were interrupted by the last stop; they are reported as failed", interrupted)
        swept = self.engine.sweep_store()
        if swept:
            log.warning("removed %d stored model file(s) that no model refers to (left by a crash or a refused upload)", swept)
        self.tasks = TaskStore(config.task_retention_s, self.journal, inline_loader=self._stored_image)
        self.sessions = SessionRegistry(config.resume_ttl_s)
        self.webhooks = WebhookSender(policy, config.webhook_timeout_s, config.webhook_retries)
        self.files = FileDrop(config.data_dir / "uploads")
        self.gateway = Gateway(config, self.engine, self.keys, self.tasks, self.sessions, self.webhooks, self.files)
        self.dialects = DialectRouter(self.gateway)
        fd_limit = raise_fd_limit()
        self.limits = ConnectionLimits(config.max_connections or default_max_connections(fd_limit),
                                       config.max_unauthenticated_per_address)
        self.ws_server: Server | None = None
        self.port: int | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    def _stored_image(self, image_uuid: str) -> tuple[bytes, str] | None:
        """A generated image's bytes and mime, for a journaled base64 result read back after a restart."""
        path = self.engine.images.find(image_uuid)
        return None if path is None else (path.read_bytes(), self.engine.images.mime_for(path))

    # ---- routes -----------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path.rstrip("/") != "/v1":
            return connection.respond(404, "WebSocket endpoint is /v1\n")
        return None

    async def _ws_handler(self, ws: ServerConnection) -> None:
        peer = ws.remote_address[0] if ws.remote_address else ""
        ctx = request_context(ws.request.headers.get("Host") if ws.request else None, self.config.host, self.port or 0,
                              self.config.public_url, peer=str(peer))
        await SocketConn(ws, self.gateway, ctx).serve()

    @staticmethod
    def _bearer(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def _body_sink(self, request: h11.Request, peer: str) -> BodySink | None:
        """Stream ``PUT/POST /v1/files`` bodies to disk; everything else is buffered (and capped)."""
        path = urlsplit(request.target.decode("latin-1")).path
        if request.method not in (b"PUT", b"POST") or path.rstrip("/") != FILES_PATH.rstrip("/"):
            return None
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        key = self._bearer(headers)
        limiter = self.gateway.auth_limiter
        if not key or limiter.retry_after(peer) > 0:
            return None
        team = self.keys.team_of(key)  # one indexed read: the body must not start streaming unauthenticated
        if team is None:
            limiter.failed(peer)
            return None
        return self.files.sink(team, self.config.max_model_bytes)

    async def _http_handler(self, request: h11.Request, body: bytes, sink: BodySink | None = None, peer: str = "") -> HTTPResponse:
        target = urlsplit(request.target.decode("latin-1"))
        path = target.path
        method = request.method.decode()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if path.rstrip("/") == FILES_PATH.rstrip("/") and method in ("PUT", "POST"):
            if not isinstance(sink, FileSink):
                wait = self.gateway.auth_limiter.retry_after(peer)
                if wait > 0:
                    return json_response(429, {"errors": [msgspec.to_builtins(self.gateway.rate_limited(wait))]})
                status = 401
                code = "invalidApiKey" if "authorization" in headers else "missingApiKey"
                return json_response(status, {"errors": [{"code": code, "message": "send Authorization: Bearer <apiKey>"}]})
            try:
                token = await asyncio.to_thread(sink.finish)
            except OSError as exc:  # the last bytes or the fsync did not fit
                sink.abort()
                log.warning("PUT /v1/files could not be stored: %s", exc)
                return json_response(507, {"errors": [{"code": "insufficientStorage", "message": "the server could not store this upload"}]})
            ctx = request_context(headers.get("host"), self.config.host, self.port or 0, self.config.public_url)
            return json_response(201, {"url": f"{ctx.base_url}{FILES_PATH}{token}", "size": sink.size, "expiresIn": int(self.files.ttl_s)})
        if method in ("GET", "HEAD") and (path in ("/", "/playground") or path.startswith("/static/")):
            return await asyncio.to_thread(_static_response, "index.html" if path in ("/", "/playground") else path[len("/static/"):])
        if path == "/healthz" and method in ("GET", "HEAD"):
            return json_response(200, {"status": "ok", "queue": len(self.engine.queue), "sessions": len(self.sessions),
                                       "tasks": len(self.tasks), "counters": self.gateway.counters, "connections": self.limits.stats(),
                                       "modelCache": self.engine.cache_stats()})
        if path.startswith("/images/") and method in ("GET", "HEAD"):
            file = self.engine.images.path_for_name(unquote(path[len("/images/"):]))
            if file is None:
                return json_response(404, {"errors": [{"code": "imageNotFound", "message": "no such image"}]})
            data = await asyncio.to_thread(file.read_bytes)
            return 200, [(b"content-type", self.engine.images.mime_for(file).encode()), (b"cache-control", b"private, max-age=86400")], data
        if path.rstrip("/") == "/v1":
            if method != "POST":
                return json_response(405, {"errors": [{"code": "methodNotAllowed", "message": "POST a task array to /v1, or open a WebSocket"}]})
            return await self._post_tasks(headers, body, peer)
        if self.dialects.owns(path):  # Novita, stablediffusionapi: server/dialects
            ctx = request_context(headers.get("host"), self.config.host, self.port or 0, self.config.public_url, peer=peer)
            return await self.dialects.handle(method, path, target.query, headers, body, ctx)
        return json_response(404, {"errors": [{"code": "notFound", "message": f"no route {path[:100]}"}]})

    async def _post_tasks(self, headers: dict[str, str], body: bytes, peer: str) -> HTTPResponse:
        key = self._bearer(headers)
        if not key:
            return json_response(401, {"errors": [{"code": "missingApiKey", "message": "send Authorization: Bearer <apiKey>"}]})
        team = await self.gateway.team_for_key(key, peer)
        if not isinstance(team, str):
            status = 429 if team.code == "authRateLimited" else 401
            return json_response(status, {"errors": [msgspec.to_builtins(team)]})
        ctx = request_context(headers.get("host"), self.config.host, self.port or 0, self.config.public_url, peer=peer)
        conn = CollectingConn(Session(team, resumable=False), ctx, self.config.max_http_response_bytes)
        jobs = await self.gateway.handle_frame(conn, body)
        if jobs:
            await asyncio.wait(jobs)
        return json_response(200, conn.body())

    # ---- lifecycle --------------------------------------------------------

    def ensure_first_key(self) -> str | None:
        """On a first start with no keys, create one (printed once by the CLI)."""
        if self.keys.count_live() == 0:
            return self.keys.create()
        return None

    async def start(self) -> None:
        self.engine.start()
        http_factory = functools.partial(HTTPProtocol, self._http_handler, self.config.max_http_body_bytes, self._body_sink,
                                         head_timeout_s=self.config.head_timeout_s, idle_timeout_s=self.config.http_idle_timeout_s)
        self.ws_server = await serve(
            self._ws_handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=functools.partial(SniffingConnection, http_factory=http_factory, limits=self.limits,
                                                head_timeout_s=self.config.head_timeout_s),
            max_size=self.config.hard_frame_bytes,
            compression=None,
            server_header="wisp",
            ping_interval=self.config.keepalive_interval_s,
            ping_timeout=self.config.keepalive_timeout_s,
        )
        sockets = self.ws_server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())
        self._revocations = asyncio.get_running_loop().create_task(self._watch_revocations())
        if self.config.warm_builtin:
            warm = asyncio.get_running_loop().create_task(self.engine.warm(BUILTIN_SD15_AIR))
            warm.add_done_callback(_log_warm_failure)

    async def _watch_revocations(self) -> None:
        """Every ``revocation_check_s``: sessions whose key was revoked (by any process) are ended, and the engine's
        in-memory model view is dropped if another process wrote the registry."""
        while True:
            await asyncio.sleep(self.config.revocation_check_s)
            try:
                await self.gateway.enforce_revocations()
                await asyncio.to_thread(self.engine.model_view.check)
            except Exception:  # a busy database must not end the watch
                log.exception("revocation check failed")

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(10)
            self.sessions.sweep()
            self.tasks.prune()
            self.files.sweep()
            await asyncio.to_thread(self.engine.registry.record_daily_usage)

    async def stop(self, grace_s: float | None = None) -> None:
        grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self.ws_server is not None:
            self.ws_server.close(close_connections=True)
            await self.ws_server.wait_closed()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._revocations.cancel()
        jobs = set(self.gateway.jobs)
        if jobs:
            _, pending = await asyncio.wait(jobs, timeout=grace_s)
            for job in pending:
                job.cancel()  # each records itself as interrupted (journal) on its way out
            if pending:
                await asyncio.wait(pending, timeout=5)
        await asyncio.to_thread(self.engine.stop)
        await self.webhooks.aclose()
        await asyncio.to_thread(self.journal.close)


def _log_warm_failure(task: asyncio.Task) -> None:
    from engine.errors import EngineStopped

    if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), EngineStopped):
        log.error("warm-up failed", exc_info=task.exception())


async def run_forever(config: ServerConfig, announce: bool = True) -> None:
    # The device worker is a Python thread: between torch kernels it holds the GIL.
    # A short switch interval lets the event loop take it back quickly, so pongs
    # stay prompt while inference runs (5 ms default → 0.5 ms; measured in bench/sockets.py).
    sys.setswitchinterval(config.gil_switch_interval_s)
    server = WispServer(config)
    first_key = server.ensure_first_key()
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    if first_key and announce:
        print(f"created API key for team 'default' (shown once): {first_key}", flush=True)
    print(f"wisp listening on ws://{config.host}:{server.port}/v1", flush=True)
    await stop.wait()
    print("wisp shutting down", flush=True)
    await server.stop()
    if server.engine.device_busy():
        # One denoising step can outlast the grace period (a huge image on a CPU).  Torch must not be
        # running on a thread while the interpreter tears down (the C++ runtime aborts the process), and
        # everything worth keeping is already written: the journal is closed, the task marked interrupted.
        log.warning("the device is still inside a step; exiting without waiting for it (its task is recorded as interrupted)")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
