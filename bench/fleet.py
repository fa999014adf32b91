"""The engine fleet (``--engine ray-local``) against the embedded engine, on this machine (issue 14).

Why: the fleet must cost next to nothing per task, scale with replicas, and
route so that models load once.  Four measurements, one table each:

1. **Added latency per task**: the same sequential 64×64, 4-step requests
   (built-in tiny model, seeded) through an embedded ``wisp serve`` and through
   a fleet front end with one replica; mean and p50 per request, the difference.
   Goal: ≤ 5 ms.  Both sides use one torch thread for the model.
2. **Throughput at saturation**: 64 requests of 128×128, 8 steps, 16 in
   flight, against a fleet of 1 replica and of 2 (one torch thread each,
   batching off so that a replica is one device); requests/s and the ratio.
   Goal: ≥ 1.8×.  On a 2-core box the front end, Ray's own processes and two
   replicas share two cores: read the figure with that in mind.
3. **Zipf mix over 12 models**: 12 uploaded tiny checkpoints, 120 requests
   drawn Zipf(1.1) over them, 8 in flight, on 2 replicas whose model caches
   hold 4 each, against one embedded process whose cache holds 8 (twice the
   budget of a replica).  Reported: loads, *duplicate cold loads* (a replica
   loading a model another replica loaded under 2 s earlier: a herd that
   went two ways), in-use evictions (a task that failed or came back
   different: the cache never evicts a model in use, so any would show as a
   failure), and the hit rate (requests that found their model resident).
4. **Cold start and memory**: seconds from ``wisp serve --engine ray-local``
   to serving with every replica ready, and each replica's RSS.

Run: ``.venv/bin/python bench/fleet.py [--json] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import websockets  # noqa: E402

from bench._common import (  # noqa: E402
    PYTHON, ServerProcess, create_wisp_key, dump_json, environment, log, proc_status_kib, render_table, wisp_server,
)

TINY = "wisp:tiny-sd15@1"
TINY_BYTES = 5_700_000


def fleet_server(data_dir: Path, replicas: int, env: dict[str, str]) -> ServerProcess:
    server = wisp_server(data_dir, {"WISP_FLEET_CACHE_DIR": str(data_dir.parent / f"{data_dir.name}-cache"), **env})
    server.argv += ["--engine", "ray-local", "--replicas", str(replicas)]
    server.start_timeout_s = 240
    return server


def health(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).json()


def wait_replicas(server: ServerProcess, count: int, timeout_s: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = health(server).get("fleet", {}).get("replicas", [])
        if len(found) >= count and all(r["age_s"] < 2 for r in found):
            return found
        time.sleep(0.2)
    raise RuntimeError(f"the fleet did not reach {count} replicas")


def settled(server: ServerProcess) -> list[dict[str, Any]]:
    after = time.time() + 0.3
    while True:
        found = health(server)["fleet"]["replicas"]
        if found and all(r["reported_at"] > after for r in found):
            return found
        time.sleep(0.2)


class Client:
    """One authenticated socket; ``infer`` sends one task and waits for its result."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, key: str) -> "Client":
        ws = await websockets.connect(url, max_size=None)
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        return cls(ws)

    async def run(self, task: dict[str, Any], done: Any = None) -> dict[str, Any]:
        task = {"taskUUID": str(uuid.uuid4()), **task}
        await self.ws.send(json.dumps([task]))
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("errors"):
                return {"error": frame["errors"][0]}
            for item in frame.get("data", []):
                if item.get("taskUUID") == task["taskUUID"] and (done(item) if done else "imageBase64Data" in item):
                    return item

    async def infer(self, model: str = TINY, seed: int = 1, size: int = 64, steps: int = 4) -> dict[str, Any]:
        return await self.run({"taskType": "imageInference", "model": model, "positivePrompt": "a quiet harbour", "width": size,
                               "height": size, "steps": steps, "seed": seed, "CFGScale": 7, "outputType": "base64Data"})

    async def close(self) -> None:
        await self.ws.close()


