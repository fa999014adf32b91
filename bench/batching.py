"""Dynamic batching: 8 concurrent same-model requests vs the same 8 sent one after another.

Why: with batching, throughput should grow with concurrency (issue 4's goal:
≥ 1.3× on CPU, ≥ 2.5× on a GPU).  Every round runs, against one ``wisp serve``
subprocess, the same 8 one-image txt2img requests (same model, size, steps,
scheduler, CFG; different prompts and seeds):

* sequential: one request at a time (each waits for the previous result);
* concurrent: all 8 sent at once on 8 sockets.

The same is done against a second server with batching off (``WISP_MAX_BATCH=1``)
so the table shows what batching itself buys (concurrency alone gains nothing on
one device thread).  Rounds alternate and the ratio is the median over rounds.
Every concurrent image is compared with its sequential (lone) twin: batching
promises bit-for-bit equal images, and the table counts them.

Run: ``.venv/bin/python bench/batching.py [--rounds N] [--size 64] [--steps 8] [--threads 1] [--cfg 7.5] [--json]``
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
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._common import create_wisp_key, dump_json, environment, fmt_ratio, log, render_table, wisp_server  # noqa: E402

REQUESTS = 8


def request(i: int, size: int, steps: int, cfg: float) -> dict[str, Any]:
    return {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1",
            "positivePrompt": f"a lighthouse at dusk, variant {i}", "width": size, "height": size, "steps": steps,
            "scheduler": "Euler a", "seed": 100 + i, "CFGScale": cfg, "outputType": "base64Data"}


async def connect(url: str, key: str) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    ws = await ws_connect(url, max_size=None)
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
    await ws.recv()
    return ws


async def one(ws: Any, task: dict[str, Any]) -> str:
    """Send one task and wait for its result; returns the image (base64), to compare runs."""
    await ws.send(json.dumps([task]))
    while True:
        frame = json.loads(await ws.recv())
        if "errors" in frame:
            raise RuntimeError(frame)
        for item in frame["data"]:
            if item.get("taskUUID") == task["taskUUID"]:
                return str(item["imageBase64Data"])


async def measure(url: str, key: str, size: int, steps: int, cfg: float) -> tuple[float, float, int]:
    """Sequential and concurrent seconds for the 8 requests, and how many concurrent images equal their lone ones."""
    sockets = [await connect(url, key) for _ in range(REQUESTS)]
    try:
        await one(sockets[0], request(99, size, steps, cfg))  # warm
        started = time.perf_counter()
        lone = [await one(sockets[0], request(i, size, steps, cfg)) for i in range(REQUESTS)]
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        together = await asyncio.gather(*(one(ws, request(i, size, steps, cfg)) for i, ws in enumerate(sockets)))
        concurrent = time.perf_counter() - started
        return sequential, concurrent, sum(a == b for a, b in zip(lone, together))
    finally:
        for ws in sockets:
            await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=7.5, help="CFGScale (1: no guidance, one UNet row per request)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, list[float]]] = {
        name: {"seq": [], "conc": [], "identical": []} for name in ("batching on", "batching off")
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        key = create_wisp_key(data_dir)
        env = {"WISP_TORCH_THREADS": str(args.threads)}
        with wisp_server(data_dir, env={**env, "WISP_MAX_BATCH": "8"}) as on, wisp_server(data_dir, env={**env, "WISP_MAX_BATCH": "1"}) as off:
            on.wait_idle()
            off.wait_idle()
            for round_no in range(args.rounds):
                for name, server in (("batching on", on), ("batching off", off)):
                    seq, conc, same = asyncio.run(measure(f"ws://127.0.0.1:{server.port}/v1", key, args.size, args.steps, args.cfg))
                    results[name]["seq"].append(seq)
                    results[name]["conc"].append(conc)
                    results[name]["identical"].append(same)
                    log(f"round {round_no + 1} {name}: sequential {seq:.3f} s, concurrent {conc:.3f} s, {seq / conc:.2f}×, "
                        f"{same}/{REQUESTS} images identical")
    rows = []
    summary: dict[str, float] = {}
    for name, r in results.items():
        ratios = [s / c for s, c in zip(r["seq"], r["conc"])]
        summary[name] = statistics.median(ratios)
        rows.append([name, statistics.median(r["seq"]), statistics.median(r["conc"]),
                     REQUESTS / statistics.median(r["seq"]), REQUESTS / statistics.median(r["conc"]), fmt_ratio(summary[name]),
                     f"{int(sum(r['identical']))}/{REQUESTS * len(r['identical'])}"])
    result = {"environment": environment(), "args": vars(args), "rounds": results, "throughput_ratio": summary,
              "goal": "concurrent/sequential throughput ≥ 1.3× on CPU (≥ 2.5× on a GPU)"}
    if args.json:
        dump_json(result)
        return
    print(render_table(["8 requests, " + f"{args.size}px {args.steps} steps CFG {args.cfg:g}", "sequential s", "concurrent s",
                        "seq img/s", "conc img/s", "throughput ratio", "images = lone run"], rows))
    verdict = "met" if summary["batching on"] >= 1.3 else "NOT met"
    print(f"verdict: batching on gives {fmt_ratio(summary['batching on'])} (goal ≥ 1.3× on CPU): {verdict}")


if __name__ == "__main__":
    main()
