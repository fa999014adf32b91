"""Slow consumers: a client that stops reading cannot grow the server's memory without bound.

Two levels:

* ``SocketConn`` alone, over a real loopback WebSocket whose client never
  reads: 200 concurrent 1 MiB emits (what 200 finished tasks would send)
  never put more than ``max_outgoing_bytes`` (+ one frame and the
  transport's own high-water mark) behind the socket; the socket is given
  up and every frame not written comes back to the caller (the session keeps
  it for a resume).
* The real server: a raw-socket client authenticates, floods imageInference
  tasks with base64 images and never reads.  The server's RSS stays under a
  stated bound, another client's pings are all answered meanwhile, the slow
  socket is dropped, and every result is then available through getResponse.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from server.connection import SocketConn, request_context
from tests.conftest import start_server, stop_server

MIB = 1024 * 1024


class RawClient:
    """A WebSocket client over a plain socket with a tiny receive buffer, that reads only when told to."""

    def __init__(self, url: str) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        self.sock.connect((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.sock.settimeout(30)
        while self.protocol.state.name != "OPEN":
            data = self.sock.recv(65536)
            assert data, "handshake failed"
            self.protocol.receive_data(data)
            self._flush()

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def send(self, payload: object) -> None:
        self.protocol.send_text(json.dumps(payload).encode())
        self._flush()

    def read_json(self) -> dict:
        while True:
            for event in self.protocol.events_received():
                if getattr(event, "opcode", None) is not None and event.opcode.name == "TEXT":
                    return json.loads(event.data)
            data = self.sock.recv(65536)
            assert data, "server closed"
            self.protocol.receive_data(data)
            self._flush()


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- SocketConn alone ------------------------------------------------------------


async def test_emits_to_a_client_that_never_reads_are_bounded_and_returned():
    limit, frame = 4 * MIB, b"x" * MIB
    config = SimpleNamespace(max_outgoing_bytes=limit, send_stall_s=2.0, idle_timeout_s=120.0)
    peak = 0
    outcome: dict[str, object] = {}
    done = asyncio.Event()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        nonlocal peak
        conn = SocketConn(ws, SimpleNamespace(config=config), request_context(None, "127.0.0.1", 0, None))

        async def emit() -> list[bytes]:
            nonlocal peak
            left = await conn.send_frames([frame])
            peak = max(peak, conn.outgoing_bytes())
            return left

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, conn.outgoing_bytes())
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(emit() for _ in range(200)))
        done.set()
        await watcher
        outcome["unsent"] = sum(len(r) for r in results)
        outcome["gave_up"] = conn.gave_up

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await asyncio.to_thread(RawClient, f"ws://127.0.0.1:{port}/")
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            client.sock.close()
    # never more than the limit + one frame + websockets' own 32 KiB high-water mark waits for the client
    assert peak <= limit + len(frame) + 64 * 1024, peak
    assert outcome["gave_up"] and "does not read" in str(outcome["gave_up"])
    # the socket took a few MiB at most (kernel buffers); everything else came back to be kept for resume
    assert 150 <= outcome["unsent"] <= 200  # type: ignore[operator]


async def test_a_reading_client_gets_everything():
    """The bound does not drop a client that reads: 64 MiB through a 4 MiB limit arrives whole and in order."""
    config = SimpleNamespace(max_outgoing_bytes=4 * MIB, send_stall_s=30.0, idle_timeout_s=120.0)
    outcome: dict[str, object] = {}

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        conn = SocketConn(ws, SimpleNamespace(config=config), request_context(None, "127.0.0.1", 0, None))
        frames = [str(i).encode().ljust(MIB, b".") for i in range(64)]
        outcome["unsent"] = await conn.send_frames(frames)
        outcome["gave_up"] = conn.gave_up
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            got = [await asyncio.wait_for(ws.recv(decode=False), 30) for _ in range(64)]
    assert [int(g.rstrip(b".")) for g in got] == list(range(64))
    assert outcome == {"unsent": [], "gave_up": None}


# ---- the real server -------------------------------------------------------------

N_TASKS = 8
RSS_BOUND = 96 * MIB
"""How far the server's peak RSS while the silent client's tasks run may exceed its peak while a
reading client ran the same workload just before (each 512×512 image costs ~150 MiB of transient
working memory, so peaks are compared with peaks): the silent client's results in the task store
(~8 MiB of base64 PNGs), the socket's outgoing bound (2 MiB here), the session's resume buffer
(≤ 32 MiB) and allocator slack.  Without the bound the write buffer alone would hold every result
a second time, and keep growing for as long as the client stays connected."""


class PeakRss:
    """Samples a process's VmRSS every 20 ms in a thread; ``take()`` returns the peak since the last take."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, vm_rss_bytes(self.pid))

    def take(self) -> int:
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def flood(uuids: list[str], prompt: str) -> list[list[dict]]:
    """The tasks in frames of 4: 512×512, one step, base64 PNG replies (~1 MiB each)."""
    return [[{"taskType": "imageInference", "taskUUID": u, "model": "wisp:tiny-sd15@1", "positivePrompt": f"{prompt} {u}",
              "width": 512, "height": 512, "steps": 1, "seed": 1 + i + chunk, "outputType": "base64Data"}
             for i, u in enumerate(uuids[chunk:chunk + 4])]
            for chunk in range(0, len(uuids), 4)]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("slow") / "data",
        env={"WISP_MAX_OUTGOING_BYTES": str(2 * MIB), "WISP_SEND_STALL": "3",
             # keepalive would drop the silent client too: push it out of the way to test the write bound itself
             "WISP_KEEPALIVE_INTERVAL": "300", "WISP_KEEPALIVE_TIMEOUT": "300"},
    )
    yield server
    stop_server(server)


