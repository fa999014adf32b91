"""What a peer can make the server spend before (and after) it proves a key — issue 18's High items.

Each test drives a real ``wisp serve`` subprocess from raw sockets, the way
a hostile or broken client would, and checks the bound that now holds:
replies that do not grow with what a stranger sends, deadlines on every
stage a connection can stall in, caps on connections, replies bounded in
bytes, and downloads that cannot starve the server nor stop it stopping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.hostile import Trickle
from tests.conftest import RunningServer, start_server, stop_server, wisp_cli

MODEL = "wisp:tiny-sd15@1"


def new_uuid() -> str:
    return str(uuid.uuid4())


def rss_kib(pid: int) -> int:
    """The process's resident set now (VmRSS), in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


class RawWebSocket:
    """A hand-made WebSocket client on a plain socket: it sends, and reads only when told to.

    The library clients read into their own buffers whatever arrives; a
    client that does not read at all has to be written by hand.
    """

    def __init__(self, port: int, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        elif len(data) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(data))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(data))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if len(data) < 4096 else _mask(data, mask)
        self.sock.sendall(header + mask + masked)

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def recv(self) -> tuple[int, bytes]:
        """One frame: (opcode, payload)."""
        first, second = self._exact(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack(">H", self._exact(2))[0]
        elif size == 127:
            size = struct.unpack(">Q", self._exact(8))[0]
        return first & 0x0F, self._exact(size)

    def recv_json(self) -> dict[str, Any]:
        while True:
            opcode, payload = self.recv()
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                raise ConnectionError(f"closed: {payload[:2].hex()} {payload[2:]!r}")

    def close(self) -> None:
        self.sock.close()


def _mask(data: bytes, mask: bytes) -> bytes:
    import numpy as np

    arr = np.frombuffer(data, dtype=np.uint8)
    key = np.resize(np.frombuffer(mask, dtype=np.uint8), arr.size)
    return (arr ^ key).tobytes()


# ---- 1. pre-auth frame amplification -----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("hostile") / "data",
        env={"WISP_WARM_BUILTIN": "0", "WISP_MAX_OUTGOING_BYTES": str(1024 * 1024), "WISP_SEND_STALL": "60",
             "WISP_MAX_HTTP_RESPONSE_BYTES": str(2 * 1024 * 1024)},
    )
    yield running
    stop_server(running)


def test_pre_auth_frame_of_empty_objects_gets_one_error(server: RunningServer):
    """20,000 ``{}`` before authentication: one error back, not one per element (nor one per task head)."""
    ws = RawWebSocket(server.port)
    try:
        ws.send("[" + ",".join(["{}"] * 20_000) + "]")
        reply = ws.recv_json()
        assert list(reply) == ["errors"] and len(reply["errors"]) == 1, str(reply)[:300]
        assert reply["errors"][0]["code"] == "notAuthenticated"
        ws.send([{"taskType": "ping", "ping": True}])  # the socket is still served
        assert ws.recv_json() == {"data": [{"taskType": "ping", "pong": True}]}
    finally:
        ws.close()


def test_pre_auth_tasks_without_authentication_get_one_error_routed_to_the_first(server: RunningServer):
    ws = RawWebSocket(server.port)
    try:
        first, second = new_uuid(), new_uuid()
        ws.send([{"taskType": "getResponse", "taskUUID": first}, {"taskType": "getResponse", "taskUUID": second}])
        reply = ws.recv_json()
        assert [(e["code"], e.get("taskUUID")) for e in reply["errors"]] == [("notAuthenticated", first)]
    finally:
        ws.close()


def test_pre_auth_frame_over_64_kib_gets_one_error_without_being_decoded(server: RunningServer):
    ws = RawWebSocket(server.port)
    try:
        ws.send([{"taskType": "imageInference", "taskUUID": new_uuid(), "positivePrompt": "x" * 100}] * 1000)
        reply = ws.recv_json()
        assert len(reply["errors"]) == 1 and reply["errors"][0]["code"] == "notAuthenticated"
        assert "65536" in reply["errors"][0]["message"]
    finally:
        ws.close()


