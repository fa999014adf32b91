"""modelUpload ingest throughput vs a raw download + SHA-256 of the same file.

Why: an upload's cost should be the bytes on the wire, not what wisp does
with them.  The baseline is the least any ingest must do: stream the file
from a loopback HTTP server to disk, hashing on the way (no fsync).  wisp's
number is the whole modelUpload, from sending the task to ``ready``:
download + SHA-256 + fsync, header validation, sniffing, store, registry.
The file is a kohya-style LoRA already in F16, so no dtype conversion runs
(a conversion is a separate, deliberate rewrite of the file).

It also reads wisp's peak RSS (VmHWM) before and after each ingest, for two
file sizes, to show that memory does not grow with file size.

Run: ``.venv/bin/python bench/upload.py [--gib 1.0] [--small-gib 0.25] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PYTHON, REPO_ROOT, create_wisp_key, environment, log, proc_status_kib, render_table, wisp_server  # noqa: E402

CHUNK = 1024 * 1024


def write_big_lora(path: Path, gib: float) -> int:
    """A valid kohya LoRA of about ``gib`` GiB in F16 (SD-1.x cross-attention widths), written sparse."""
    rank, width, out = 64, 768, 320
    per_module = 2 * (rank * width + out * rank)  # bytes of down + up in F16
    modules = max(1, int(gib * 1024**3 // per_module))
    header: dict[str, object] = {}
    offset = 0
    for i in range(modules):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k_{i}"
        for suffix, shape in ((".lora_down.weight", [rank, width]), (".lora_up.weight", [out, rank])):
            size = 2 * shape[0] * shape[1]
            header[name + suffix] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    header["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = {
        "dtype": "F16", "shape": [rank, width], "data_offsets": [offset, offset + 2 * rank * width]}
    offset += 2 * rank * width
    header["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = {
        "dtype": "F16", "shape": [width, rank], "data_offsets": [offset, offset + 2 * width * rank]}
    offset += 2 * width * rank
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        # Non-zero data so nothing can shortcut zero pages: a repeating 1 MiB pattern.
        pattern = os.urandom(CHUNK)
        left = offset
        while left > 0:
            n = min(left, CHUNK)
            f.write(pattern[:n])
            left -= n
    return path.stat().st_size


def baseline(url: str, dest: Path) -> tuple[float, str]:
    """Stream to disk with SHA-256 on the way: the floor for any ingest."""
    import httpx

    start = time.perf_counter()
    digest = hashlib.sha256()
    with httpx.Client(timeout=None) as client, client.stream("GET", url) as response, open(dest, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed, digest.hexdigest()


async def ingest(ws_url: str, key: str, air: str, url: str) -> float:
    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        task_uuid = str(uuid.uuid4())
        start = time.perf_counter()
        await ws.send(json.dumps([{
            "taskType": "modelUpload", "taskUUID": task_uuid, "air": air, "category": "lora", "architecture": "sd1x",
            "format": "safetensors", "downloadURL": url, "uniqueIdentifier": air, "name": "bench", "version": "1",
        }]))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("errors"):
                raise RuntimeError(frame["errors"])
            if any(item.get("status") == "ready" for item in frame.get("data", [])):
                return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large file")
    parser.add_argument("--small-gib", type=float, default=0.25, help="size of the small file (memory comparison)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wisp-bench-upload-", dir=str(REPO_ROOT / ".." )) as tmp:
        root = Path(tmp)
        served = root / "served"
        served.mkdir()
        sizes = {"small": args.small_gib, "large": args.gib}
        files = {}
        for label, gib in sizes.items():
            files[label] = served / f"{label}.safetensors"
            size = write_big_lora(files[label], gib)
            log(f"wrote {label} file: {size / 1024**3:.3f} GiB")
        http = subprocess.Popen(
            [PYTHON, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(served)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            line = http.stdout.readline() if http.stdout else ""
            port = int(line.split("port ")[1].split()[0])
            data = root / "data"
            data.mkdir()
            key = create_wisp_key(data)
            subprocess.run([PYTHON, "-m", "server.cli", "sources", "create", "bench", "--data-dir", str(data)],
                           cwd=REPO_ROOT, check=True, capture_output=True)
            server = wisp_server(data, env={"WISP_ALLOW_PRIVATE_URLS": "1", "WISP_MAX_MODEL_BYTES": str(8 * 1024**3)})
            rows = []
            results: dict[str, dict[str, float]] = {}
            with server:
                server.wait_idle()
                for label in ("small", "large"):
                    url = f"http://127.0.0.1:{port}/{files[label].name}"
                    size = files[label].stat().st_size
                    base_s: list[float] = []
                    wisp_s: list[float] = []
                    hwm_growth: list[int] = []
                    with open(files[label], "rb") as warm:  # both sides read from the page cache
                        while warm.read(64 * CHUNK):
                            pass
                    for r in range(args.rounds):
                        def run_wisp() -> None:
                            before = proc_status_kib(server.pid, "VmHWM")
                            wisp_s.append(asyncio.run(ingest(server.url, key, f"bench:{label}{r}@1", url)))
                            hwm_growth.append(proc_status_kib(server.pid, "VmHWM") - before)

                        rss_before = proc_status_kib(server.pid, "VmRSS")
                        if r % 2:  # alternate which side goes first
                            run_wisp()
                        base_s.append(baseline(url, root / "baseline.bin")[0])
                        if not r % 2:
                            run_wisp()
                        log(f"{label} round {r + 1}: baseline {size / base_s[-1] / 1e6:.0f} MB/s, wisp {size / wisp_s[-1] / 1e6:.0f} MB/s, "
                            f"wisp RSS {rss_before / 1024:.0f} MiB, peak grew {hwm_growth[-1] / 1024:.1f} MiB")
                    best_base, best_wisp = min(base_s), min(wisp_s)
                    results[label] = {
                        "bytes": size, "baseline_MBps": size / best_base / 1e6, "wisp_MBps": size / best_wisp / 1e6,
                        "ratio": best_base / best_wisp, "peak_rss_growth_MiB": max(hwm_growth) / 1024,
                        "peak_rss_MiB": proc_status_kib(server.pid, "VmHWM") / 1024,
                    }
                    rows.append([f"{label} ({size / 1024**3:.2f} GiB)", f"{results[label]['baseline_MBps']:.0f}",
                                 f"{results[label]['wisp_MBps']:.0f}", f"{results[label]['ratio']:.3f}×",
                                 f"{results[label]['peak_rss_growth_MiB']:.1f}"])
        finally:
            http.terminate()
            http.wait(10)
    goal = results["large"]["ratio"] >= 0.8
    flat = results["large"]["peak_rss_growth_MiB"] <= results["small"]["peak_rss_growth_MiB"] + 32
    if args.json:
        print(json.dumps({"results": results, "environment": environment(), "goal_met": goal, "memory_flat": flat}, indent=2))
        return
    print(render_table(["file", "baseline MB/s (download+sha256)", "wisp modelUpload MB/s", "wisp/baseline", "wisp peak RSS growth MiB"], rows))
    print(f"goal: ingest ≥ 0.8× baseline throughput on the large file: {results['large']['ratio']:.3f}× → {'MET' if goal else 'NOT MET'}")
    print(f"memory: peak RSS growth small {results['small']['peak_rss_growth_MiB']:.1f} MiB vs large "
          f"{results['large']['peak_rss_growth_MiB']:.1f} MiB → {'flat' if flat else 'GROWS with size'}")
    print("best of rounds per side; baseline writes without fsync, wisp fsyncs (crash safety) — counted against wisp.")


if __name__ == "__main__":
    main()
