"""Holding sockets: memory per idle socket, and heartbeat latency with 2,000 sockets under inference.

Why: one of wisp's users keeps thousands of SDK sockets open, each pinging
every 5 s (the 0.5 SDK drops a socket after 30 s without a pong).  Two
measurements against a ``wisp serve`` subprocess, with the load generator of
``bench/loadtest.py`` in this process:

1. RSS of the server with no client, then with N authenticated idle sockets
   → bytes per socket (baseline for comparison: websockets documents ~14 KiB
   per connection without compression).
2. N sockets heartbeating every 5 s while one more socket runs imageInference
   closed-loop (64×64, 4 steps) the whole time → heartbeat p50/p99/max, recorded after
   a warm-up that covers the connection ramp (2,000 handshakes and authentications).
   Goal: p99 ≤ 50 ms.

Run: ``.venv/bin/python bench/sockets.py [--sockets 2000] [--duration 60] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import create_wisp_key, event_loop_runner, log, proc_status_kib, wisp_server  # noqa: E402
from bench.loadtest import Client, LoadConfig, Stats, render, run_load  # noqa: E402


async def idle_sockets(url: str, key: str, n: int, pid: int) -> tuple[int, int]:
    """Open n authenticated sockets that stay silent; returns (RSS before, RSS with them) in KiB."""
    stats, stop = Stats(), asyncio.Event()
    cfg = LoadConfig(url=url, api_key=key, sockets=n, mix={}, ping_interval_s=3600)
    clients = [Client(i, cfg, stats, stop, [0]) for i in range(n)]
    await asyncio.sleep(1)
    before = proc_status_kib(pid, "VmRSS")
    gate = asyncio.Semaphore(200)

    async def one(c: Client) -> None:
        async with gate:
            await c.connect()

    await asyncio.gather(*(one(c) for c in clients))
    await asyncio.sleep(2)
    after = proc_status_kib(pid, "VmRSS")
    await asyncio.gather(*(c.ws.close() for c in clients))
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="connection ramp, not recorded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = event_loop_runner()
    with tempfile.TemporaryDirectory(prefix="wisp-bench-sockets-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        key = create_wisp_key(data)
        with wisp_server(data, env={"WISP_MAX_IN_FLIGHT": "64"}) as server:
            server.wait_idle()
            before, after = run(idle_sockets(server.url, key, args.sockets, server.pid))
            per_socket = (after - before) * 1024 / args.sockets
            log(f"RSS {before / 1024:.0f} MiB → {after / 1024:.0f} MiB with {args.sockets} idle sockets: {per_socket / 1024:.1f} KiB each")
            time.sleep(2)
            cfg = LoadConfig(url=server.url, api_key=key, sockets=args.sockets + 1, working_sockets=1,
                             mix={"imageInference": 1.0}, duration_s=args.duration, ping_interval_s=5.0, steps=4,
                             warmup_s=args.warmup)
            report = run(run_load(cfg, progress=not args.json))
    beat = report["per_type"].get("heartbeat", {})
    result = {"idle_rss_before_MiB": before / 1024, "idle_rss_after_MiB": after / 1024, "bytes_per_idle_socket": per_socket,
              "load": report, "heartbeat_p99_ms": beat.get("p99_ms"), "goal_met": (beat.get("p99_ms") or 1e9) <= 50.0}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"memory: {per_socket / 1024:.1f} KiB per idle authenticated socket ({args.sockets} sockets; websockets alone ≈ 14 KiB)")
    print(render(report))
    print(f"goal: heartbeat p99 ≤ 50 ms with {args.sockets} sockets while imageInference runs: "
          f"{beat.get('p99_ms', float('nan')):.2f} ms → {'MET' if result['goal_met'] else 'NOT MET'}")


if __name__ == "__main__":
    main()
