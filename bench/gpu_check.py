"""One command that runs wisp's device path end to end and prints a table (issue 14).

On a machine with CUDA it uses ``cuda`` in float16; elsewhere ``cpu`` in
float32, so CI keeps it working (``tests/fleet/test_gpu_check.py`` runs
``--quick`` on CPU).  Rows:

- the built-in SD-1.x and SDXL models: first request (build + load) and
  warm requests, seconds per image;
- a full-size SD-1.5 UNet with random weights (860 M parameters, 512×512, 20
  steps) — CUDA only unless ``--full`` (it takes minutes on a CPU);
- a LoRA switch: the same model with and without a LoRA, alternating;
- cache tier moves: three models through a device tier that holds one, so
  each request moves the others device → host → device; device memory is
  read back from CUDA (``torch.cuda.memory_allocated``) after each;
- dynamic batching: 8 one-image requests at once vs one after another;
- a 2-replica fleet on this one device (``--engine ray-local``): requests/s
  against one replica (skipped with ``--no-fleet``).

Run: ``.venv/bin/python bench/gpu_check.py [--quick] [--full] [--no-fleet]``; it finishes in under 10 minutes on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import render_table  # noqa: E402


def _task(model: str, seed: int, size: int, steps: int, **fields: Any) -> Any:
    from protocol.inference import ImageInference

    return ImageInference(taskUUID=str(uuid.uuid4()), positivePrompt="a red circle on a blue background", model=model, width=size,
                          height=size, steps=steps, seed=seed, **fields)


def _cuda_mib() -> str:
    import torch

    if not torch.cuda.is_available():
        return "n/a (cpu)"
    torch.cuda.synchronize()
    return f"{torch.cuda.memory_allocated() / 2**20:.0f}"


async def _timed(engine: Any, task: Any) -> float:
    started = time.perf_counter()
    await engine.generate(task, team="default", owner="gpu-check")
    return time.perf_counter() - started


async def run_checks(args: argparse.Namespace, device: str, rows: list[list[Any]], root: Path) -> None:
    from engine.core import Engine, EngineConfig
    from protocol.inference import LoraRef

    engine = Engine(EngineConfig(data_dir=root / "engine", device=device, torch_threads=2, max_batch=8))
    engine.start()
    try:
        size = 64
        for air, name in (("wisp:tiny-sd15@1", "SD-1.x built-in"), ("wisp:tiny-sdxl@1", "SDXL built-in")):
            first = await _timed(engine, _task(air, 1, size, 4))
            warm = [await _timed(engine, _task(air, 2 + i, size, 4)) for i in range(3 if args.quick else 10)]
            rows.append([f"{name}, {size}², 4 steps", f"first {first:.2f} s", f"warm {min(warm) * 1000:.0f} ms", _cuda_mib()])
        if device.startswith("cuda") or args.full:
            big_first, big_warm = await full_size_sd15(engine, root, 20)
            rows.append(["random full-size SD-1.5 UNet, 512², 20 steps", f"first {big_first:.1f} s", f"warm {big_warm:.2f} s",
                         _cuda_mib()])
        else:
            rows.append(["random full-size SD-1.5 UNet, 512², 20 steps", "skipped on CPU", "(--full to force)", ""])
        lora = await lora_air(engine, root)
        switch = []
        for i in range(4 if args.quick else 10):
            switch.append(await _timed(engine, _task("wisp:tiny-sd15@1", 50 + i, size, 4,
                                                      lora=[LoraRef(model=lora, weight=1.0)] if i % 2 == 0 else [])))
        rows.append(["LoRA switch (with / without, alternating)", f"{min(switch) * 1000:.0f} ms", f"max {max(switch) * 1000:.0f} ms",
                     _cuda_mib()])
    finally:
        engine.stop()
    # cache tier moves: a device tier that holds one tiny model
    one_model = 7_000_000
    engine = Engine(EngineConfig(data_dir=root / "engine", device=device, torch_threads=2, cache_device_bytes=one_model,
                                 cache_host_bytes=one_model * 4))
    engine.start()
    try:
        memory = []
        for air in ("wisp:tiny-sd15@1", "wisp:tiny-sdxl@1", "wisp:tiny-sd15@1", "wisp:tiny-sdxl@1"):
            took = await _timed(engine, _task(air, 9, size, 2))
            memory.append(f"{air.split(':')[1].split('@')[0]} {took * 1000:.0f} ms / {_cuda_mib()} MiB")
        stats = engine.cache.stats()
        rows.append(["cache tier moves (device budget: one model)", f"to host {stats.evictions_to_host}, host hits {stats.host_hits}",
                     "; ".join(memory), _cuda_mib()])
    finally:
        engine.stop()
    # batching
    engine = Engine(EngineConfig(data_dir=root / "engine", device=device, torch_threads=2, max_batch=8))
    engine.start()
    try:
        await _timed(engine, _task("wisp:tiny-sd15@1", 1, size, 4))
        started = time.perf_counter()
        for i in range(8):
            await _timed(engine, _task("wisp:tiny-sd15@1", 100 + i, size, 4))
        serial = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(_timed(engine, _task("wisp:tiny-sd15@1", 200 + i, size, 4)) for i in range(8)))
        batched = time.perf_counter() - started
        rows.append(["dynamic batching, 8 requests", f"serial {serial:.2f} s", f"batched {batched:.2f} s ({serial / batched:.2f}×)",
                     str(engine.batch_sizes())])
    finally:
        engine.stop()


async def full_size_sd15(engine: Any, root: Path, steps: int) -> tuple[float, float]:
    """A full-size SD-1.5 pipeline with random weights (diffusers' default configs), run with wisp's dtype and device."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.core import inference_dtype

    dtype = inference_dtype(engine.config.device) or torch.float32
    small = engine.library.pipeline(engine.library.resolve("wisp:tiny-sd15@1", "default"))
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(cross_attention_dim=768), vae=AutoencoderKL(block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4),
        text_encoder=CLIPTextModel(CLIPTextConfig()), tokenizer=getattr(small, "pipe", small).tokenizer,
        scheduler=getattr(small, "pipe", small).scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(engine.config.device, dtype)
    times = []
    for seed in (1, 2):
        started = time.perf_counter()
        with torch.inference_mode():
            pipe("a red circle", num_inference_steps=steps, width=512, height=512,
                 generator=torch.Generator(engine.config.device).manual_seed(seed))
        times.append(time.perf_counter() - started)
    del pipe
    return times[0], times[1]


async def lora_air(engine: Any, root: Path) -> str:
    """A LoRA for the built-in SD-1.x model, registered through the engine's own ingest (a local file)."""
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from engine.upload.ingest import IngestRequest
    from tests.fixtures.loras import write_lora

    from engine.registry.keys import KeyStore
    from engine.registry.team_settings import TeamSettings

    KeyStore(engine.db).create("default")  # the team exists, with its default source, as on a server's first start
    TeamSettings(engine.db).ensure_default_sources()
    path = write_lora(ensure_tiny_sd15(root / "engine"), root / "check-lora.safetensors", fmt="kohya", seed=5)
    air = "default:gpu-check-lora@1"

    async def phase(status: str, message: str) -> None:
        return None

    await engine.ingest.run(IngestRequest(air=air, category="lora", architecture="sd1x", name="gpu check", version="1",
                                          private=True, unique_identifier=uuid.uuid4().hex, meta={}), "default", phase,
                            local_source=path)
    return air


def fleet_rows(device: str, rows: list[list[Any]], quick: bool) -> None:
    import asyncio as aio

    from bench._common import create_wisp_key
    from bench.fleet import fleet_server, saturate, wait_replicas

    rates = {}
    with tempfile.TemporaryDirectory(prefix="wisp-gpu-check-", ignore_cleanup_errors=True) as root:
        tmp = Path(root)
        (tmp / "home").mkdir()
        env = {"WISP_TORCH_THREADS": "1", "WISP_REPLICA_THREADS": "1", "WISP_PNG_PARAMETERS": "0", "HOME": str(tmp / "home"),
               "WISP_MAX_BATCH": "1"}
        for replicas in (1, 2):
            data = tmp / f"fleet{replicas}"
            data.mkdir()
            key = create_wisp_key(data)
            started = time.monotonic()
            with fleet_server(data, replicas, env) as server:
                wait_replicas(server, replicas)
                ready = time.monotonic() - started
                rates[replicas] = aio.run(saturate(server.url, key, 16 if quick else 64, 8, 128, 8))
            rows.append([f"fleet, {replicas} replica(s) on one {device}", f"ready in {ready:.1f} s", f"{rates[replicas]:.2f} req/s", ""])
    rows.append(["fleet, 2 replicas vs 1", f"{rates[2] / rates[1]:.2f}×", "", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--full", action="store_true", help="the full-size SD-1.5 row on CPU too (minutes)")
    parser.add_argument("--no-fleet", action="store_true", help="skip the Ray fleet rows")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    rows: list[list[Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wisp-gpu-check-") as root:
        asyncio.run(run_checks(args, device, rows, Path(root)))
    if not args.no_fleet:
        fleet_rows(device, rows, args.quick)
    print(f"wisp gpu_check on {name} (device {device}, torch {torch.__version__}), {time.monotonic() - started:.0f} s")
    print(render_table(["check", "result", "detail", "device MiB"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
