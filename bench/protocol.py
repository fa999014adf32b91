"""Ping round trip and pings/s through wisp vs a bare ``websockets`` server.

Why: a ping exercises everything wisp puts between the socket and a task —
the HTTP/WebSocket sniffing connection, frame decoding and validation, the
gateway's dispatch — and nothing else (no engine work).  Comparing it with
a server that only answers the same bytes (``bench/echo_server.py``) shows
what that layer costs.  The goal (issue 13) is a sequential round trip at most 1.10×
the bare server's.

How, so that the comparison is fair:

* both servers are subprocesses on loopback using the same ``websockets``
  server on uvloop with compression off; the echo server answers the exact
  bytes wisp answers, so the client does identical work;
* one client (this process, ``websockets`` asyncio client on uvloop) drives
  both, alternating which server goes first in each round so that drift
  (CPU frequency, noisy neighbours) hits both alike;
* wisp is measured only after its start-up work (torch import, built-in model
  build and warm-up) is over: we wait until its process is idle;
* besides client-side rates we record each server's own CPU time per ping
  (from ``/proc/PID/task/*/schedstat``), which does not depend on how fast
  the client can go — on a 2-core box the client is often the bottleneck.

Run: ``.venv/bin/python bench/protocol.py [--json] [--rounds N] ...``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/, where this file would shadow
    # wisp's own ``protocol`` package.  Put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench._common import (
    CONTENDED_CORES,
    PYTHON,
    ForeignLoad,
    QuietGate,
    ServerProcess,
    create_wisp_key,
    dump_json,
    environment,
    fmt_ratio,
    log,
    quiet_ratio,
    ratio,
    render_table,
    summarize_ns,
    threads_cpu_s,
    wisp_server,
)
from bench.echo_server import PONG

PING = b'[{"taskType":"ping","ping":true}]'


@dataclass(frozen=True)
class Settings:
    rounds: int = 10
    warmup: int = 500
    sequential: int = 1000
    sockets: int = 8
    per_socket: int = 300
    pipelined: int = 5000
    window: int = 32
    pin: bool = False
    quiet_budget: float = 40.0


@dataclass
class TargetResult:
    """Everything measured against one server, over all rounds."""

    name: str
    server: str
    rtt_ns: list[int] = field(default_factory=list)
    round_rtt_mean_us: list[float] = field(default_factory=list)
    concurrent_pings: int = 0
    concurrent_s: float = 0.0
    concurrent_server_cpu_s: float = 0.0
    concurrent_client_cpu_s: float = 0.0
    round_concurrent_rate: list[float] = field(default_factory=list)
    pipelined_pings: int = 0
    pipelined_s: float = 0.0
    pipelined_server_cpu_s: float = 0.0
    pipelined_client_cpu_s: float = 0.0
    round_pipelined_rate: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rtt = summarize_ns(self.rtt_ns)
        return {
            "server": self.server,
            "rtt_us": rtt,
            "round_rtt_mean_us": self.round_rtt_mean_us,
            "concurrent_pings_per_s": self.concurrent_pings / self.concurrent_s,
            "concurrent_server_cpu_us_per_ping": 1e6 * self.concurrent_server_cpu_s / self.concurrent_pings,
            "concurrent_client_cpu_us_per_ping": 1e6 * self.concurrent_client_cpu_s / self.concurrent_pings,
            "round_concurrent_pings_per_s": self.round_concurrent_rate,
            "pipelined_pings_per_s": self.pipelined_pings / self.pipelined_s,
            "pipelined_server_cpu_us_per_ping": 1e6 * self.pipelined_server_cpu_s / self.pipelined_pings,
            "pipelined_client_cpu_us_per_ping": 1e6 * self.pipelined_client_cpu_s / self.pipelined_pings,
            "round_pipelined_pings_per_s": self.round_pipelined_rate,
        }


@dataclass
class Target:
    """A running server and this client's open sockets to it."""

    name: str
    server: ServerProcess
    sockets: list[ClientConnection]
    result: TargetResult


async def open_socket(url: str, api_key: str | None) -> ClientConnection:
    """Connect (no compression, no client keepalive) and authenticate if a key is given."""
    ws = await connect(url, compression=None, ping_interval=None, max_size=64 * 1024 * 1024)
    if api_key is not None:
        await ws.send(f'[{{"taskType":"authentication","apiKey":"{api_key}"}}]', text=True)
        reply = await ws.recv(decode=False)
        if b'"connectionSessionUUID"' not in reply:
            raise RuntimeError(f"authentication failed: {reply[:300]!r}")
    return ws


