"""Assemble and run the server: engine, registry, gateway, one listening port.

Shutdown goes in order (uvicorn's habit): stop accepting, close sockets with
1001 (going away), let running jobs finish for a grace period, then cancel
what is left; every cancelled task is recorded as failed, none vanishes.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from engine.core import Engine, effective_max_batch
from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.team_settings import TeamSettings
from server.config import ServerConfig
from server.connection import SocketConn, request_context
from server.dialects import DialectRouter
from server.gateway import Gateway
from server.files import FileDrop
from server import metrics, tasklog
from server.http import HTTPProtocol
from server.routes import BlobOrigin, HTTPRoutes
from server.limits import ConnectionLimits, default_max_connections, raise_fd_limit
from server.listener import SniffingConnection
from server.sessions import SessionRegistry
from server.journal import TaskJournal
from server.tasks import TaskStore
from server.webhooks import WebhookSender

log = logging.getLogger("wisp.server")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wisp")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


VERSION = _version()


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


class WispServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = lock_data_dir(config.data_dir)  # before anything in it is cleared
        prepare_data_dir(config.data_dir)
        self.db = Database(config.data_dir / "wisp.db", write_interval_s=config.journal_interval_s)
        self.keys = KeyStore(self.db)
        given = TeamSettings(self.db).ensure_default_sources()
        if given:
            log.info("gave %d team(s) from before default sources their default source", given)
        engine_config = config.engine_config()
        policy = engine_config.net
        self.fleet: Any = None
        if config.engine == "embedded":
            self.engine = Engine(engine_config, db=self.db)
        elif config.engine in ("ray", "ray-local"):
            from engine.fleet.frontend import FleetEngine

            self.engine = FleetEngine(engine_config, db=self.db)
        else:
            raise ValueError(f"unknown engine {config.engine!r}: use embedded, ray or ray-local")
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
        self.routes = HTTPRoutes(config, self.keys, self.gateway, self.files, self.engine.images, self.dialects,
                                 port=lambda: self.port or 0, health=self.health, origin=self._origin())
        fd_limit = raise_fd_limit()
        self.limits = ConnectionLimits(config.max_connections or default_max_connections(fd_limit),
                                       config.max_unauthenticated_per_address)
        self.ws_server: Server | None = None
        self.started_at = time.monotonic()
        metrics.watch(self.metrics_state)
        self.port: int | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    def _stored_image(self, image_uuid: str) -> tuple[bytes, str] | None:
        """A generated image's bytes and mime, for a journaled base64 result read back after a restart."""
        path = self.engine.images.find(image_uuid)
        return None if path is None else (path.read_bytes(), self.engine.images.mime_for(path))

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: version, uptime, the server's counters and the model cache's state."""
        return {"status": "ok", "version": VERSION, "uptimeSeconds": round(time.monotonic() - self.started_at, 3), "queue": len(self.engine.queue), "sessions": len(self.sessions), "tasks": len(self.tasks),
                "counters": self.gateway.counters, "connections": self.limits.stats(), "modelCache": self.engine.cache_stats(),
                **({"fleet": self.engine.fleet_summary()} if self.fleet is not None else {})}

    def metrics_state(self) -> dict[str, Any]:
        """What ``/metrics`` reads of the live server at each scrape (server.metrics.StateCollector)."""
        return {"queue": len(self.engine.queue), "sessions": len(self.sessions), "in_flight": self.sessions.in_flight(),
                "connections": self.limits.stats(), "model_cache": self.engine.cache_stats(),
                "batches": self.engine.batch_sizes(), "training_jobs": self.engine.training_jobs(),
                "webhook_failures": self.webhooks.failures}

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

    # ---- lifecycle --------------------------------------------------------

    def summary(self) -> str:
        """The start-up log line: what this server is and runs with (no secrets)."""
        engine, cache = self.engine, self.engine.cache.stats()
        mib = 1024 * 1024
        ttl = f"{self.config.image_ttl_s / 86400:g} d" if self.config.image_ttl_s else "kept"
        return (f"wisp {VERSION} · data dir {self.config.data_dir} · engine {self.config.engine} · device {engine.config.device} "
                f"({engine.config.torch_threads} torch threads, dtype {engine.config.dtype}) · model cache {cache.device_budget // mib} MiB "
                f"device + {cache.host_budget // mib} MiB host · LoRA cache {engine.lora_cache.stats().as_dict().get('budget', 0) // mib} MiB · "
                f"max batch {effective_max_batch(engine.config)} · work limit {engine.max_work:g} MP-steps · images {ttl} · "
                f"log {os.environ.get('WISP_LOG_FORMAT', 'text')} at {logging.getLevelName(logging.getLogger().getEffectiveLevel())}")

    def ensure_first_key(self) -> str | None:
        """On a first start with no keys, create one (printed once by the CLI)."""
        if self.keys.count_live() == 0:
            return self.keys.create()
        return None

    def _origin(self) -> "BlobOrigin | None":
        """The route replicas fetch model files from (fleet engines only)."""
        from engine.fleet.frontend import FleetEngine

        if not isinstance(self.engine, FleetEngine):
            return None
        return BlobOrigin(self.engine.token, self.engine.model_store)

    async def _connect_fleet(self) -> None:
        """Join (or start) the Ray cluster and its engine application; blocking Ray calls run in a thread."""
        from engine.fleet.cluster import connect

        settings = self.config.fleet_settings()
        started = time.monotonic()
        print(f"wisp: connecting to the engine fleet ({settings.mode}"
              f"{', ' + settings.address if settings.address else ''})…", flush=True)
        self.fleet = await _bounded(connect, settings, self.config.fleet_connect_timeout_s)
        log.info("engine fleet ready in %.1f s (%s, %d GPU(s) in the cluster)", time.monotonic() - started, settings.mode,
                 self.fleet.gpus)

    async def start(self) -> None:
        self.engine.start()
        if self.config.engine != "embedded":
            await self._connect_fleet()
        http_factory = functools.partial(HTTPProtocol, self.routes.handle, self.config.max_http_body_bytes, self.routes.body_sink,
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
        if self.fleet is not None:
            host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            self.engine.attach(self.fleet, self.config.fleet_origin or f"http://{_url_host(host)}:{self.port}")
            self._fleet_watch = asyncio.get_running_loop().create_task(self.engine.watch_replicas())
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())
        self._revocations = asyncio.get_running_loop().create_task(self._watch_revocations())
        if self.config.warm_builtin and self.fleet is None:
            warm = asyncio.get_running_loop().create_task(self.engine.warm(BUILTIN_SD15_AIR, freeze_libraries=True))
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
        last = {"chores": 0.0, "images": 0.0, "unowned": 0.0}
        while True:
            now = time.monotonic()
            if now - last["chores"] >= 10:
                last["chores"] = now
                self.sessions.sweep()
                self.tasks.prune()
                self.files.sweep()
                await asyncio.to_thread(self.engine.registry.record_daily_usage)
                if self.engine.files_to_remove():
                    await asyncio.to_thread(self.engine.collect_files)  # deleted models' files, once no job uses them
            if now - last["images"] >= self.config.image_sweep_s:
                last["images"] = now
                unowned = now - last["unowned"] >= 86400 or last["unowned"] == 0.0
                if unowned:
                    last["unowned"] = now
                await self._sweep_images(unowned)
            await asyncio.sleep(min(10.0, self.config.image_sweep_s))

    async def _sweep_images(self, unowned: bool) -> None:
        """Delete expired images (their request's ``ttl``, else ``WISP_IMAGE_TTL``); a failure is logged, never fatal."""
        try:
            removed = await asyncio.to_thread(self.engine.images.sweep, None, unowned)
        except Exception:
            log.exception("the image sweep failed; it is tried again at the next interval")
            return
        if removed:
            log.info("deleted %d expired image(s)", removed)

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
            print(f"wisp: waiting up to {grace_s:g} s for {len(jobs)} running task(s) to finish", flush=True)
            _, pending = await asyncio.wait(jobs, timeout=grace_s)
            for job in pending:
                job.cancel()  # each records itself as interrupted (journal) on its way out
            if pending:
                await asyncio.wait(pending, timeout=5)
                print(f"wisp: interrupted {len(pending)} task(s) (getResponse reports them as taskInterrupted)", flush=True)
        await asyncio.to_thread(self.engine.stop)
        if self.fleet is not None:
            self._fleet_watch.cancel()
            await asyncio.to_thread(self.fleet.close)
            self.fleet = None
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
    tasklog.ride_on(server.db.writer)  # task lines are written after the journal's commits, on the same thread
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    if first_key and announce:
        print(f"created API key for team 'default' (shown once): {first_key}", flush=True)
    log.info("%s", server.summary())
    print(f"wisp listening on ws://{config.host}:{server.port}/v1", flush=True)
    if announce:
        print(f"wisp playground: http://{config.host}:{server.port}/  (paste an API key there)", flush=True)
        print(f"wisp data dir: {config.data_dir}  (admin commands: wisp keys|sources|teams … --data-dir {config.data_dir})",
              flush=True)
        if first_key:
            print("next: generate in the playground, or upload a model with "
                  f"`WISP_API_KEY=<key> wisp upload FILE.safetensors --category lora --server http://{config.host}:{server.port}` "
                  "(it goes under your team's source, e.g. default:FILE@1). "
                  f"Lost the key? `wisp keys create --data-dir {config.data_dir}` makes another.", flush=True)
    await stop.wait()
    print("wisp shutting down", flush=True)
    await server.stop()
    if server.engine.device_busy():
        # One denoising step can outlast the grace period (a huge image on a CPU).  Torch must not be
        # running on a thread while the interpreter tears down (the C++ runtime aborts the process), and
        # everything worth keeping is already written: the journal is closed, the task marked interrupted.
        log.warning("the device is still inside a step; exiting without waiting for it (its task is recorded as interrupted)")
        from server.tasklog import flush

        flush()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 literals bracketed)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _bounded(connect: Any, settings: Any, timeout_s: float) -> Any:
    """``connect(settings)`` on a daemon thread, within ``timeout_s``; a failure or timeout is a plain FleetUnavailable.

    Ray's own connect retries an unreachable cluster for minutes: a daemon thread lets wisp say so and exit
    instead of hanging (an executor thread would hold the exit until Ray gave up)."""
    import threading

    from engine.errors import FleetUnavailable

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = connect(settings)
        except BaseException as exc:  # handed to the loop, said plainly there
            error = exc  # ``exc`` itself is unbound once this block ends, before the loop runs the callback
            loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

    threading.Thread(target=run, name="wisp-fleet-connect", daemon=True).start()
    where = settings.address or ("a local cluster" if settings.mode == "ray-local" else "RAY_ADDRESS / auto")
    try:
        return await asyncio.wait_for(done, timeout_s)
    except asyncio.TimeoutError:
        raise FleetUnavailable(f"the Ray cluster at {where} did not answer within {timeout_s:g} s "
                               "(is it running? check --ray-address, or WISP_FLEET_CONNECT_TIMEOUT)") from None
    except ImportError:
        raise FleetUnavailable("--engine ray needs Ray: pip install -e '.[fleet]'") from None
    except Exception as exc:
        raise FleetUnavailable(f"could not start the engine fleet on {where}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
