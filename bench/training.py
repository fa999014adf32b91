"""LoRA training through wisp vs the same bare peft loop in-process; pings while training.

Why: wisp trains in a separate process (so pings and inference stay prompt)
and streams statuses; that must cost next to nothing per step.  Goal: wisp's
training speed ≥ 0.95× the bare loop's, and ping p99 during training stays
low (compared with the same pinger against the idle server in the same run).

How:

* one model folder: the built-in ``wisp:tiny-sd15@1`` built once in a temp
  data dir; wisp serves that dir, the bare loop loads the same folder;
* the same work on both sides: same images (64×64 → resolution ``--resolution``),
  LoRA rank 4 on the attention projections, AdamW lr 1e-4, batch 1, cached
  latents and text embeddings, the same number of steps, the same torch
  thread count (``--threads``, passed to wisp as ``WISP_TORCH_THREADS``);
* the bare loop is written here with diffusers + peft directly (not wisp's
  loop module), so it is an independent baseline;
* wisp's seconds per step are timed at the client, from the pushed
  ``training_started`` (step 0) status to ``training_success``, divided by the
  steps — so they include the worker's event lines and the socket; the
  worker's own loop time is shown too;
* a second socket pings every ``--ping-interval-ms`` during the training phase;
  the same pinger runs against the idle server first.

Run: ``.venv/bin/python bench/training.py [--steps N] [--resolution R] [--threads T] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from bench._common import create_wisp_key, dump_json, environment, fmt_ratio, log, ratio, render_table, summarize_ns, wisp_server  # noqa: E402


def dataset(count: int, size: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    images = []
    for i in range(count):
        rng = np.random.default_rng(i)
        images.append(Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
    return images


def bare_loop(folder: Path, images: list[Any], steps: int, threads: int) -> float:
    """Seconds per step of a minimal diffusers + peft LoRA loop (the baseline)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
        latents = pipe.vae.encode(pixels).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
        embeds, _ = pipe.encode_prompt("sks", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet.train()

    def step(i: int) -> None:
        latent = latents[i % len(images)][None]
        noise = torch.randn(latent.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator)
        pred = unet(scheduler.add_noise(latent, noise, t), t, encoder_hidden_states=embeds).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):  # warm-up, not timed (wisp's timing includes its first steps: conservative for wisp)
        step(i)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - started) / steps


async def pinger(url: str, key: str, stop: asyncio.Event, interval_s: float) -> list[int]:
    from websockets.asyncio.client import connect

    rtts: list[int] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        while not stop.is_set():
            t0 = time.perf_counter_ns()
            await ws.send('[{"taskType":"ping","ping":true}]')
            await ws.recv()
            rtts.append(time.perf_counter_ns() - t0)
            await asyncio.sleep(interval_s)
    return rtts


async def through_wisp(url: str, key: str, images: list[Any], steps: int, resolution: int, ping_interval_s: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    def uri(image: Any) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    # idle pings first (same pinger, same server)
    stop = asyncio.Event()
    idle_task = asyncio.ensure_future(pinger(url, key, stop, ping_interval_s))
    await asyncio.sleep(5)
    stop.set()
    idle = await idle_task

    task_uuid = str(uuid.uuid4())
    task = {"taskType": "training", "taskUUID": task_uuid, "model": "wisp:sd1x@lora-training", "inputs": {"dataset": [uri(i) for i in images]},
            "trainingSteps": steps + 3, "resolution": resolution, "learningRate": 1e-4, "triggerWord": "sks", "rank": 4}
    marks: dict[str, float] = {}
    final: dict[str, Any] = {}
    stop = asyncio.Event()
    busy_task: asyncio.Future[list[int]] | None = None
    submitted = time.perf_counter()
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        await ws.send(json.dumps([task]))
        while "done" not in marks:
            frame = json.loads(await ws.recv())
            if "errors" in frame:
                raise RuntimeError(frame)
            for item in frame["data"]:
                status = item.get("trainingStatus")
                if status == "training_started" and "start" not in marks:
                    marks["start"] = time.perf_counter()
                    busy_task = asyncio.ensure_future(pinger(url, key, stop, ping_interval_s))
                if status == "training_success":
                    marks["success"] = time.perf_counter()
                    stop.set()
                if item.get("status") == "success":
                    marks["done"] = time.perf_counter()
                    final = item
    assert busy_task is not None
    busy = await busy_task
    total_steps = steps + 3
    return {
        "client_s_per_step": (marks["success"] - marks["start"]) / total_steps,
        "worker_s_per_step": final["outputs"]["seconds"] / total_steps,
        "end_to_end_s": marks["done"] - submitted,
        "ping_idle": summarize_ns(idle, 1e6),
        "ping_training": summarize_ns(busy, 1e6),
        "air": final["air"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ping-interval-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from engine.builtin.tiny_sd15 import ensure_tiny_sd15

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        folder = ensure_tiny_sd15(data_dir)
        images = dataset(args.images, args.resolution)
        log(f"bare diffusers+peft loop: {args.steps} steps at {args.resolution}px, {args.threads} thread(s)")
        bare_first = bare_loop(folder, images, args.steps, args.threads)
        key = create_wisp_key(data_dir)
        with wisp_server(data_dir, env={"WISP_TORCH_THREADS": str(args.threads)}) as server:
            server.wait_idle()
            url = f"ws://127.0.0.1:{server.port}/v1"
            log("through wisp (training process), pinging meanwhile")
            wisp = asyncio.run(through_wisp(url, key, images, args.steps, args.resolution, args.ping_interval_ms / 1000))
        log("bare loop again (drift check)")
        bare_second = bare_loop(folder, images, args.steps, args.threads)
    bare = (bare_first + bare_second) / 2
    speed = ratio(bare, wisp["client_s_per_step"])
    rows = [
        ["bare diffusers+peft loop (mean of 2 runs)", f"{bare * 1000:.2f}", "1.000×"],
        ["wisp, timed at the client", f"{wisp['client_s_per_step'] * 1000:.2f}", fmt_ratio(speed)],
        ["wisp, the worker's own loop time", f"{wisp['worker_s_per_step'] * 1000:.2f}", fmt_ratio(ratio(bare, wisp["worker_s_per_step"]))],
    ]
    pings = [
        ["idle server", wisp["ping_idle"]["n"], wisp["ping_idle"]["p50"], wisp["ping_idle"]["p99"], wisp["ping_idle"]["max"]],
        ["during training", wisp["ping_training"]["n"], wisp["ping_training"]["p50"], wisp["ping_training"]["p99"], wisp["ping_training"]["max"]],
    ]
    result = {
        "environment": environment(),
        "args": vars(args),
        "bare_s_per_step": [bare_first, bare_second],
        "wisp": wisp,
        "speed_vs_bare": speed,
        "goal": "speed ≥ 0.95× the bare loop; pings prompt during training",
    }
    if args.json:
        dump_json(result)
        return
    print(render_table(["training step", "ms/step", "speed vs bare"], rows))
    print()
    print(render_table(["pings (ms)", "n", "p50", "p99", "max"], pings))
    print()
    print(f"end to end (submit → model_ready, incl. process start, model load, registration): {wisp['end_to_end_s']:.1f} s")
    print(f"verdict: speed {fmt_ratio(speed)} of the bare loop (goal ≥ 0.95×): {'met' if speed >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
