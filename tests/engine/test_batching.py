"""Dynamic batching: compatible one-image txt2img requests share one device call, each keeps its own image."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from typing import Any

import numpy as np
from PIL import Image

from engine.core import Engine
from engine.workqueue import Batchable, FairQueue, _Job, submit
from protocol.frames import decode_frame


def task(**fields: Any):
    element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1",
               "positivePrompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "seed": 1, "scheduler": "Euler a", **fields}
    decoded = decode_frame(json.dumps([element]))[0]
    assert decoded.error is None, decoded.error
    return decoded.task


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def test_take_compatible_groups_by_key_across_owners():
    queue = FairQueue(100)
    loop = asyncio.new_event_loop()
    try:
        def job(key: Any) -> _Job:
            return _Job(lambda: None, loop.create_future(), loop, Batchable(key, key, lambda p: p) if key else None)

        for owner, key in [("a", "k"), ("b", "k"), ("a", "other"), ("c", None), ("b", "k"), ("c", "k")]:
            queue.put(owner, job(key))
        taken = queue.take_compatible("k", 3)
        assert [j.batch.key for j in taken] == ["k", "k", "k"] and len(queue) == 3
        rest = queue.take_compatible("k", 5)  # only what is queued: no waiting with a zero window
        assert len(rest) == 1 and len(queue) == 2
        assert queue.take_compatible("missing", 5) == []
    finally:
        loop.close()


def test_queued_compatible_requests_run_as_one_batch(engine: Engine):
    async def scenario() -> tuple[list[Any], list[Any], dict[int, int]]:
        gate = threading.Event()
        blocker = asyncio.ensure_future(submit(engine.queue, "blocker", gate.wait))  # keeps the device busy
        await asyncio.sleep(0.05)
        requests = [task(seed=10 + i, positivePrompt=f"prompt {i}") for i in range(4)]
        requests.append(task(seed=20, width=128))  # another size: not compatible, runs alone
        steps: dict[str, list[int]] = {}
        requests.append(task(seed=30, positivePrompt="with progress"))
        before = dict(engine._worker.batches)
        futures = [
            asyncio.ensure_future(engine.generate(
                r, team="t", owner=f"o{i}",
                progress=(lambda s, n, p, u=r.taskUUID: steps.setdefault(u, []).append(s)) if i == 5 else None,
            ))
            for i, r in enumerate(requests)
        ]
        await asyncio.sleep(0.2)
        gate.set()
        batched = await asyncio.gather(*futures)
        await blocker
        after = {k: v - before.get(k, 0) for k, v in engine._worker.batches.items() if v - before.get(k, 0)}
        alone = [await engine.generate(r, team="t", owner="solo") for r in requests]  # one at a time: no companions
        assert steps[requests[5].taskUUID] == [1, 2, 3, 4]
        return batched, alone, after

    batched, alone, batches = asyncio.run(scenario())
    assert batches.get(5) == 1 and batches.get(1, 0) >= 1  # five compatible in one call; the 128-px one alone
    for one, solo in zip(batched, alone):
        assert [i.seed for i in one] == [i.seed for i in solo]
        assert np.array_equal(pixels(one[0].data), pixels(solo[0].data))  # bit-for-bit its lone run
    images = {b[0].data for b in batched[:5]}
    assert len(images) == 5  # every request got its own image


def run_together_and_alone(engine: Engine, requests: list[Any]) -> tuple[list[Any], list[Any], dict[int, int]]:
    """The requests queued behind a busy device (so they batch), then each again on its own."""
    async def scenario() -> tuple[list[Any], list[Any], dict[int, int]]:
        gate = threading.Event()
        blocker = asyncio.ensure_future(submit(engine.queue, "blocker", gate.wait))
        await asyncio.sleep(0.05)
        before = dict(engine._worker.batches)
        futures = [asyncio.ensure_future(engine.generate(r, team="t", owner=f"o{i}")) for i, r in enumerate(requests)]
        await asyncio.sleep(0.2)
        gate.set()
        together = await asyncio.gather(*futures)
        await blocker
        counts = {k: v - before.get(k, 0) for k, v in engine._worker.batches.items() if v - before.get(k, 0)}
        alone = [await engine.generate(r, team="t", owner="solo") for r in requests]
        return together, alone, counts

    return asyncio.run(scenario())


def test_batched_images_are_their_lone_runs_without_guidance_and_for_sdxl(engine: Engine):
    # Without guidance each request is one UNet row (minibatch 1 alone: other kernels than a batch's);
    # SDXL adds pooled text embeddings and the time-ids projection.
    for model, cfg in (("wisp:tiny-sd15@1", 1.0), ("wisp:tiny-sdxl@1", 5.0)):
        requests = [task(model=model, CFGScale=cfg, seed=40 + i, positivePrompt=f"a harbour {i}", scheduler="DPM++ 2M")
                    for i in range(3)]
        together, alone, counts = run_together_and_alone(engine, requests)
        assert counts == {3: 1}, (model, counts)
        for one, solo in zip(together, alone):
            assert np.array_equal(pixels(one[0].data), pixels(solo[0].data)), model
        assert len({one[0].data for one in together}) == 3


def test_layers_are_restored_after_a_batch():
    import torch

    from engine.pipelines.batch_invariance import per_request_kernels

    layer = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(layer)
    with torch.inference_mode():
        x = torch.randn(6, 4)
        with per_request_kernels(model, 3):
            assert "forward" in layer.__dict__ and "forward" in model.__dict__
            split = layer(x)
        assert "forward" not in layer.__dict__ and "forward" not in model.__dict__  # the classes' own forwards again
        assert torch.allclose(split, layer(x))


def test_batching_can_be_turned_off(tmp_path):
    from engine.core import EngineConfig

    eng = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1, max_batch=1))
    eng.start()
    try:
        async def scenario() -> None:
            gate = threading.Event()
            blocker = asyncio.ensure_future(submit(eng.queue, "blocker", gate.wait))
            await asyncio.sleep(0.05)
            futures = [asyncio.ensure_future(eng.generate(task(seed=i), team="t", owner="o")) for i in range(3)]
            await asyncio.sleep(0.1)
            gate.set()
            await asyncio.gather(*futures, blocker)

        asyncio.run(scenario())
        assert set(eng._worker.batches) == {1}
    finally:
        eng.stop()


def test_batching_needs_a_power_of_two_thread_count_on_the_cpu(tmp_path, caplog):
    from engine.core import EngineConfig, effective_max_batch

    assert [effective_max_batch(EngineConfig(data_dir=tmp_path, torch_threads=t)) for t in (1, 2, 4, 8)] == [8] * 4
    with caplog.at_level("WARNING", logger="wisp.engine"):
        assert effective_max_batch(EngineConfig(data_dir=tmp_path, torch_threads=3)) == 1
    assert "not a power of two" in caplog.text and "WISP_TORCH_THREADS" in caplog.text
    assert effective_max_batch(EngineConfig(data_dir=tmp_path, torch_threads=3, device="cuda")) == 8  # GPU kernels: no CPU thread split
    assert effective_max_batch(EngineConfig(data_dir=tmp_path, torch_threads=3, max_batch=1)) == 1