async def ping_once(ws: ClientConnection) -> None:
    await ws.send(PING, text=True)
    reply = await ws.recv(decode=False)
    if reply != PONG:
        raise RuntimeError(f"unexpected reply to a ping: {reply[:300]!r}")


async def sequential(ws: ClientConnection, n: int) -> list[int]:
    """``n`` ping round trips one after another; nanoseconds each (send → reply read)."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await ws.send(PING, text=True)
        reply = await ws.recv(decode=False)
        samples.append(clock() - t0)
        if reply != PONG:
            raise RuntimeError(f"unexpected reply to a ping: {reply[:300]!r}")
    return samples


async def closed_loop(ws: ClientConnection, n: int) -> None:
    for _ in range(n):
        await ping_once(ws)


async def pipelined(ws: ClientConnection, total: int, window: int) -> None:
    """``total`` pings on one socket with up to ``window`` unanswered at a time."""
    slots = asyncio.Semaphore(window)

    async def sender() -> None:
        for _ in range(total):
            await slots.acquire()
            await ws.send(PING, text=True)

    task = asyncio.create_task(sender())
    try:
        for _ in range(total):
            reply = await ws.recv(decode=False)
            slots.release()
            if reply != PONG:
                raise RuntimeError(f"unexpected reply to a ping: {reply[:300]!r}")
    finally:
        await task


async def measure_round(target: Target, s: Settings) -> None:
    """One round against one server: sequential RTTs, then the two throughput modes."""
    res, pid = target.result, target.server.pid
    main = target.sockets[0]

    gc.collect()
    samples = await sequential(main, s.sequential)
    res.rtt_ns.extend(samples)
    res.round_rtt_mean_us.append(sum(samples) / len(samples) / 1e3)

    gc.collect()
    cpu0, client0, t0 = threads_cpu_s(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(closed_loop(ws, s.per_socket) for ws in target.sockets))
    elapsed = time.perf_counter() - t0
    n = s.per_socket * len(target.sockets)
    res.concurrent_pings += n
    res.concurrent_s += elapsed
    res.concurrent_server_cpu_s += threads_cpu_s(pid) - cpu0
    res.concurrent_client_cpu_s += time.process_time() - client0
    res.round_concurrent_rate.append(n / elapsed)

    gc.collect()
    cpu0, client0, t0 = threads_cpu_s(pid), time.process_time(), time.perf_counter()
    await pipelined(main, s.pipelined, s.window)
    elapsed = time.perf_counter() - t0
    res.pipelined_pings += s.pipelined
    res.pipelined_s += elapsed
    res.pipelined_server_cpu_s += threads_cpu_s(pid) - cpu0
    res.pipelined_client_cpu_s += time.process_time() - client0
    res.round_pipelined_rate.append(s.pipelined / elapsed)


async def drive(
    servers: dict[str, tuple[ServerProcess, str | None, str]], s: Settings, round_load: list[float]
) -> dict[str, TargetResult]:
    """Open sockets to every server, warm up, then alternate rounds between them.

    ``round_load`` receives, per round, the cores other processes used meanwhile.
    """
    targets: list[Target] = []
    own_pids = [os.getpid()] + [server.pid for server, _, _ in servers.values()]
    gate = QuietGate(own_pids, budget_s=s.quiet_budget)
    try:
        for name, (server, key, description) in servers.items():
            sockets = [await open_socket(server.url, key) for _ in range(s.sockets)]
            targets.append(Target(name, server, sockets, TargetResult(name, description)))
        for t in targets:
            log(f"warm-up: {s.warmup} pings on each of {len(t.sockets)} sockets to {t.name}")
            await asyncio.gather(*(closed_loop(ws, s.warmup) for ws in t.sockets))
            await pipelined(t.sockets[0], s.warmup, s.window)
        for r in range(s.rounds):
            await gate.wait_async()
            load = ForeignLoad(own_pids).start()
            order = targets if r % 2 == 0 else targets[::-1]
            for t in order:
                await measure_round(t, s)
            round_load.append(load.cores())
            log(
                f"round {r + 1}/{s.rounds} (others used {round_load[-1]:.2f} cores): "
                + ", ".join(
                    f"{t.name} rtt {t.result.round_rtt_mean_us[-1]:.1f} µs, "
                    f"{t.result.round_concurrent_rate[-1]:,.0f}/{t.result.round_pipelined_rate[-1]:,.0f} pings/s"
                    for t in targets
                )
            )
    finally:
        for t in targets:
            for ws in t.sockets:
                await ws.close()
    return {t.name: t.result for t in targets}


def paired(w: list[float], e: list[float]) -> dict[str, float]:
    """Median, min and max of the per-round wisp/echo ratios.

    Each round measures both servers back to back, so a round's ratio is
    little affected by slow drift or by another process hogging the box for a
    while; the median over rounds is the robust companion of the pooled ratio.
    """
    ratios = [ratio(a, b) for a, b in zip(w, e)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def report(results: dict[str, dict[str, Any]], s: Settings, round_load: list[float]) -> tuple[str, dict[str, Any]]:
    """The table and the verdicts, from the two summaries."""
    w, e = results["wisp"], results["echo"]
    rows: list[list[Any]] = []

    def row(label: str, a: float, b: float) -> None:
        rows.append([label, a, b, fmt_ratio(ratio(a, b))])

    row("RTT mean (µs)", w["rtt_us"]["mean"], e["rtt_us"]["mean"])
    row("RTT p50 (µs)", w["rtt_us"]["p50"], e["rtt_us"]["p50"])
    row("RTT p99 (µs)", w["rtt_us"]["p99"], e["rtt_us"]["p99"])
    row(f"pings/s, {s.sockets} sockets closed-loop", w["concurrent_pings_per_s"], e["concurrent_pings_per_s"])
    row(f"pings/s, 1 socket {s.window} in flight", w["pipelined_pings_per_s"], e["pipelined_pings_per_s"])
    row(f"server CPU µs/ping, {s.sockets} sockets", w["concurrent_server_cpu_us_per_ping"], e["concurrent_server_cpu_us_per_ping"])
    row("server CPU µs/ping, pipelined", w["pipelined_server_cpu_us_per_ping"], e["pipelined_server_cpu_us_per_ping"])
    row(f"client CPU µs/ping, {s.sockets} sockets", w["concurrent_client_cpu_us_per_ping"], e["concurrent_client_cpu_us_per_ping"])
    rtt_ratio = ratio(w["rtt_us"]["mean"], e["rtt_us"]["mean"])
    per_round = {
        "rtt_mean": paired(w["round_rtt_mean_us"], e["round_rtt_mean_us"]),
        "concurrent_rate": paired(w["round_concurrent_pings_per_s"], e["round_concurrent_pings_per_s"]),
        "pipelined_rate": paired(w["round_pipelined_pings_per_s"], e["round_pipelined_pings_per_s"]),
    }
    quiet = {
        "rtt_mean": quiet_ratio(w["round_rtt_mean_us"], e["round_rtt_mean_us"], round_load),
        "concurrent_rate": quiet_ratio(w["round_concurrent_pings_per_s"], e["round_concurrent_pings_per_s"], round_load),
        "pipelined_rate": quiet_ratio(w["round_pipelined_pings_per_s"], e["round_pipelined_pings_per_s"], round_load),
    }
    verdicts = {
        "rtt_ratio_mean": rtt_ratio,
        "rtt_ratio_p50": ratio(w["rtt_us"]["p50"], e["rtt_us"]["p50"]),
        "concurrent_rate_ratio": ratio(w["concurrent_pings_per_s"], e["concurrent_pings_per_s"]),
        "pipelined_rate_ratio": ratio(w["pipelined_pings_per_s"], e["pipelined_pings_per_s"]),
        "per_round_ratios": per_round,
        "quiet_rounds": quiet["rtt_mean"][1],
        "quiet_round_ratios": {k: v[0] for k, v in quiet.items()},
        "foreign_load_cores": {"mean": statistics.fmean(round_load), "max": max(round_load), "per_round": round_load},
        "rtt_goal": "≤ 1.10× (mean round trip, wisp/echo; issue 13, was 1.25× in issue 2)",
        "rtt_goal_met": rtt_ratio <= 1.10,
        "rate_goal": "≥ 0.90× pings/s, 8 sockets and pipelined (issue 13)",
    }
    verdicts["rate_goal_met"] = min(verdicts["concurrent_rate_ratio"], verdicts["pipelined_rate_ratio"]) >= 0.90
    table = render_table(["metric", "wisp", "echo", "wisp/echo"], rows)
    n = s.rounds * s.sequential
    pr = per_round
    load = verdicts["foreign_load_cores"]
    lines = [
        table,
        "",
        f"per-round wisp/echo ratios, median [min–max] over {s.rounds} rounds: "
        f"RTT {pr['rtt_mean']['median']:.3f} [{pr['rtt_mean']['min']:.2f}–{pr['rtt_mean']['max']:.2f}], "
        f"pings/s {pr['concurrent_rate']['median']:.3f} [{pr['concurrent_rate']['min']:.2f}–{pr['concurrent_rate']['max']:.2f}] ({s.sockets} sockets), "
        f"{pr['pipelined_rate']['median']:.3f} [{pr['pipelined_rate']['min']:.2f}–{pr['pipelined_rate']['max']:.2f}] (pipelined)",
        f"uncontended rounds only ({quiet['rtt_mean'][1]} of {s.rounds}): RTT {fmt_ratio(quiet['rtt_mean'][0])}, "
        f"pings/s {fmt_ratio(quiet['concurrent_rate'][0])} ({s.sockets} sockets), {fmt_ratio(quiet['pipelined_rate'][0])} (pipelined)",
        f"wisp: {w['server']}",
        f"echo: {e['server']}",
        f"client: websockets asyncio client on uvloop, one process; {n} sequential round trips per server "
        f"({s.rounds} alternating rounds after {s.warmup} warm-up pings per socket); "
        + ("client pinned to CPU 0, servers to CPU 1." if s.pin else "no CPU pinning."),
        f"other processes on this machine used {load['mean']:.2f} cores on average (max {load['max']:.2f} in one round)"
        + f"; {sum(x > CONTENDED_CORES for x in round_load)} of {s.rounds} rounds contended (> {CONTENDED_CORES} cores)"
        + (" — numbers are noisy" if load["max"] > CONTENDED_CORES else "") + ".",
        f"goal: round trip {verdicts['rtt_goal']}: {rtt_ratio:.3f}× → {'MET' if verdicts['rtt_goal_met'] else 'NOT MET'}; "
        f"pings/s {verdicts['rate_goal']}: {verdicts['concurrent_rate_ratio']:.3f}× ({s.sockets} sockets), "
        f"{verdicts['pipelined_rate_ratio']:.3f}× (pipelined) → {'MET' if verdicts['rate_goal_met'] else 'NOT MET'}.",
    ]
    return "\n".join(lines), verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ping round trip and pings/s: wisp vs bare websockets.")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    d = Settings()
    parser.add_argument("--rounds", type=int, default=d.rounds, help="alternating rounds per server")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warm-up pings per socket")
    parser.add_argument("--sequential", type=int, default=d.sequential, help="sequential round trips per round")
    parser.add_argument("--sockets", type=int, default=d.sockets, help="concurrent sockets for throughput")
    parser.add_argument("--per-socket", type=int, default=d.per_socket, help="pings per socket per round (closed loop)")
    parser.add_argument("--pipelined", type=int, default=d.pipelined, help="pings per round on one pipelined socket")
    parser.add_argument("--window", type=int, default=d.window, help="pings in flight when pipelining")
    parser.add_argument("--pin", action="store_true", help="pin the client to CPU 0 and both servers to CPU 1")
    parser.add_argument(
        "--quiet-budget", type=float, default=d.quiet_budget,
        help="seconds per run to wait, before rounds, for other processes to go idle (0: never wait)",
    )
    args = parser.parse_args(argv)
    s = Settings(
        args.rounds, args.warmup, args.sequential, args.sockets, args.per_socket, args.pipelined, args.window, args.pin, args.quiet_budget
    )
    server_cpus: set[int] | None = None
    if s.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs at least 2 CPUs")
        os.sched_setaffinity(0, {0})
        server_cpus = {1}

    round_load: list[float] = []
    with tempfile.TemporaryDirectory(prefix="wisp-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        key = create_wisp_key(data_dir)
        wisp = wisp_server(data_dir)
        wisp.cpus = server_cpus
        echo = ServerProcess(
            name="echo", argv=[PYTHON, str(Path(__file__).with_name("echo_server.py")), "--port", "0"], cpus=server_cpus
        )
        try:
            log("starting wisp (builds and warms the built-in model) and the echo server")
            wisp.start()
            echo.start()
            waited = wisp.wait_idle()
            echo.wait_idle()
            log(f"wisp on {wisp.url}, idle after {waited:.1f} s; echo on {echo.url}")
            servers = {
                "wisp": (wisp, key, f"wisp serve (websockets {_ws_version()} server on uvloop {uvloop.__version__} via server.cli, default config)"),
                "echo": (echo, None, f"bench/echo_server.py (websockets {_ws_version()} server on uvloop {uvloop.__version__}, answers wisp's pong bytes)"),
            }
            raw = uvloop.run(drive(servers, s, round_load))
        finally:
            wisp.stop()
            echo.stop()

    results = {name: r.summary() for name, r in raw.items()}
    text, verdicts = report(results, s, round_load)
    if args.json:
        dump_json({"benchmark": "protocol", "environment": environment(), "settings": asdict(s), "results": results, "verdicts": verdicts})
    else:
        print(text)
    return 0


def _ws_version() -> str:
    import websockets

    return websockets.__version__


if __name__ == "__main__":
    sys.exit(main())
