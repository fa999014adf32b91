"""Soak: a steady mixed load for a long time; RSS at start and end, lost results, errors.

Why: leaks and lost results show only over time.  A ``wisp serve``
subprocess gets ``--sockets`` heartbeating sockets, ``--working`` of which
also send a task mix (ping, modelSearch, imageInference 64×64) at ``--rate``
tasks/s each, for ``--minutes``.  The server's RSS is sampled every 30 s.
At the end every task that was sent must have been answered (the load
generator waits for stragglers), and no error code may appear.
Goal: RSS at the end within the caches' budgets of the start (no growth
trend), zero lost results, zero unexpected errors.

Run: ``.venv/bin/python bench/soak.py --minutes 30``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import create_wisp_key, event_loop_runner, proc_status_kib, wisp_server  # noqa: E402
from bench.loadtest import LoadConfig, render, run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--working", type=int, default=20)
    parser.add_argument("--rate", type=float, default=0.5, help="tasks/s per working socket")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = event_loop_runner()
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="wisp-bench-soak-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        key = create_wisp_key(data)
        with wisp_server(data, env={"WISP_MAX_IN_FLIGHT": "256"}) as server:
            server.wait_idle()
            start_rss = proc_status_kib(server.pid, "VmRSS") / 1024
            stop = threading.Event()

            def sampler() -> None:
                t0 = time.monotonic()
                while not stop.wait(30):
                    samples.append((time.monotonic() - t0, proc_status_kib(server.pid, "VmRSS") / 1024))

            threading.Thread(target=sampler, daemon=True).start()
            cfg = LoadConfig(url=server.url, api_key=key, sockets=args.sockets, working_sockets=args.working,
                             mix={"ping": 20, "modelSearch": 2, "imageInference": 1}, rate=args.rate,
                             duration_s=args.minutes * 60, ping_interval_s=5.0, steps=4, warmup_s=5.0, task_timeout_s=300)
            report = run(run_load(cfg, progress=not args.json))
            stop.set()
            time.sleep(2)
            end_rss = proc_status_kib(server.pid, "VmRSS") / 1024
    sent = {k: v.get("sent", 0) for k, v in report["per_type"].items()}
    done = {k: v.get("answered", v.get("count", 0)) for k, v in report["per_type"].items()}
    lost = {k: sent[k] - done[k] for k in sent if k not in ("authentication",) and sent[k] - done[k] > 0}
    result = {"minutes": args.minutes, "rss_start_MiB": start_rss, "rss_end_MiB": end_rss, "rss_samples": samples,
              "lost": lost, "errors": report["errors"], "load": report}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(render(report))
    print(f"RSS start {start_rss:.0f} MiB, end {end_rss:.0f} MiB; samples every 30 s: "
          + ", ".join(f"{m:.0f}" for _, m in samples))
    print(f"lost results (sent − answered, stragglers waited for): {lost or 'none'}; errors: {report['errors'] or 'none'}")


if __name__ == "__main__":
    main()
