"""A legitimate client's pings while hostile peers push on every bound (issue 18).

Why: the red-team pass found work and memory that grew with what a peer sent
before anything bounded it.  This bench runs one ``wisp serve`` and, in one
run, measures a legitimate authenticated client's ping round trip (p50/p99)
and the server's resident memory twice: first with no other load
("baseline"), then while hostile peers run all at once ("hostile"):

- pre-auth junk: sockets that never authenticate send 60 KB frames of ``{}``
  and 3 MiB frames (the red team's amplification probe);
- slow heads: connections that send half a request head and wait;
- getResponse floods: sockets that never read ask 64 times for one large
  base64 result;
- slow downloads: modelUploads from a loopback server that trickles a byte
  per half second.

Goal (issue 18): ping p99 under hostile load within 2× the baseline p99, and
peak RSS within the baseline peak + a stated margin (the outgoing caps of the
non-reading sockets plus 64 MiB).

Run: ``.venv/bin/python bench/hostile.py [--seconds 20] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ForeignLoad, PYTHON, REPO_ROOT, create_wisp_key, dump_json, environment, event_loop_runner, log, percentile,
    proc_status_kib, render_table, wisp_server,
)

MAX_OUTGOING = 4 * 1024 * 1024
FLOOD_SOCKETS = 4


class Trickle(BaseHTTPRequestHandler):
    """A file server from hell: promises 100 MB and sends one byte every half second, until ``stop`` is set."""

    stop = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(100 * 1024 * 1024))
        self.end_headers()
        while not self.stop.is_set():
            try:
                self.wfile.write(b"\0")
                self.wfile.flush()
            except OSError:
                return
            self.stop.wait(0.5)

    def log_message(self, *args: object) -> None:
        pass


def _raw_ws(port: int) -> socket.socket:
    """A WebSocket opened by hand on a socket with a small receive buffer, that the bench never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("handshake refused")
        head += chunk
    return sock


def text_frame(text: str) -> bytes:
    """A client text frame, masked with the all-zero key (legal, and free: the hostile side spends no CPU on it)."""
    data = text.encode()
    header = bytes([0x81])
    if len(data) < 126:
        header += bytes([0x80 | len(data)])
    elif len(data) < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(data))
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", len(data))
    return header + b"\0\0\0\0" + data


def _send_text(sock: socket.socket, text: str) -> None:
    sock.sendall(text_frame(text))


async def pinger(url: str, key: str, seconds: float, rtts: list[float]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter_ns()
            await ws.send('[{"taskType":"ping","ping":true}]')
            await ws.recv()
            rtts.append((time.perf_counter_ns() - started) / 1e6)
            await asyncio.sleep(0.02)


def rss_sampler(pid: int, stop: threading.Event, peaks: list[int]) -> None:
    peak = 0
    while not stop.is_set():
        try:
            peak = max(peak, proc_status_kib(pid, "VmRSS"))
        except (OSError, ValueError):
            break
        stop.wait(0.05)
    peaks.append(peak)


async def base64_result(url: str, key: str) -> str:
    from websockets.asyncio.client import connect

    task_uuid = str(uuid.uuid4())
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1",
                                   "positivePrompt": "noise", "width": 256, "height": 256, "steps": 1, "numberResults": 8,
                                   "seed": 1, "outputType": "base64Data"}]))
        got = 0
        while got < 8:
            frame = json.loads(await ws.recv())
            got += sum(1 for i in frame.get("data", []) if i.get("taskUUID") == task_uuid)
    return task_uuid


class Hostiles:
    """Every hostile peer, started together and stopped together (all on loopback, bounded in count and time)."""

    def __init__(self, port: int, key: str, result_uuid: str, trickle_url: str) -> None:
        self.port, self.key, self.result_uuid, self.trickle_url = port, key, result_uuid, trickle_url
        self.stop = threading.Event()
        self.counts = {"junk frames": 0, "big frames": 0, "slow heads held": 0, "slow heads refused": 0,
                       "getResponse floods": 0, "slow downloads": 0}
        self.held: list[socket.socket] = []
        self.threads = [threading.Thread(target=fn, daemon=True) for fn in (self._junk, self._big, self._heads)]

    def start(self) -> None:
        for _ in range(FLOOD_SOCKETS):
            sock = _raw_ws(self.port)
            _send_text(sock, json.dumps([{"taskType": "authentication", "apiKey": self.key}]))
            time.sleep(0.2)
            _send_text(sock, json.dumps([{"taskType": "getResponse", "taskUUID": self.result_uuid}] * 64))
            self.held.append(sock)
            self.counts["getResponse floods"] += 1
        uploader = _raw_ws(self.port)
        _send_text(uploader, json.dumps([{"taskType": "authentication", "apiKey": self.key}]))
        time.sleep(0.2)
        _send_text(uploader, json.dumps([{
            "taskType": "modelUpload", "taskUUID": str(uuid.uuid4()), "air": f"bench:slow{i}@1", "category": "lora",
            "architecture": "sd1x", "format": "safetensors", "name": "slow", "version": "1", "downloadURL": self.trickle_url,
            "uniqueIdentifier": f"slow-{i}", "retry": 0, "deliveryMethod": "async",
        } for i in range(6)]))
        self.held.append(uploader)
        self.counts["slow downloads"] = 6
        for thread in self.threads:
            thread.start()

    def _junk(self) -> None:
        junk = text_frame("[" + ",".join(["{}"] * 20_000) + "]")
        while not self.stop.is_set():
            try:
                sock = _raw_ws(self.port)
                for _ in range(20):
                    sock.sendall(junk)
                    self.counts["junk frames"] += 1
                sock.close()
            except OSError:
                pass
            self.stop.wait(0.05)

    def _big(self) -> None:
        big = text_frame("[" + ",".join(["{}"] * 1_048_576) + "]")
        while not self.stop.is_set():
            try:
                sock = _raw_ws(self.port)
                sock.sendall(big)
                self.counts["big frames"] += 1
                sock.close()
            except OSError:
                pass
            self.stop.wait(0.5)

    def _heads(self) -> None:
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                sock.settimeout(0.2)  # a refusal comes at once; a held connection says nothing
                try:
                    answer = sock.recv(64)
                except (TimeoutError, OSError):
                    answer = b""
                if answer.startswith(b"HTTP/1.1 503"):
                    self.counts["slow heads refused"] += 1
                    sock.close()
                else:
                    self.counts["slow heads held"] += 1
                    self.held.append(sock)
            except OSError:
                pass
            self.stop.wait(0.01)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for sock in self.held:
            sock.close()


