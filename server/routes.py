"""The HTTP routes on the WebSocket port, and their error bodies.

``POST /v1`` (the task array, ``Authorization: Bearer KEY``, answered through
the same gateway as a socket), ``PUT /v1/files`` (a model file streamed to
disk for a later modelUpload), ``GET /v1/account`` (the key's team, its
sources and limits: what a client checks before it sends a file),
``GET /images/<file>``, ``GET /healthz``, the
playground's static files, and the REST dialects under their prefixes.  Every
error body is ``{"errors": [{"code", "message"}]}`` with a code from
:class:`protocol.errors.ErrorCode` (:func:`server.http.error_response`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit

import h11
import msgspec

from engine.fleet.blobs import BLOB_PATH
from engine.images.store import ImageStore
from engine.upload.store import ModelStore
from engine.registry.keys import KeyStore
from protocol.errors import ErrorCode
from server import metrics
from server.account import account_details
from server.config import ServerConfig
from server.connection import request_context
from server.context import RequestContext
from server.dialects import DialectRouter
from server.files import FILES_PATH, FileDrop, FileSink
from server.gateway import Gateway
from server.http import BodySink, Response as HTTPResponse, error_response, json_response
from server.sessions import Session
from server.tasklog import drain

log = logging.getLogger("wisp.server")


class BlobOrigin:
    """``GET /internal/v1/blobs/<sha256>``: model files by content hash, for fleet replicas (engine.fleet.blobs).

    Only with the fleet token (``Authorization: Bearer``, compared in constant
    time); a ``Range: bytes=a-b`` request gets that slice (206), at most
    :data:`MAX_SLICE` bytes, so no response holds a whole model in memory.
    The hash must be a sha256 hex digest: nothing else of the store is reachable.
    """

    MAX_SLICE = 64 * 1024 * 1024

    def __init__(self, token: str, store: ModelStore) -> None:
        self.token = token
        self.store = store

    async def respond(self, name: str, headers: dict[str, str]) -> HTTPResponse:
        if not hmac.compare_digest(HTTPRoutes.bearer(headers).encode(), self.token.encode()):
            return error_response(403, ErrorCode.FORBIDDEN, "model files are served to the fleet's replicas only")
        try:
            path = self.store.path_for(name)
        except ValueError:
            return error_response(404, ErrorCode.NOT_FOUND, "no such model file")
        return await asyncio.to_thread(self._read, path, headers.get("range", ""))

    def _read(self, path: Path, range_header: str) -> HTTPResponse:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return error_response(404, ErrorCode.NOT_FOUND, "no such model file")
        start, end = 0, size - 1
        if range_header.startswith("bytes="):
            first, _, last = range_header[6:].partition("-")
            try:
                start = int(first)
                end = min(int(last) if last else size - 1, size - 1)
            except ValueError:
                return error_response(416, ErrorCode.BAD_REQUEST, "unreadable Range header")
            if start > end and size > 0:
                return error_response(416, ErrorCode.BAD_REQUEST, "Range past the end of the file")
        end = min(end, start + self.MAX_SLICE - 1)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(max(0, end - start + 1))
        status = 206 if (start, end) != (0, size - 1) or range_header else 200
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"content-range", f"bytes {start}-{start + len(data) - 1}/{size}".encode())]
        return status, headers, data


def _is_loopback(peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


ACCOUNT_PATH = "/v1/account"
"""The key's team, sources and limits (a wisp extension; ``wisp upload`` reads it before sending a byte)."""

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".json": "application/json"}


def static_response(name: str) -> HTTPResponse:
    """A file of the playground (``server/static``); names with any path trick are 404."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return error_response(404, ErrorCode.NOT_FOUND, "no such file")
    path = STATIC_DIR / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or not path.is_file():
        return error_response(404, ErrorCode.NOT_FOUND, "no such file")
    headers = [(b"content-type", kind.encode()), (b"cache-control", b"no-cache"),
               (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'")]
    return 200, headers, path.read_bytes()


class CollectingConn:
    """The gateway's view of one ``POST /v1``: replies are gathered into the body."""

    def __init__(self, session: Session, ctx: RequestContext, max_bytes: int) -> None:
        self.session: Session | None = session
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