async def ask(ws, task: dict) -> dict:  # type: ignore[no-untyped-def]
    await ws.send(json.dumps([task]))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        for part in frame.get("data", []) + frame.get("errors", []):
            if part.get("taskUUID") == task["taskUUID"]:
                return frame


async def test_a_client_that_stops_reading_does_not_grow_the_server(slow_server):
    server = slow_server
    async with connect(server.ws_url, max_size=None) as watcher:
        await watcher.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
        json.loads(await watcher.recv())
        # control: a client that reads runs the same workload, so the engine's working set is in place
        rss = PeakRss(server.proc.pid)
        control = [str(uuid.uuid4()) for _ in range(N_TASKS)]
        for frame in flood(control, "control"):
            await watcher.send(json.dumps(frame))
        seen: set[str] = set()
        while len(seen) < len(control):
            reply = json.loads(await asyncio.wait_for(watcher.recv(), 120))
            assert "errors" not in reply, reply
            seen |= {d["taskUUID"] for d in reply["data"] if d.get("imageBase64Data")}
        baseline = rss.take()  # the peak while a reading client ran the workload

        slow = await asyncio.to_thread(RawClient, server.ws_url)
        slow.send([{"taskType": "authentication", "apiKey": server.key}])
        assert "data" in await asyncio.to_thread(slow.read_json)
        uuids = [str(uuid.uuid4()) for _ in range(N_TASKS)]
        for frame in flood(uuids, "noise"):
            slow.send(frame)
        # ...and never reads again.  Meanwhile the watcher pings and the server's RSS is sampled.
        pongs, pings = 0, 0
        deadline = time.monotonic() + 240
        finished = 0
        while time.monotonic() < deadline:
            pings += 1
            pong = await ask(watcher, {"taskType": "ping", "ping": True, "taskUUID": str(uuid.uuid4())})
            pongs += bool(pong.get("data"))
            if "slow consumer" in server.log():
                probe = await ask(watcher, {"taskType": "getResponse", "taskUUID": uuids[-1]})
                finished = sum(1 for d in probe.get("data", []) if d.get("imageBase64Data"))
                if finished:
                    break
            await asyncio.sleep(0.25)
        peak = rss.take()
        rss.stop()
        assert "slow consumer" in server.log(), "the silent client was never dropped"
        assert pongs == pings
        assert peak - baseline <= RSS_BOUND, f"peak RSS {(peak - baseline) / MIB:.0f} MiB above the reading client's"

        # the dropped socket is closed by the server
        slow.sock.settimeout(10)
        with _closed_ok():
            while await asyncio.to_thread(slow.sock.recv, 1 << 20):
                pass
        slow.sock.close()

        # every result is still there
        for u in uuids:
            for _ in range(240):
                reply = await ask(watcher, {"taskType": "getResponse", "taskUUID": u})
                items = [d for d in reply.get("data", []) if d.get("imageBase64Data")]
                if items:
                    break
                await asyncio.sleep(0.5)
            assert items and items[0]["taskUUID"] == u, reply


class _closed_ok:
    """Reading a socket the server aborted ends in EOF or a reset: both are fine."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:  # type: ignore[no-untyped-def]
        return kind is None or issubclass(kind, (ConnectionResetError, BrokenPipeError))
