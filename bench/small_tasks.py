"""Small tasks per core: ping and modelSearch through wisp vs a bare websockets echo.

Why: small tasks (heartbeats, searches) are most of a busy socket's traffic;
their cost is protocol work, not inference.  One socket keeps ``--window``
tasks in flight (pipelined) for ``--tasks`` tasks; we report tasks/s and
tasks per server CPU-second ("per core"), the latter from the server
process's own CPU time, so the client's share of the 2 cores does not count.
The echo server (``bench/echo_server.py --mode echo``) sends every message
straight back: the floor for any server on websockets.

Run: ``.venv/bin/python bench/small_tasks.py [--tasks 5000] [--window 32] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PYTHON, ServerProcess, create_wisp_key, process_cpu_seconds, render_table, wisp_server  # noqa: E402


async def drive(url: str, key: str | None, make: "callable", tasks: int, window: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None) as ws:
        if key:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
            await ws.recv()
        sem = asyncio.Semaphore(window)
        done = asyncio.Event()
        received = 0

        async def reader() -> None:
            nonlocal received
            async for _ in ws:
                received += 1
                sem.release()
                if received == tasks:
                    done.set()
                    return

        task = asyncio.ensure_future(reader())
        start = time.perf_counter()
        for _ in range(tasks):
            await sem.acquire()
            await ws.send(make())
        await done.wait()
        elapsed = time.perf_counter() - start
        task.cancel()
        return elapsed


def ping() -> str:
    return '[{"taskType":"ping","ping":true}]'


def search() -> str:
    return json.dumps([{"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": "tiny", "limit": 5}])


def measure(server: ServerProcess, key: str | None, make, tasks: int, window: int) -> tuple[float, float]:
    asyncio.run(drive(server.url, key, make, 200, window))  # warm-up
    cpu0 = process_cpu_seconds(server.pid)
    elapsed = asyncio.run(drive(server.url, key, make, tasks, window))
    cpu = process_cpu_seconds(server.pid) - cpu0
    return tasks / elapsed, tasks / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wisp-bench-small-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        key = create_wisp_key(data)
        echo = ServerProcess(name="echo", argv=[PYTHON, str(Path(__file__).parent / "echo_server.py"), "--port", "0", "--mode", "echo"])
        with wisp_server(data) as wisp, echo:
            wisp.wait_idle()
            for name, make in (("ping", ping), ("modelSearch", search)):
                w_rate, w_per_cpu = measure(wisp, key, make, args.tasks, args.window)
                e_rate, e_per_cpu = measure(echo, None, make, args.tasks, args.window)
                results[name] = {"wisp_per_s": w_rate, "wisp_per_cpu_s": w_per_cpu, "echo_per_s": e_rate, "echo_per_cpu_s": e_per_cpu,
                                 "ratio_per_s": w_rate / e_rate, "ratio_per_cpu_s": w_per_cpu / e_per_cpu}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [[name, f"{r['wisp_per_s']:,.0f}", f"{r['echo_per_s']:,.0f}", f"{r['ratio_per_s']:.3f}×",
             f"{r['wisp_per_cpu_s']:,.0f}", f"{r['echo_per_cpu_s']:,.0f}", f"{r['ratio_per_cpu_s']:.3f}×"] for name, r in results.items()]
    print(render_table(["task", "wisp /s", "echo /s", "wisp/echo", "wisp per CPU-s", "echo per CPU-s", "wisp/echo per core"], rows))
    print(f"one socket, {args.window} in flight, {args.tasks} tasks each; the echo server sends each message back unchanged.")


if __name__ == "__main__":
    main()
