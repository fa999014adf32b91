"""What per-task logs and Prometheus metrics cost each task, on the event loop (issue 16: ≤ 0.1 ms per task).

A whole wisp is built in-process (the real gateway, engine, registry and
delivery; no socket, so no network noise) and driven with real task frames
through ``Gateway.handle_frame``.  The event loop's own CPU time
(``time.thread_time`` on the loop thread: where task lines are formatted and
metrics observed; the device thread's torch time is not in it) is measured
per task in four modes, interleaved round by round so drift hits all alike:

- ``bare``: metrics observation replaced by a no-op and logging off: the baseline;
- ``metrics``: Prometheus counters and histograms, logging off (``WISP_LOG_LEVEL=WARNING``);
- ``metrics+log``: as shipped (INFO, text lines to a real file, formatted and written on the listener thread);
- ``metrics+json``: INFO with ``WISP_LOG_FORMAT=json``.

Each mode's cost is its median per-task loop CPU minus ``bare``'s, for an
imageInference (64×64, 1 step, built-in model) and a modelSearch answered
from memory (logged at DEBUG, so only metrics apply).

    python -m bench.observability [--tasks 150] [--rounds 3] [--json]   (or: python bench/observability.py …)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/, where bench/protocol.py would shadow wisp's ``protocol`` package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._common import environment, log as progress, render_table

MODES = ("bare", "metrics", "metrics+log", "metrics+json")


def _frame(task_type: str) -> bytes:
    if task_type == "imageInference":
        task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1",
                "positivePrompt": "a lighthouse", "width": 64, "height": 64, "steps": 1, "seed": 1}
    else:
        task = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": "tiny"}
    return json.dumps([task]).encode()


def _set_mode(mode: str, out: Any, real_task_done: Any, server: Any) -> None:
    """Configure logging exactly as ``wisp serve`` does for ``mode`` (server.tasklog.configure, task lines riding on
    the database's write-behind thread), writing to ``out``."""
    import os

    from server import tasklog

    os.environ["WISP_LOG_LEVEL"] = "INFO" if mode in ("metrics+log", "metrics+json") else "WARNING"
    os.environ["WISP_LOG_FORMAT"] = "json" if mode == "metrics+json" else "text"
    tasklog.configure(out)
    tasklog.ride_on(server.db.writer)
    tasklog.metrics.task_done = real_task_done if mode != "bare" else (lambda *a, **k: None)  # type: ignore[attr-defined]


async def _drive(server: Any, task_type: str, count: int) -> tuple[float, float]:
    """(loop-thread, whole-process) CPU seconds per task over ``count`` tasks run one after another.

    The whole-process figure includes the device thread and the write-behind thread: what the task lines
    cost in all, wherever they run (noisy for imageInference, whose torch time is in it).
    """
    from server.connection import request_context
    from server.routes import CollectingConn
    from server.sessions import Session

    ctx = request_context(None, "127.0.0.1", 0, None)
    total = 0.0
    process_started = time.process_time()
    from server import tasklog

    for _ in range(count):
        conn = CollectingConn(Session("default", resumable=False), ctx, 64 * 1024 * 1024)
        started = time.thread_time()
        jobs = await server.gateway.handle_frame(conn, _frame(task_type))
        if jobs:
            await asyncio.wait(jobs)
        total += time.thread_time() - started
        assert conn.frames and b'"errors"' not in conn.frames[0], conn.frames[:1]
    tasklog.drain()  # the writer's share of these tasks, counted in the process figure
    return total / count, (time.process_time() - process_started) / count


async def measure(tasks: int, rounds: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    from server import metrics
    from server.app import WispServer
    from server.config import ServerConfig

    with tempfile.TemporaryDirectory(prefix="wisp-obs-") as tmp:
        config = ServerConfig(data_dir=Path(tmp) / "data", warm_builtin=False, torch_threads=1)
        server = WispServer(config)
        server.ensure_first_key()
        server.engine.start()
        real = metrics.task_done
        log_path = Path(tmp) / "wisp.log"
        out = open(log_path, "a")
        results: dict[str, dict[str, list[tuple[float, float]]]] = {t: {m: [] for m in MODES} for t in ("imageInference", "modelSearch")}
        try:
            await _drive(server, "imageInference", 5)  # load the model, warm every path
            await _drive(server, "modelSearch", 50)
            for round_ in range(rounds):
                for mode in MODES:
                    _set_mode(mode, out, real, server)
                    for task_type, count in (("imageInference", tasks), ("modelSearch", tasks * 20)):
                        per_task = await _drive(server, task_type, count)
                        results[task_type][mode].append(per_task)
                    progress(f"round {round_ + 1}/{rounds} {mode}: imageInference "
                             f"{results['imageInference'][mode][-1][0] * 1e6:.0f} µs, modelSearch {results['modelSearch'][mode][-1][0] * 1e6:.1f} µs")
        finally:
            from server import tasklog

            tasklog.flush()
            tasklog.metrics.task_done = real  # type: ignore[attr-defined]
            await asyncio.to_thread(server.engine.stop)
            out.close()
            lines = log_path.read_text().splitlines()
            progress(f"lines written: {len(lines)}, task lines: {sum('wisp.tasks' in line for line in lines)} (expected {2 * rounds * tasks}); "
                     f"the last: {lines[-1][:160] if lines else None}")
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description="per-task cost of wisp's task logs and metrics, on the event loop")
    parser.add_argument("--tasks", type=int, default=150, help="imageInference tasks per mode per round (20× as many searches)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(measure(args.tasks, args.rounds))
    rows = []
    summary: dict[str, Any] = {}
    for task_type, modes in results.items():
        bare = statistics.median(loop for loop, _ in modes["bare"])
        bare_process = statistics.median(process for _, process in modes["bare"])
        for mode in MODES:
            value = statistics.median(loop for loop, _ in modes[mode])
            process = statistics.median(p for _, p in modes[mode])
            extra_ms = (value - bare) * 1000
            summary[f"{task_type}/{mode}"] = {"loop_cpu_us": value * 1e6, "added_ms": extra_ms, "process_cpu_us": process * 1e6,
                                              "process_added_ms": (process - bare_process) * 1000}
            rows.append([task_type, mode, f"{value * 1e6:.1f}", f"{value / bare:.3f}×", f"{extra_ms:+.4f}",
                         "baseline" if mode == "bare" else ("met" if extra_ms <= 0.1 else "NOT met"),
                         f"{process * 1e6:.0f}", f"{(process - bare_process) * 1000:+.4f}"])
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        env = environment()
        print(f"{env['date']} · {env['cpus']} CPUs · {env['cpu_model']} · {env['platform']}")
        print(render_table(["task", "mode", "loop CPU µs/task (median of rounds)", "vs bare", "added ms/task (loop)", "≤ 0.1 ms",
                            "process CPU µs/task", "added ms/task (process)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
