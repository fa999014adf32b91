"""The engine's device path vs the direct diffusers call, in one process: where does the device thread's extra CPU go?

Why: ``bench/inference.py`` splits wisp's CPU per request into the device
thread and the rest, and across fresh processes the device thread uses
+0.4 to +1.6 ms more than a direct script's main thread at 4 steps (RESULTS.md,
2026-12-05), with no code path to blame.  A comparison across processes
carries each process's luck (±3 %), so this one stays in one process: it
starts an :class:`engine.core.Engine` (no server, no socket), loads the
direct pipeline beside it, and alternates blocks of

* ``engine.run`` — a prepared job run by the engine: the device thread's CPU
  (its busiest thread) and the rest of the process's (the loop, the
  write-behind thread) are reported apart;
* ``render (main)`` — ``Inference._render`` (the engine's model, wrappers,
  PNG, image store) called on the main thread;
* ``direct (main)`` — the direct call, PNG encode and file write, as
  ``bench/inference.py``'s worker does, on the main thread;
* ``same pipeline: device thread`` — that direct call, PNG and write made
  with the engine's own loaded pipeline object, submitted to the engine's
  device thread as a bare function: the same weights, thread and queue as
  ``engine.run``, none of wisp's job handling.

The order of the sides rotates from block to block (use a multiple of 8
blocks): which side ran just before decides what the caches hold.

``render`` against ``direct`` is wisp's wrappers on the same thread;
``engine.run`` against ``render`` is the device thread against the main
thread.  ``engine.run`` against ``same pipeline`` is the one comparison free
of layout luck (two copies of a model in one process, or two processes,
differ by 1–2 ms for the same code; RESULTS.md, 2026-12-05): what wisp's
job handling costs the device thread, and the other threads.  Repeat it
(``--processes``) to see which differences follow the code and which follow
the process.

Run: ``.venv/bin/python bench/device_path.py [--case 4:7] [--requests 8] [--blocks 8] [--processes 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/protocol.py would shadow wisp's protocol package

for _name, _value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
    os.environ.setdefault(_name, _value)

from bench._common import cpu_spent, log, render_table, thread_cpu_s

SIDES = ("engine.run: device thread", "engine.run: other threads", "render (main)", "direct (main)",
         "same pipeline: device thread", "same pipeline: other threads")


def one_process(data_dir: Path, case_text: str, requests: int, blocks: int) -> dict[str, float]:
    """In this process: ms of CPU per request for each side (alternating blocks, ABBA)."""
    import msgspec
    import uvloop

    # Import what the engine's threads would otherwise import concurrently with this one (lazy imports are not
    # thread-safe) before the engine starts.
    import diffusers  # noqa: F401
    import httpx  # noqa: F401
    import urllib.request  # noqa: F401

    from bench.inference import Case, Direct, inference_task
    from engine.core import Engine, EngineConfig
    from engine.heap import keep_freed_memory
    from engine.workqueue import submit
    from protocol.inference import ImageInference

    case = Case.parse(case_text)
    keep_freed_memory()

    async def main() -> dict[str, float]:
        engine = Engine(EngineConfig(data_dir=data_dir, torch_threads=1))
        engine.start()
        inference = engine.inference

        async def prepared(seed: int) -> Any:
            return await engine.prepare_job(msgspec.convert(inference_task(seed, case), ImageInference), "bench", "bench")

        async def run_engine(seed: int) -> None:
            await engine.run(await prepared(seed), lambda event: None)

        try:
            for i in range(3):
                await run_engine(10_000 + i)  # the engine's model is loaded and warm
            template = await prepared(1)
            entry = inference.entry(template.model)
            with tempfile.TemporaryDirectory(prefix="wisp-bench-direct-") as tmp:
                direct = Direct(data_dir / "builtin" / "tiny-sd15-v1", Path(tmp) / "images", Path(tmp) / "tmp", 1)
                with inference.library.use(entry) as model:  # the direct call, PNG and write, on the engine's own pipeline
                    same = Direct(data_dir / "builtin" / "tiny-sd15-v1", Path(tmp) / "images", Path(tmp) / "tmp", 1,
                                  pipe=model.base)

                async def run_same(seed: int) -> None:
                    await submit(inference.queue, "bench", lambda: same.generate(seed, case))

                def render(seed: int) -> None:
                    job = msgspec.structs.replace(template, seeds=(seed,))
                    inference._render(entry, inference.spec(job, None), job, None)

                for i in range(3):
                    render(20_000 + i)
                    direct.generate(20_000 + i, case)
                    await run_same(20_000 + i)
                totals = dict.fromkeys(SIDES, 0.0)
                for block in range(blocks):
                    # Each side follows each other side equally often (rotations, then the same reversed): the side
                    # that ran just before decides which weights the caches hold, worth ~1 ms a request here.
                    names = ["engine", "render", "direct", "same"]
                    order = names[block % 4:] + names[: block % 4]
                    if (block // 4) % 2:
                        order.reverse()
                    seeds = range(block * 1000, block * 1000 + requests)
                    for side in order:
                        if side in ("engine", "same"):
                            label = "engine.run" if side == "engine" else "same pipeline"
                            run = run_engine if side == "engine" else run_same
                            before = thread_cpu_s(os.getpid())
                            for seed in seeds:
                                await run(seed)
                            spent, busiest = cpu_spent(before, thread_cpu_s(os.getpid()))
                            totals[f"{label}: device thread"] += busiest
                            totals[f"{label}: other threads"] += spent - busiest
                        else:
                            start = time.thread_time()
                            for seed in seeds:
                                render(seed) if side == "render" else direct.generate(seed, case)
                            totals["render (main)" if side == "render" else "direct (main)"] += time.thread_time() - start
                return {name: 1e3 * value / (blocks * requests) for name, value in totals.items()}
        finally:
            engine.stop()

    return uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The engine's device path vs the direct diffusers call, in one process.")
    parser.add_argument("--case", default="4:7", help="STEPS:CFG (default 4:7)")
    parser.add_argument("--requests", type=int, default=8, help="requests per side and block")
    parser.add_argument("--blocks", type=int, default=8, help="alternating blocks per process (a multiple of 8: every order)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes, one after the other")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--one", metavar="DATA_DIR", help=argparse.SUPPRESS)  # a child: measure, print one JSON line
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_process(Path(args.one), args.case, args.requests, args.blocks)), flush=True)
        return 0

    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="wisp-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        from engine.builtin.tiny_sd15 import ensure_tiny_sd15

        ensure_tiny_sd15(data_dir)
        for index in range(args.processes):
            log(f"process {index + 1}/{args.processes}")
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", str(data_dir), "--case", args.case,
                 "--requests", str(args.requests), "--blocks", str(args.blocks)],
                check=True, capture_output=True, text=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"benchmark": "device_path", "case": args.case, "processes": results}, indent=2))
        return 0
    def differences(r: dict[str, float]) -> list[str]:
        return [f"{r['render (main)'] - r['direct (main)']:+.2f}", f"{r['engine.run: device thread'] - r['render (main)']:+.2f}",
                f"{r['engine.run: device thread'] - r['same pipeline: device thread']:+.2f}",
                f"{r['engine.run: other threads'] - r['same pipeline: other threads']:+.2f}"]

    headers = ["process", *SIDES, "render − direct", "device − render", "engine − same: device", "engine − same: others"]
    rows = [[i + 1, *(r[s] for s in SIDES), *differences(r)] for i, r in enumerate(results)]
    means = {s: statistics.fmean(r[s] for r in results) for s in SIDES}
    rows.append(["mean", *(means[s] for s in SIDES), *differences(means)])
    print(render_table(headers, rows))
    print(f"\nms of CPU per request, case {args.case}, {args.blocks} alternating blocks of {args.requests} per side in "
          f"each fresh process; 'render' and 'direct' run on the main thread, engine.run and 'same pipeline' (the direct call "
          f"on the engine's own pipeline object) on the engine's device thread.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