async def test_pre_auth_frame_over_1_mib_closes_the_socket_with_1009(server: RunningServer):
    async with connect(server.ws_url, max_size=None) as ws:
        await ws.send("[" + ",".join(["{}"] * 1_048_576) + "]")  # 3 MiB: the red team's probe
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_authenticated_frame_of_too_many_tasks_gets_a_bounded_number_of_errors(server: RunningServer):
    async with connect(server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
        assert "data" in json.loads(await ws.recv())
        await ws.send("[" + ",".join(['{"taskType":"ping","taskUUID":"%s"}' % new_uuid()] * 100_000) + "]")
        errors: list[dict[str, Any]] = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            errors += frame.get("errors", [])
            if errors and "more tasks of this frame" in errors[-1]["message"]:
                break
        assert len(errors) == 257 and {e["code"] for e in errors} == {"tooManyTasks"}
        assert errors[0].get("taskUUID") and "taskUUID" not in errors[-1]
        assert "99744 more" in errors[-1]["message"]


# ---- 3. getResponse amplification ---------------------------------------------


async def _base64_task(server: RunningServer, images: int) -> str:
    task_uuid = new_uuid()
    async with connect(server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
        await ws.recv()
        await ws.send(json.dumps([{
            "taskType": "imageInference", "taskUUID": task_uuid, "model": MODEL, "positivePrompt": "noise", "width": 256,
            "height": 256, "steps": 1, "numberResults": images, "seed": 3, "outputType": "base64Data",
        }]))
        got = 0
        while got < images:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            assert "errors" not in frame, frame
            got += sum(1 for item in frame["data"] if item.get("taskUUID") == task_uuid)
    return task_uuid


async def test_get_response_flood_from_a_client_that_does_not_read_stays_within_the_byte_budget(server: RunningServer):
    """64 getResponse for one large result, from sockets that never read: memory stays near the outgoing cap."""
    task_uuid = await _base64_task(server, images=4)
    async with httpx.AsyncClient() as http:
        result = (await http.post(f"{server.http_url}/v1", headers={"Authorization": f"Bearer {server.key}"},
                                  json=[{"taskType": "getResponse", "taskUUID": task_uuid}])).content
    assert len(result) > 400_000, len(result)  # the reply being repeated is large
    before = rss_kib(server.proc.pid)
    sockets = []
    for _ in range(3):
        ws = RawWebSocket(server.port, rcvbuf=4096)
        ws.send([{"taskType": "authentication", "apiKey": server.key}])
        assert "data" in ws.recv_json()
        ws.send([{"taskType": "getResponse", "taskUUID": task_uuid} for _ in range(64)])
        sockets.append(ws)
    try:
        peak = before
        for _ in range(30):  # 3 s: the server has had time to build (or not) every reply; it keeps what it built
            await asyncio.sleep(0.1)
            peak = max(peak, rss_kib(server.proc.pid))
        grown_mib = (peak - before) / 1024
        # Eagerly encoded, 3 × 64 replies of ~0.5 MB are ~100 MB; lazily, about one frame plus the 1 MiB cap per socket.
        assert grown_mib < 40, f"peak RSS grew {grown_mib:.0f} MiB"
        # Still serving others meanwhile.
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"data": [{"taskType": "ping", "pong": True}]}
    finally:
        for ws in sockets:
            ws.close()


async def test_post_of_many_get_responses_is_cut_at_the_response_budget(server: RunningServer):
    task_uuid = await _base64_task(server, images=4)
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{server.http_url}/v1", headers={"Authorization": f"Bearer {server.key}"},
                                   json=[{"taskType": "getResponse", "taskUUID": task_uuid} for _ in range(12)])
    assert response.status_code == 200
    assert len(response.content) < 3 * 1024 * 1024
    body = response.json()
    assert body["data"] and all(item["taskUUID"] == task_uuid for item in body["data"])
    assert [e["code"] for e in body["errors"]] == ["responseTooLarge"]


# ---- 2. deadlines and connection caps -------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("deadlines") / "data",
        env={"WISP_WARM_BUILTIN": "0", "WISP_HEAD_TIMEOUT": "1", "WISP_HTTP_IDLE_TIMEOUT": "1", "WISP_AUTH_TIMEOUT": "2",
             "WISP_MAX_UNAUTHENTICATED_PER_ADDRESS": "6", "WISP_MAX_CONNECTIONS": "10"},
    )
    yield running
    stop_server(running)


