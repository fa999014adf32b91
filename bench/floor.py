"""The floor under bench/inference.py's figure: the least server against the direct call, beside wisp.

Why: issue 13 asks wisp's server CPU per imageInference to be within 1 ms of a
direct diffusers call's.  Part of any server's cost is not wisp's to remove:
the request and the result cross a socket, the device thread hands the
result to the event loop, and (for wisp's durability) a journal row is
committed.  On the 2-core VM each wake-up of an idle thread costs far more
than the same work done hot (RESULTS.md, 2026-12-05).  This bench measures
that floor instead of estimating it: in every round it starts

* the direct worker of ``bench/inference.py`` (the baseline),
* ``bench/floor_server.py`` bare: websockets on uvloop and one device thread
  running the direct call, nothing else,
* ``bench/floor_server.py --journal``: the same plus wisp's task journal and
  image-owner rows through wisp's write-behind thread,
* ``wisp serve``, and (``wisp (journal 0.2 s)``) the same with
  ``WISP_JOURNAL_INTERVAL=0.2``: its write-behind thread commits once per
  ~4 of these requests instead of once per request,

and measures each server against the direct worker with
``bench/inference.py``'s own method (alternating ABBA blocks, client-timed
wall time, per-thread CPU from schedstat).  Rounds are fresh processes; the
table pools them and gives each server's 95 % interval of the mean CPU Δ.

Run: ``.venv/bin/python bench/floor.py [--cases 4:7] [--rounds 3] [--requests 60]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/protocol.py would shadow wisp's protocol package

from bench._common import PYTHON, QuietGate, ServerProcess, create_wisp_key, log, render_table, wisp_server
from bench.inference import Case, DirectProcess, Settings, measure_cases, others_text, pooled_verdict

SERVERS = ("floor", "floor + journal", "floor device-loaded", "floor wisp-model", "wisp", "wisp (journal 0.2 s)")


def floor_server(folder: Path, root: Path, threads: int, journal: bool, load_on_device: bool = False,
                 wisp_model: bool = False) -> ServerProcess:
    argv = [PYTHON, str(Path(__file__).with_name("floor_server.py")), str(folder), str(root / "images"), str(root / "tmp"),
            "--threads", str(threads)]
    if journal:
        argv += ["--journal", str(root / "wisp.db")]
    if load_on_device:
        argv.append("--load-on-device")
    if wisp_model:
        argv.append("--wisp-model")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return ServerProcess(name="floor", argv=argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="4:7", help="comma-separated STEPS:CFG (default 4:7)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh sets of processes")
    parser.add_argument("--requests", type=int, default=60, help="measured requests per server, case and round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on every side")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of: {', '.join(SERVERS)}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.servers.split(",") if name.strip()]
    if not chosen or any(name not in SERVERS for name in chosen):
        parser.error(f"--servers takes names from: {', '.join(SERVERS)}")
    cases = [Case.parse(text) for text in args.cases.split(",") if text.strip()]
    s = Settings(requests=args.requests, threads=args.threads, rounds=args.rounds)

    import uvloop

    per: dict[tuple[str, Case], list[Any]] = {(name, case): [] for name in chosen for case in cases}
    with tempfile.TemporaryDirectory(prefix="wisp-floor-") as tmp:
        data_dir = Path(tmp) / "data"
        from engine.builtin.tiny_sd15 import ensure_tiny_sd15

        folder = ensure_tiny_sd15(data_dir)
        key = create_wisp_key(data_dir)
        second_dir = Path(tmp) / "data-2"  # a second wisp needs a data dir of its own (each holds its dir's lock)
        keys = {"wisp (journal 0.2 s)": create_wisp_key(second_dir)} if "wisp (journal 0.2 s)" in chosen else {}
        for round_index in range(s.rounds):
            root = Path(tmp) / f"round-{round_index}"
            every = {
                "floor": lambda: floor_server(folder, root / "floor", s.threads, journal=False),
                "floor + journal": lambda: floor_server(folder, root / "floor-journal", s.threads, journal=True),
                "floor device-loaded": lambda: floor_server(folder, root / "floor-device-load", s.threads,
                                                            journal=False, load_on_device=True),
                "floor wisp-model": lambda: floor_server(folder, root / "floor-wisp-model", s.threads, journal=False,
                                                         load_on_device=True, wisp_model=True),
                "wisp": lambda: wisp_server(data_dir, env={"WISP_TORCH_THREADS": str(s.threads)}),
                "wisp (journal 0.2 s)": lambda: wisp_server(second_dir, env={"WISP_TORCH_THREADS": str(s.threads),
                                                                            "WISP_JOURNAL_INTERVAL": "0.2"}),
            }
            servers = {name: every[name]() for name in chosen}
            direct: DirectProcess | None = None
            try:
                for server in servers.values():
                    server.start()
                direct = DirectProcess(folder, root / "direct", s.threads, None)
                for server in servers.values():
                    server.wait_idle()
                log(f"round {round_index + 1}/{s.rounds}: direct worker {direct.pid}, "
                    + ", ".join(f"{name} {server.pid}" for name, server in servers.items()))
                for name, server in servers.items():
                    own_pids = [os.getpid(), server.pid, direct.pid]
                    gate = QuietGate(own_pids, budget_s=s.quiet_budget)
                    for case, out in uvloop.run(measure_cases(s, cases, direct, server.url, keys.get(name, key), gate, own_pids)):
                        per[(name, case)].append((out["sides"], out["block_load"], 0))  # PNG identity: inference.py's
            finally:
                for server in servers.values():
                    server.stop()
                if direct is not None:
                    direct.stop()

    rows = []
    for case in cases:
        for name in chosen:
            v = pooled_verdict(case, s.requests, per[(name, case)])
            w, d = v["results"]["wisp"], v["results"]["direct"]
            interval = v["rounds_cpu_interval_ms"]
            threads = others_text(w["other_threads_by_name_cpu_ms_per_request"])
            rows.append([
                case.name, name, f"{v['ratio_mean']:.3f}×", f"{v['cpu_overhead_ms']:+.2f}",
                f"{interval[0]:+.2f} to {interval[1]:+.2f}" if interval else "—",
                f"{w['busiest_thread_cpu_ms_per_request'] - d['busiest_thread_cpu_ms_per_request']:+.2f}",
                f"{w['other_threads_cpu_ms_per_request']:.2f}", threads or "—",
            ])
    print(render_table(["case", "server", "server/direct", "CPU Δ (ms)", "95 % interval of the mean CPU Δ",
                        "device thread Δ", "other threads", "other threads by name (ms)"], rows))
    print(f"\n{s.rounds} round(s) of fresh processes, {s.requests} requests per server, case and round, each server in "
          "alternating blocks against the same direct worker (bench/inference.py's method); CPU Δ: the server "
          "process's CPU per request minus the direct worker's. 'floor': bench/floor_server.py (websockets, uvloop, "
          "one device thread running the direct call); '+ journal': with wisp's journal and image-owner rows through "
          "its write-behind thread; 'device-loaded': the pipeline loaded there, as wisp's engine does, "
          "instead of on the main thread.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
