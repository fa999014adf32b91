"""``wisp loadtest``: hammer any Runware-protocol endpoint and report latencies.

N concurrent sockets, each authenticated, each sending an SDK-style heartbeat
ping every ``--ping-interval`` seconds, and (optionally) a task mix — ping,
imageInference, modelSearch — either closed-loop (next task when the last one
answered) or at a fixed rate per socket.  Live progress goes to stderr once a
second; the end is a table of throughput and p50/p95/p99/max per taskType,
errors by code and reconnects (``--json`` for machines).

Bounded by design: a duration (≤ 1 h) and/or a task count, and loopback
targets only unless ``--allow-remote`` (this is a load generator; point it at
your own servers).

Part of the product (``wisp loadtest``); the benchmarks in ``bench/``
(``sockets.py``, ``soak.py``) drive :func:`run_load` from here, and
``python bench/loadtest.py`` is a thin entry to :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_DURATION_S = 3600.0


@dataclass
class LoadConfig:
    url: str
    api_key: str
    sockets: int = 10
    duration_s: float = 10.0
    count: int | None = None
    mix: dict[str, float] = field(default_factory=lambda: {"ping": 1.0})
    rate: float | None = None
    """Tasks per second per socket (Poisson); None: closed loop."""
    working_sockets: int | None = None
    """How many sockets send the task mix (default: all); the rest only heartbeat."""
    ping_interval_s: float = 5.0
    model: str = "wisp:tiny-sd15@1"
    width: int = 64
    height: int = 64
    steps: int = 4
    loras: list[dict[str, Any]] = field(default_factory=list)
    connect_concurrency: int = 200
    task_timeout_s: float = 120.0
    warmup_s: float = 0.0
    """Latencies of replies before this many seconds (connection ramp) are not recorded."""


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    sent: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)
    reconnects: int = 0
    connected: int = 0
    failed_connects: int = 0
    started: float = field(default_factory=time.perf_counter)
    record_after: float = 0.0

    def record(self, kind: str, now: float, sent_at: float) -> None:
        self.answered[kind] += 1
        if sent_at >= self.record_after:
            self.latencies[kind].append(now - sent_at)

    def done(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def _task(kind: str, cfg: LoadConfig) -> dict[str, Any]:
    task_uuid = str(uuid.uuid4())
    if kind == "ping":
        return {"taskType": "ping", "ping": True}
    if kind == "imageInference":
        task = {"taskType": "imageInference", "taskUUID": task_uuid, "model": cfg.model, "positivePrompt": "load test",
                "width": cfg.width, "height": cfg.height, "steps": cfg.steps, "numberResults": 1, "outputType": "URL"}
        if cfg.loras:
            task["lora"] = cfg.loras
        return task
    if kind == "modelSearch":
        return {"taskType": "modelSearch", "taskUUID": task_uuid, "limit": 5}
    raise ValueError(f"unknown task kind {kind}")


class Client:
    """One socket: a reader that routes replies, a heartbeat, and an optional task loop."""

    def __init__(self, index: int, cfg: LoadConfig, stats: Stats, stop: asyncio.Event, budget: list[int]) -> None:
        self.index = index
        self.cfg = cfg
        self.stats = stats
        self.stop = stop
        self.budget = budget
        self.ws: Any = None
        self.pending: dict[str, tuple[str, float, asyncio.Future[None]]] = {}
        self.pings: deque[tuple[str, float, asyncio.Future[None] | None]] = deque()
        self.rng = random.Random(index)
        self.inflight: set[asyncio.Future[None]] = set()

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.cfg.url, max_size=None, open_timeout=30, ping_interval=20)
        start = time.perf_counter()
        await self.ws.send(json.dumps([{"taskType": "authentication", "apiKey": self.cfg.api_key}]))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        if "errors" in reply:
            raise PermissionError(reply["errors"][0].get("code", "authentication failed"))
        self.stats.latencies["authentication"].append(time.perf_counter() - start)

    async def reader(self) -> None:
        async for message in self.ws:
            frame = json.loads(message)
            now = time.perf_counter()
            for error in frame.get("errors", []):
                self.stats.errors[error.get("code", "?")] += 1
                entry = self.pending.pop(error.get("taskUUID", ""), None)
                if entry is not None:
                    self.stats.answered[entry[0]] += 1
                    if not entry[2].done():
                        entry[2].set_result(None)
            for item in frame.get("data", []):
                if item.get("pong"):
                    if self.pings:
                        kind, sent_at, fut = self.pings.popleft()
                        self.stats.record(kind, now, sent_at)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                    continue
                entry = self.pending.pop(item.get("taskUUID", ""), None)
                if entry is not None:
                    kind, sent_at, fut = entry
                    self.stats.record(kind, now, sent_at)
                    if not fut.done():
                        fut.set_result(None)

    async def send(self, kind: str, wait: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if kind in ("ping", "heartbeat"):
            self.pings.append((kind, now, fut))
            payload: dict[str, Any] = {"taskType": "ping", "ping": True}
        else:
            payload = _task(kind, self.cfg)
            self.pending[payload["taskUUID"]] = (kind, now, fut)
        self.stats.sent[kind] += 1
        await self.ws.send(json.dumps([payload]))
        if wait:
            try:
                await asyncio.wait_for(fut, self.cfg.task_timeout_s)
            except TimeoutError:
                self.stats.errors["clientTimeout"] += 1

    async def heartbeat(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.cfg.ping_interval_s))  # spread sockets over the interval
        while not self.stop.is_set():
            await self.send("heartbeat", wait=False)
            await asyncio.sleep(self.cfg.ping_interval_s)

    async def work(self) -> None:
        kinds, weights = zip(*self.cfg.mix.items())
        while not self.stop.is_set():
            if self.budget[0] <= 0:
                self.stop.set()
                return
            self.budget[0] -= 1
            kind = self.rng.choices(kinds, weights)[0]
            if self.cfg.rate:
                job = asyncio.ensure_future(self.send(kind, wait=True))
                self.inflight.add(job)
                job.add_done_callback(self.inflight.discard)
                await asyncio.sleep(self.rng.expovariate(self.cfg.rate))
            else:
                await self.send(kind, wait=True)

    async def run(self, gate: asyncio.Semaphore, works: bool) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                async with gate:
                    await self.connect()
                self.stats.connected += 1
                jobs: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.reader()), asyncio.ensure_future(self.heartbeat())]
                if works:
                    jobs.append(asyncio.ensure_future(self.work()))
                stopper = asyncio.ensure_future(self.stop.wait())
                done, _ = await asyncio.wait([jobs[0], stopper], return_when=asyncio.FIRST_COMPLETED)
                if self.stop.is_set():
                    for job in jobs[1:]:
                        job.cancel()  # no new work; the reader keeps collecting answers to what was sent
                    pending = set(self.inflight) | ({jobs[2]} if len(jobs) > 2 else set())
                    pending |= {fut for _, _, fut in self.pings if fut is not None and not fut.done()}
                    if pending:
                        await asyncio.wait(pending, timeout=self.cfg.task_timeout_s)
                for job in jobs + [stopper]:
                    job.cancel()
                await self.ws.close()
                if self.stop.is_set():
                    return
                self.stats.reconnects += 1
            except PermissionError as exc:
                self.stats.errors[str(exc)] += 1
                return
            except Exception:
                self.stats.failed_connects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname or ""
    if allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise SystemExit(f"refusing non-loopback target {host!r}; pass --allow-remote for your own remote server")


async def run_load(cfg: LoadConfig, progress: bool = True) -> dict[str, Any]:
    stats = Stats()
    stats.record_after = stats.started + cfg.warmup_s
    stop = asyncio.Event()
    budget = [cfg.count if cfg.count is not None else 10**12]
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    working = cfg.sockets if cfg.working_sockets is None else cfg.working_sockets
    clients = [Client(i, cfg, stats, stop, budget) for i in range(cfg.sockets)]
    runs = [asyncio.ensure_future(c.run(gate, i < working and bool(cfg.mix))) for i, c in enumerate(clients)]

    async def ticker() -> None:
        while not stop.is_set():
            await asyncio.sleep(1)
            elapsed = time.perf_counter() - stats.started
            print(f"\r[{elapsed:6.1f}s] sockets {stats.connected}/{cfg.sockets} done {stats.done()} "
                  f"({stats.done() / max(elapsed, 1e-9):.0f}/s) errors {sum(stats.errors.values())} reconnects {stats.reconnects}",
                  end="", file=sys.stderr, flush=True)

    tick = asyncio.ensure_future(ticker()) if progress else None
    try:
        await asyncio.wait_for(stop.wait(), timeout=min(cfg.duration_s + cfg.warmup_s, MAX_DURATION_S))
    except TimeoutError:
        pass
    stop.set()
    await asyncio.wait(runs, timeout=30)
    if tick is not None:
        tick.cancel()
        print(file=sys.stderr)
    elapsed = time.perf_counter() - stats.record_after
    per_type = {}
    for kind, values in sorted(stats.latencies.items()):
        per_type[kind] = {
            "count": len(values), "sent": stats.sent.get(kind, len(values)), "per_s": len(values) / elapsed,
            "p50_ms": 1e3 * _percentile(values, 50), "p95_ms": 1e3 * _percentile(values, 95),
            "p99_ms": 1e3 * _percentile(values, 99), "max_ms": 1e3 * max(values) if values else float("nan"),
            "answered": stats.answered.get(kind, 0),
        }
    return {"elapsed_s": elapsed, "sockets": cfg.sockets, "connected": stats.connected, "failed_connects": stats.failed_connects,
            "reconnects": stats.reconnects, "per_type": per_type, "errors": dict(stats.errors)}


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['connected']}/{report['sockets']} sockets connected, {report['reconnects']} reconnects, "
             f"{report['failed_connects']} failed connects, {report['elapsed_s']:.1f} s",
             "| taskType | done/sent | per s | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    for kind, row in report["per_type"].items():
        lines.append(f"| {kind} | {row['count']}/{row['sent']} | {row['per_s']:.1f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {row['max_ms']:.2f} |")
    lines.append("errors by code: " + (", ".join(f"{k}={v}" for k, v in sorted(report["errors"].items())) or "none"))
    return "\n".join(lines)


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in ("ping", "imageInference", "modelSearch"):
            raise SystemExit(f"unknown task kind in --mix: {name}")
        mix[name] = float(weight or 1)
    return mix


DEFAULT_MIX = "ping=10,imageInference=1,modelSearch=1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:7788/v1")
    parser.add_argument("--api-key", default=os.environ.get("WISP_API_KEY"), help="default: $WISP_API_KEY")
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--working-sockets", type=int, default=None, help="sockets that send the mix (default all); the rest only heartbeat")
    parser.add_argument("--duration", type=float, default=10.0, help=f"seconds (≤ {MAX_DURATION_S:.0f})")
    parser.add_argument("--count", type=int, default=None, help="stop after this many mix tasks")
    parser.add_argument("--mix", default=DEFAULT_MIX,
                        help=f"taskType=weight,… (default {DEFAULT_MIX}, what an SDK client sends; 'ping=1' for pings only, '' for heartbeats only)")
    parser.add_argument("--rate", type=float, default=None, help="tasks/s per working socket (default: closed loop)")
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--model", default="wisp:tiny-sd15@1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lora", action="append", default=[], help="AIR[:weight], repeatable")
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of ramp-up not recorded")
    parser.add_argument("--json", action="store_true")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    loras = []
    for spec in args.lora:
        air, _, weight = spec.rpartition(":") if spec.count(":") > 1 else (spec, "", "")
        loras.append({"model": air or spec, **({"weight": float(weight)} if weight else {})})
    return LoadConfig(
        url=args.url, api_key=args.api_key, sockets=args.sockets, duration_s=args.duration, count=args.count,
        mix=parse_mix(args.mix), rate=args.rate, working_sockets=args.working_sockets, ping_interval_s=args.ping_interval,
        model=args.model, width=args.size, height=args.size, steps=args.steps, loras=loras, warmup_s=args.warmup,
    )


def _event_loop_runner() -> Any:
    """``uvloop.run`` when installed (wisp's own loop), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run
    return uvloop.run


def cmd_loadtest(args: argparse.Namespace) -> int:
    """Run the load; exit 1, saying why, when no socket connected or none authenticated (nothing was measured)."""
    if not args.api_key:
        print("wisp loadtest: give --api-key or set WISP_API_KEY", file=sys.stderr)
        return 2
    check_target(args.url, args.allow_remote)
    report = _event_loop_runner()(run_load(config_from_args(args), progress=not args.json))
    print(json.dumps(report, indent=2) if args.json else render(report))
    if report["connected"] == 0:
        reasons = ", ".join(f"{why} ×{n}" for why, n in report["errors"].items()) or f"{report['failed_connects']} failed connections"
        print(f"wisp loadtest: no socket connected and authenticated to {args.url} ({reasons})", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return cmd_loadtest(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