async def latency(url: str, key: str, requests: int) -> list[float]:
    client = await Client.open(url, key)
    try:
        for i in range(5):
            await client.infer(seed=i)
        samples = []
        for i in range(requests):
            started = time.perf_counter()
            result = await client.infer(seed=100 + i)
            samples.append((time.perf_counter() - started) * 1000)
            assert "error" not in result, result
        return samples
    finally:
        await client.close()


async def saturate(url: str, key: str, requests: int, in_flight: int, size: int, steps: int) -> float:
    clients = [await Client.open(url, key) for _ in range(in_flight)]
    try:
        await asyncio.gather(*(c.infer(seed=i, size=size, steps=steps) for i, c in enumerate(clients)))  # warm every replica
        queue = list(range(requests))
        started = time.perf_counter()

        async def worker(client: Client) -> None:
            while queue:
                seed = queue.pop()
                result = await client.infer(seed=1000 + seed, size=size, steps=steps)
                assert "error" not in result, result

        await asyncio.gather(*(worker(c) for c in clients))
        return requests / (time.perf_counter() - started)
    finally:
        for c in clients:
            await c.close()


def make_checkpoints(root: Path, count: int) -> list[Path]:
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file

    folder = ensure_tiny_sd15(root / "build")
    return [write_sd15_single_file(folder, root / f"zipf{i}.safetensors", noise_seed=500 + i) for i in range(count)]


async def upload_all(url: str, key: str, files: list[Path], file_base: str) -> list[str]:
    client = await Client.open(url, key)
    airs = []
    try:
        for i, path in enumerate(files):
            air = f"default:zipf{i}@1"
            result = await client.run({"taskType": "modelUpload", "air": air, "category": "checkpoint", "architecture": "sd1x",
                                       "type": "base", "format": "safetensors", "name": f"zipf {i}", "version": "1",
                                       "uniqueIdentifier": uuid.uuid4().hex, "downloadURL": f"{file_base}/{path.name}"},
                                      done=lambda item: item.get("status") == "ready")
            assert "error" not in result, result
            airs.append(air)
        return airs
    finally:
        await client.close()


async def zipf_mix(url: str, key: str, airs: list[str], requests: int, in_flight: int) -> dict[str, Any]:
    rng = random.Random(14)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(airs))]
    plan = [(rng.choices(airs, weights)[0], 700 + i) for i in range(requests)]
    clients = [await Client.open(url, key) for _ in range(in_flight)]
    results: dict[int, str] = {}
    failures = 0
    try:
        queue = list(enumerate(plan))

        async def worker(client: Client) -> None:
            nonlocal failures
            while queue:
                index, (air, seed) = queue.pop(0)
                result = await client.infer(model=air, seed=seed)
                if "error" in result:
                    failures += 1
                else:
                    results[index] = result["imageBase64Data"]

        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            await c.close()
    return {"results": results, "failures": failures, "plan": plan}


def duplicate_cold_loads(states: list[dict[str, Any]], window_s: float = 2.0) -> int:
    loads = sorted((when, model, r["id"]) for r in states for model, when in r.get("cold_loads", []))
    duplicates = 0
    for i, (when, model, replica) in enumerate(loads):
        if any(m == model and rid != replica and 0 <= when - w < window_s for w, m, rid in loads[:i]):
            duplicates += 1
    return duplicates