class HTTPRoutes:
    """One handler for every plain HTTP request (``server.http.HTTPProtocol`` calls :meth:`handle`)."""

    def __init__(
        self, config: ServerConfig, keys: KeyStore, gateway: Gateway, files: FileDrop, images: ImageStore,
        dialects: DialectRouter, port: Callable[[], int], health: Callable[[], dict[str, Any]],
        origin: "BlobOrigin | None" = None,
    ) -> None:
        self.origin = origin
        self.config = config
        self.keys = keys
        self.gateway = gateway
        self.files = files
        self.images = images
        self.dialects = dialects
        self.port = port
        self.health = health

    def metrics(self, headers: dict[str, str], peer: str) -> HTTPResponse:
        """Prometheus text: for loopback scrapers, or anyone with ``WISP_METRICS_TOKEN`` as a Bearer token."""
        token = self.config.metrics_token
        allowed = _is_loopback(peer) or (token is not None and hmac.compare_digest(self.bearer(headers), token))
        if not allowed:
            return error_response(403, ErrorCode.FORBIDDEN, "metrics are served to loopback, or with the server's "
                                  "WISP_METRICS_TOKEN as a Bearer token")
        drain()  # every task that has ended is counted in this scrape, even if the writer thread has not run since
        return 200, [(b"content-type", metrics.CONTENT_TYPE.encode())], metrics.exposition()

    @staticmethod
    def bearer(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def body_sink(self, request: h11.Request, peer: str) -> BodySink | None:
        """Stream ``PUT/POST /v1/files`` bodies to disk; everything else is buffered (and capped)."""
        path = urlsplit(request.target.decode("latin-1")).path
        if request.method not in (b"PUT", b"POST") or path.rstrip("/") != FILES_PATH.rstrip("/"):
            return None
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        key = self.bearer(headers)
        limiter = self.gateway.auth_limiter
        if not key or limiter.retry_after(peer) > 0:
            return None
        team = self.keys.team_of(key)  # one indexed read: the body must not start streaming unauthenticated
        if team is None:
            limiter.failed(peer)
            return None
        return self.files.sink(team, self.config.max_model_bytes)

    async def handle(self, request: h11.Request, body: bytes, sink: BodySink | None = None, peer: str = "") -> HTTPResponse:
        target = urlsplit(request.target.decode("latin-1"))
        path = target.path
        method = request.method.decode()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if path.rstrip("/") == FILES_PATH.rstrip("/") and method in ("PUT", "POST"):
            if not isinstance(sink, FileSink):
                wait = self.gateway.auth_limiter.retry_after(peer)
                if wait > 0:
                    return json_response(429, {"errors": [msgspec.to_builtins(self.gateway.rate_limited(wait))]})
                code = ErrorCode.INVALID_API_KEY if "authorization" in headers else ErrorCode.MISSING_API_KEY
                return error_response(401, code, "send Authorization: Bearer <apiKey>")
            try:
                token = await asyncio.to_thread(sink.finish)
            except OSError as exc:  # the last bytes or the fsync did not fit
                sink.abort()
                log.warning("PUT /v1/files could not be stored: %s", exc)
                return error_response(507, ErrorCode.INSUFFICIENT_STORAGE, "the server could not store this upload")
            metrics.file_received(sink.size)
            ctx = request_context(headers.get("host"), self.config.host, self.port(), self.config.public_url)
            return json_response(201, {"url": f"{ctx.base_url}{FILES_PATH}{token}", "size": sink.size, "expiresIn": int(self.files.ttl_s)})
        if method in ("GET", "HEAD") and (path in ("/", "/playground") or path.startswith("/static/")):
            return await asyncio.to_thread(static_response, "index.html" if path in ("/", "/playground") else path[len("/static/"):])
        if path.rstrip("/") == ACCOUNT_PATH and method in ("GET", "HEAD"):
            return await self._account(headers, peer)
        if path == "/metrics" and method in ("GET", "HEAD"):
            return self.metrics(headers, peer)
        if path == "/healthz" and method in ("GET", "HEAD"):
            return json_response(200, self.health())
        if path.startswith("/images/") and method in ("GET", "HEAD"):
            file = await asyncio.to_thread(self.images.path_for_name, unquote(path[len("/images/"):]))
            if file is None:
                return error_response(404, ErrorCode.IMAGE_NOT_FOUND, "no such image")
            data = await asyncio.to_thread(file.read_bytes)
            return 200, [(b"content-type", self.images.mime_for(file).encode()), (b"cache-control", b"private, max-age=86400")], data
        if path.startswith(BLOB_PATH) and method in ("GET", "HEAD"):
            if self.origin is None:
                return error_response(404, ErrorCode.NOT_FOUND, f"no route {path[:100]}")
            return await self.origin.respond(path[len(BLOB_PATH):], headers)
        if path.rstrip("/") == "/v1":
            if method != "POST":
                return error_response(405, ErrorCode.METHOD_NOT_ALLOWED, "POST a task array to /v1, or open a WebSocket")
            return await self._post_tasks(headers, body, peer)
        if self.dialects.owns(path):  # Novita, stablediffusionapi: server/dialects
            ctx = request_context(headers.get("host"), self.config.host, self.port(), self.config.public_url, peer=peer)
            return await self.dialects.handle(method, path, target.query, headers, body, ctx)
        return error_response(404, ErrorCode.NOT_FOUND, f"no route {path[:100]}")

    async def _team(self, headers: dict[str, str], peer: str) -> str | HTTPResponse:
        """The Bearer key's team, or the response refusing it (401 missing or invalid, 429 rate-limited)."""
        key = self.bearer(headers)
        if not key:
            return error_response(401, ErrorCode.MISSING_API_KEY, "send Authorization: Bearer <apiKey>")
        team = await self.gateway.team_for_key(key, peer)
        if not isinstance(team, str):
            status = 429 if team.code == ErrorCode.AUTH_RATE_LIMITED else 401
            return json_response(status, {"errors": [msgspec.to_builtins(team)]})
        return team

    async def _account(self, headers: dict[str, str], peer: str) -> HTTPResponse:
        team = await self._team(headers, peer)
        if not isinstance(team, str):
            return team
        return json_response(200, await asyncio.to_thread(self.account_details, team))

    def account_details(self, team: str) -> dict[str, Any]:
        """``GET /v1/account`` (a wisp extension): what a client needs before it uploads (:func:`server.account.account_details`)."""
        return account_details(self.keys.db, team, self.config.max_model_bytes)

    async def _post_tasks(self, headers: dict[str, str], body: bytes, peer: str) -> HTTPResponse:
        team = await self._team(headers, peer)
        if not isinstance(team, str):
            return team
        ctx = request_context(headers.get("host"), self.config.host, self.port(), self.config.public_url, peer=peer)
        conn = CollectingConn(Session(team, resumable=False), ctx, self.config.max_http_response_bytes)
        jobs = await self.gateway.handle_frame(conn, body)
        if jobs:
            await asyncio.wait(jobs)
        return json_response(200, conn.body())