def measure(url: str, key: str, seconds: float, pid: int) -> dict[str, float]:
    rtts: list[float] = []
    stop, peaks = threading.Event(), list[int]()
    sampler = threading.Thread(target=rss_sampler, args=(pid, stop, peaks), daemon=True)
    sampler.start()
    event_loop_runner()(pinger(url, key, seconds, rtts))
    stop.set()
    sampler.join()
    rtts.sort()
    return {"pings": len(rtts), "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99), "max_ms": rtts[-1],
            "peak_rss_mib": peaks[0] / 1024}


def run_hostiles(args: argparse.Namespace) -> None:
    """``--role hostile``: every hostile peer for ``--seconds``, then their counts as JSON on stdout."""
    hostiles = Hostiles(args.port, args.key, args.result, args.trickle)
    hostiles.start()
    time.sleep(args.seconds)
    hostiles.close()
    print(json.dumps(hostiles.counts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=["bench", "hostile"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--trickle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "hostile":
        run_hostiles(args)
        return
    trickle = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    trickle.daemon_threads = True
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="wisp-hostile-") as tmp:
        data = Path(tmp) / "data"
        key = create_wisp_key(data)
        subprocess.run([PYTHON, "-m", "server.cli", "sources", "create", "bench", "--data-dir", str(data)], cwd=REPO_ROOT,
                       check=True, capture_output=True)
        env = {"WISP_TORCH_THREADS": "1", "WISP_MAX_OUTGOING_BYTES": str(MAX_OUTGOING), "WISP_SEND_STALL": "120",
               "WISP_MAX_UNAUTHENTICATED_PER_ADDRESS": "32", "WISP_AUTH_MAX_FAILURES": "100000"}
        with wisp_server(data, env) as server:
            log("warming up: one 8-image base64 result to ask for")
            result_uuid = event_loop_runner()(base64_result(server.url, key))
            server.wait_idle()
            load = ForeignLoad([server.pid, os.getpid()]).start()
            log(f"baseline: {args.seconds:g} s of pings, nothing else")
            baseline = measure(server.url, key, args.seconds, server.pid)
            log(f"hostile: {args.seconds:g} s of pings while every hostile peer runs (in a process of its own)")
            peers = subprocess.Popen(
                [PYTHON, __file__, "--role", "hostile", "--port", str(server.port), "--key", key, "--result", result_uuid,
                 "--trickle", f"http://127.0.0.1:{trickle.server_address[1]}/m.safetensors", "--seconds", str(args.seconds + 5)],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
            )
            time.sleep(2)  # the floods are sent and the junk loops running
            try:
                hostile = measure(server.url, key, args.seconds, server.pid)
            finally:
                counts = json.loads(peers.communicate(timeout=120)[0] or "{}")
            foreign = load.cores()
    Trickle.stop.set()
    trickle.shutdown()
    margin_mib = FLOOD_SOCKETS * MAX_OUTGOING / 2**20 + 64
    p99_ratio = hostile["p99_ms"] / baseline["p99_ms"]
    rss_budget = baseline["peak_rss_mib"] + margin_mib
    result = {
        "environment": environment(), "seconds": args.seconds, "foreign_load_cores": foreign,
        "baseline": baseline, "hostile": hostile, "hostile_counts": counts,
        "p99_ratio": p99_ratio, "rss_budget_mib": rss_budget,
        "verdict": {"p99_within_2x": p99_ratio <= 2.0, "rss_within_budget": hostile["peak_rss_mib"] <= rss_budget},
    }
    if args.json:
        dump_json(result)
        return
    print(render_table(["phase", "pings", "p50 ms", "p99 ms", "max ms", "peak RSS MiB"], [
        ["baseline", baseline["pings"], baseline["p50_ms"], baseline["p99_ms"], baseline["max_ms"], baseline["peak_rss_mib"]],
        ["hostile", hostile["pings"], hostile["p50_ms"], hostile["p99_ms"], hostile["max_ms"], hostile["peak_rss_mib"]],
    ]))
    print()
    print(render_table(["hostile peer", "count"], [[k, v] for k, v in counts.items()]))
    print()
    print(f"foreign load: {foreign:.2f} cores")
    print(f"p99 hostile / baseline: {p99_ratio:.2f}× (goal ≤ 2×): {'met' if p99_ratio <= 2 else 'NOT met'}")
    print(f"peak RSS {hostile['peak_rss_mib']:.0f} MiB vs budget {rss_budget:.0f} MiB (baseline peak + {margin_mib:.0f} MiB): "
          f"{'met' if hostile['peak_rss_mib'] <= rss_budget else 'NOT met'}")


if __name__ == "__main__":
    main()