def file_server(root: Path) -> tuple[Any, str]:
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def two_replicas(tmp: Path, common: dict[str, str], checkpoints: list[Path], base: str, n_zipf: int, n_sat: int) -> dict[str, Any]:
    """Measurements 2–4 on one 2-replica fleet (budgets for 4 models each, batching off): cold start, RSS,
    saturation (skipped when ``n_sat`` is 0) and the Zipf mix."""
    data = tmp / "fleet2"
    data.mkdir()
    key = create_wisp_key(data)
    started = time.monotonic()
    budget = {"WISP_CACHE_DEVICE_BYTES": str(int(TINY_BYTES * 4.5)), "WISP_CACHE_HOST_BYTES": str(TINY_BYTES // 2)}
    with fleet_server(data, 2, {**common, **budget, "WISP_MAX_BATCH": "1"}) as fleet:
        states = wait_replicas(fleet, 2)
        cold_start = time.monotonic() - started
        rss = [proc_status_kib(r["pid"], "VmRSS") / 1024 for r in states]
        rps = asyncio.run(saturate(fleet.url, key, n_sat, 16, 128, 8)) if n_sat else 0.0
        airs = asyncio.run(upload_all(fleet.url, key, checkpoints, base))
        before = settled(fleet)
        spills_before = health(fleet)["fleet"]["router"].get("spills", 0)
        mix = asyncio.run(zipf_mix(fleet.url, key, airs, n_zipf, 8))
        after = settled(fleet)
        router = health(fleet)["fleet"]["router"]
    loads = sum(r["loads"] for r in after) - sum(r["loads"] for r in before)
    cold = [c for r in after for c in r["cold_loads"] if c[1] > max(x["reported_at"] for x in before)]
    zipf = {"requests": n_zipf, "loads": loads, "duplicate_cold_loads": duplicate_cold_loads(after),
            "spills": router.get("spills", 0) - spills_before, "failures": mix["failures"], "hit_rate": 1 - loads / n_zipf,
            "cold_loads_seen": len(cold)}
    return {"cold_start_s": cold_start, "rss_mib": rss, "rps": rps, "zipf": zipf, "mix": mix, "router": router,
            "resident": {r["id"]: sorted(r["device"]) for r in after}}


def zipf_only(tmp: Path, common: dict[str, str], n_zipf: int) -> int:
    """``--zipf-only``: measurement 3 alone (for iterating on routing)."""
    files_root = tmp / "files"
    files_root.mkdir()
    served, base = file_server(files_root)
    run = two_replicas(tmp, common, make_checkpoints(files_root, 12), base, n_zipf, 0)
    served.shutdown()
    print(json.dumps({**run["zipf"], "router": run["router"], "resident": run["resident"]}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--latency-only", action="store_true", help="only the added-latency measurement")
    parser.add_argument("--zipf-only", action="store_true", help="only the Zipf mix (and the cold start of 2 replicas)")
    args = parser.parse_args()
    n_latency, n_sat, n_zipf = (20, 16, 40) if args.quick else (100, 64, 120)
    tmp = Path(tempfile.mkdtemp(prefix="wisp-bench-fleet-"))
    common = {"WISP_TORCH_THREADS": "1", "WISP_REPLICA_THREADS": "1", "WISP_PNG_PARAMETERS": "0", "WISP_ALLOW_PRIVATE_URLS": "1",
              "HOME": str(tmp / "home")}
    (tmp / "home").mkdir()
    out: dict[str, Any] = {"environment": environment({"ray": __import__("ray").__version__})}
    try:
        # 1. latency, embedded vs one replica
        if args.zipf_only:
            return zipf_only(tmp, common, n_zipf)
        data = tmp / "embedded"
        data.mkdir()
        key = create_wisp_key(data)
        with wisp_server(data, common) as embedded:
            embedded_ms = asyncio.run(latency(embedded.url, key, n_latency))
        data = tmp / "fleet1"
        data.mkdir()
        key1 = create_wisp_key(data)
        started = time.monotonic()
        with fleet_server(data, 1, common) as fleet1:
            states = wait_replicas(fleet1, 1)
            cold_start_1 = time.monotonic() - started
            fleet_ms = asyncio.run(latency(fleet1.url, key1, n_latency))
            rss1 = [proc_status_kib(r["pid"], "VmRSS") / 1024 for r in states]
            sat1 = 0.0 if args.latency_only else asyncio.run(saturate(fleet1.url, key1, n_sat, 16, 128, 8))
        e_mean, f_mean = statistics.fmean(embedded_ms), statistics.fmean(fleet_ms)
        e_p50, f_p50 = statistics.median(embedded_ms), statistics.median(fleet_ms)
        out["latency"] = {"embedded_mean_ms": e_mean, "fleet_mean_ms": f_mean, "embedded_p50_ms": e_p50, "fleet_p50_ms": f_p50,
                          "added_mean_ms": f_mean - e_mean, "added_p50_ms": f_p50 - e_p50}
        if args.latency_only:
            print(json.dumps(out["latency"], indent=1))
            return 0
        # 2 + 3 + 4: two replicas
        files_root = tmp / "files"
        files_root.mkdir()
        checkpoints = make_checkpoints(files_root, 12)
        served, base = file_server(files_root)
        run = two_replicas(tmp, common, checkpoints, base, n_zipf, n_sat)
        mix, zipf = run["mix"], run["zipf"]
        # the same mix on one embedded process with twice a replica's budget
        data = tmp / "embedded8"
        data.mkdir()
        key8 = create_wisp_key(data)
        with wisp_server(data, {**common, "WISP_CACHE_DEVICE_BYTES": str(int(TINY_BYTES * 8.5)),
                                "WISP_CACHE_HOST_BYTES": str(TINY_BYTES // 2), "WISP_MAX_BATCH": "1"}) as one:
            airs8 = asyncio.run(upload_all(one.url, key8, checkpoints, base))
            stats_before = health(one)["modelCache"]
            mix8 = asyncio.run(zipf_mix(one.url, key8, airs8, n_zipf, 8))
            stats_after = health(one)["modelCache"]
        served.shutdown()
        loads8 = stats_after["misses"] - stats_before["misses"]
        same = sum(1 for i, data_ in mix["results"].items() if mix8["results"].get(i) == data_)
        zipf.update({"embedded_loads": loads8, "embedded_hit_rate": 1 - loads8 / n_zipf,
                     "results_equal_to_embedded": same, "in_use_evictions": mix["failures"] + (len(mix["results"]) - same)})
        out["zipf"] = zipf
        out["throughput"] = {"one_replica_rps": sat1, "two_replicas_rps": run["rps"], "ratio": run["rps"] / sat1}
        out["cold_start"] = {"one_replica_s": cold_start_1, "two_replicas_s": run["cold_start_s"], "rss_mib_one": rss1,
                             "rss_mib_two": run["rss_mib"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        dump_json(out)
        return 0
    lat, thr, z, cs = out["latency"], out["throughput"], out["zipf"], out["cold_start"]
    print(render_table(["measure", "embedded", "fleet", "difference / ratio", "goal"], [
        ["latency mean (ms), 64², 4 steps", f"{lat['embedded_mean_ms']:.2f}", f"{lat['fleet_mean_ms']:.2f}",
         f"+{lat['added_mean_ms']:.2f} ms", "≤ +5 ms"],
        ["latency p50 (ms)", f"{lat['embedded_p50_ms']:.2f}", f"{lat['fleet_p50_ms']:.2f}", f"+{lat['added_p50_ms']:.2f} ms", ""],
        ["throughput req/s, 128², 8 steps (1 vs 2 replicas)", f"{thr['one_replica_rps']:.2f}", f"{thr['two_replicas_rps']:.2f}",
         f"{thr['ratio']:.2f}×", "≥ 1.8×"],
    ]))
    print()
    print(render_table(["Zipf mix, 12 models", "fleet (2 × budget 4)", "embedded (budget 8)", "goal"], [
        ["requests", z["requests"], z["requests"], ""],
        ["loads", z["loads"], z["embedded_loads"], ""],
        ["hit rate", f"{z['hit_rate']:.1%}", f"{z['embedded_hit_rate']:.1%}", ""],
        ["duplicate cold loads (another replica loaded it < 2 s before)", z["duplicate_cold_loads"], "—", "0"],
        ["  of which deliberate (a hot model's second replica)", f"≤ {z['spills']} spills", "—", ""],
        ["in-use evictions (failed or different results)", z["in_use_evictions"], "—", "0"],
        ["results equal to the embedded run", f"{z['results_equal_to_embedded']}/{z['requests']}", "", ""],
    ]))
    print()
    print(render_table(["cold start", "1 replica", "2 replicas"], [
        ["wisp serve → serving, replicas ready (s)", f"{cs['one_replica_s']:.1f}", f"{cs['two_replicas_s']:.1f}"],
        ["RSS per replica (MiB)", " / ".join(f"{x:.0f}" for x in cs["rss_mib_one"]), " / ".join(f"{x:.0f}" for x in cs["rss_mib_two"])],
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