def _half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sock.settimeout(15)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _wait_for_free_slots(server: RunningServer) -> None:
    """Earlier tests' connections end within the 1 s deadlines: wait until /healthz shows none unauthenticated."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            stats = httpx.get(f"{server.http_url}/healthz", headers={"Connection": "close"}).json()["connections"]
            if stats["unauthenticated"] <= 1:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("connections from earlier tests were not closed")


def test_half_sent_request_head_is_answered_408_and_closed(strict: RunningServer):
    _wait_for_free_slots(strict)
    sock = _half_sent(strict.port)
    try:
        answer = _read_all(sock)  # returns once the server closes (the socket timeout is 15 s)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_stalled_body_is_answered_408_and_idle_keep_alive_closed(strict: RunningServer):
    _wait_for_free_slots(strict)
    sock = socket.create_connection(("127.0.0.1", strict.port))
    sock.settimeout(15)
    try:
        sock.sendall(b"POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{")
        answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        sock.close()
    sock = socket.create_connection(("127.0.0.1", strict.port))
    sock.settimeout(15)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock)  # answered, then closed after 1 s of keep-alive silence
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1, answer
    finally:
        sock.close()


async def test_unauthenticated_socket_is_closed_at_its_deadline_whatever_it_sends(strict: RunningServer):
    async with connect(strict.ws_url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(100):  # 10 s of pings, answered, but they do not keep the socket open
                await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
                await asyncio.wait_for(ws.recv(), 5)
                await asyncio.sleep(0.1)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "authenticate" in closed.value.rcvd.reason


async def test_one_address_cannot_hold_every_connection(strict: RunningServer):
    """Six half-sent heads use the address's allowance; a seventh is refused clearly; authenticated sockets are not counted."""
    _wait_for_free_slots(strict)
    held = [_half_sent(strict.port) for _ in range(5)]  # the sixth slot is the refusal probe's own
    try:
        extra = _half_sent(strict.port)
        refused = socket.create_connection(("127.0.0.1", strict.port))
        refused.settimeout(15)
        answer = _read_all(refused)
        refused.close()
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["errors"][0]["code"] == "tooManyConnections"
    finally:
        for sock in held:
            sock.close()
    # Authenticated sockets leave the allowance free for new strangers.
    _wait_for_free_slots(strict)
    sockets = []
    try:
        for _ in range(6):
            ws = await connect(strict.ws_url)
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": strict.key}]))
            assert "data" in json.loads(await ws.recv())
            sockets.append(ws)
        response = httpx.get(f"{strict.http_url}/healthz", headers={"Connection": "close"})
        assert response.status_code == 200
        stats = response.json()["connections"]
        assert stats["open"] >= 6 and stats["unauthenticated"] <= 1
        # ... but the whole server's cap still holds: 10 connections at most.
        more = []
        try:
            for _ in range(4):
                more.append(_half_sent(strict.port))
            over = socket.create_connection(("127.0.0.1", strict.port))
            over.settimeout(15)
            answer = _read_all(over)
            over.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"maximum of 10 connections" in answer, answer
        finally:
            for sock in more:
                sock.close()
    finally:
        for ws in sockets:
            await ws.close()


# ---- 4. downloads on their own threads, with a deadline ------------------------------


@pytest.fixture
def trickle_url() -> Iterator[str]:
    trickle = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    trickle.daemon_threads = True
    Trickle.stop.clear()
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{trickle.server_address[1]}/model.safetensors"
    finally:
        Trickle.stop.set()
        trickle.shutdown()
        trickle.server_close()


def _uploads(url: str, count: int, prefix: str) -> list[dict[str, Any]]:
    return [{
        "taskType": "modelUpload", "taskUUID": new_uuid(), "air": f"slow:{prefix}{i}@1", "category": "lora",
        "architecture": "sd1x", "format": "safetensors", "name": "slow", "version": "1", "downloadURL": url,
        "uniqueIdentifier": f"{prefix}-{i}", "retry": 0,
    } for i in range(count)]


async def _authenticated(running: RunningServer):
    ws = await connect(running.ws_url)
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
    assert "data" in json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws


def test_slow_downloads_do_not_starve_authentication_and_end_at_their_deadline(tmp_path, trickle_url: str):
    """Six downloads that never finish (more than asyncio's default executor has threads on 2 cores)."""
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_DOWNLOAD_THREADS": "3",
                                                   "WISP_DOWNLOAD_TIMEOUT": "3"})
    try:
        assert wisp_cli("sources", "create", "slow", "--data-dir", str(running.data_dir)).returncode == 0

        async def scenario() -> list[tuple[str, bool]]:
            ws = await _authenticated(running)
            uploads = _uploads(trickle_url, 6, "m")
            await ws.send(json.dumps(uploads))
            await asyncio.sleep(0.5)
            for _ in range(5):  # while they run, every new client still authenticates
                other = await _authenticated(running)
                await other.close()
            codes: dict[str, tuple[str, bool]] = {}
            while len(codes) < len(uploads):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                for error in frame.get("errors", []):
                    codes[error["taskUUID"]] = (error["code"], "time limit" in error["message"])
            await ws.close()
            return [codes[u["taskUUID"]] for u in uploads]

        assert asyncio.run(scenario()) == [("downloadFailed", True)] * 6  # each ran into its deadline; none hangs
    finally:
        stop_server(running)


def test_sigterm_during_slow_downloads_stops_the_server(tmp_path, trickle_url: str):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_SHUTDOWN_GRACE": "1"})
    try:
        assert wisp_cli("sources", "create", "slow", "--data-dir", str(running.data_dir)).returncode == 0

        async def start_uploads() -> None:
            ws = await _authenticated(running)
            await ws.send(json.dumps(_uploads(trickle_url, 3, "late")))
            await asyncio.sleep(1.5)
            await ws.close()

        asyncio.run(start_uploads())
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=30) == 0
    finally:
        stop_server(running)
