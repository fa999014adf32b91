"""The engine facade: what the server (or a test, or a bench) calls.

``Engine`` owns the model library, the image store, the fair work queue and
the device worker.  It knows nothing of sockets: it takes protocol task types
and returns plain result objects, raising :mod:`engine.errors` on bad input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.inference import ImageInference

from engine.errors import ModelNotFound
from engine.images.codec import FORMATS, decode_image, encode_image
from engine.images.sources import load_image_bytes
from engine.images.store import ImageStore
from engine.models import ModelEntry, ModelLibrary
from engine.net import NetPolicy
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pricing import image_cost
from engine.schedulers import canonical_scheduler
from engine.workqueue import FairQueue, Worker, submit

log = logging.getLogger("wisp.engine")

# wisp never reaches a model hub: every model is local (built-in or uploaded).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MAX_RANDOM_SEED = 2**31 - 1


def default_torch_threads() -> int:
    """All cores but one, so the event loop always has a core for pings."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    device: str = "cpu"
    torch_threads: int = field(default_factory=default_torch_threads)
    max_queue: int = 256
    net: NetPolicy = NetPolicy()


@dataclass(frozen=True)
class GeneratedImage:
    image_uuid: str
    file_name: str
    seed: int
    data: bytes
    mime: str
    cost: float


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        data_dir = Path(config.data_dir)
        self.images = ImageStore(data_dir / "images", data_dir / "tmp")
        self.library = ModelLibrary(data_dir, config.device)
        self.queue = FairQueue(config.max_queue)
        self._worker = Worker(self.queue, "wisp-device-0", on_start=self._init_thread)
        self._started = False

    def _init_thread(self) -> None:
        import diffusers
        import torch
        import transformers

        torch.set_num_threads(self.config.torch_threads)
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

    def start(self) -> None:
        if not self._started:
            self._worker.start()
            self._started = True

    def stop(self) -> int:
        """Stop taking work; jobs not started are failed. Returns how many were dropped."""
        from engine.errors import EngineStopped

        left = self.queue.close()
        for job in left:
            job.loop.call_soon_threadsafe(
                lambda f=job.future: f.done() or f.set_exception(EngineStopped("the server is shutting down"))
            )
        return len(left)

    async def warm(self, air: str, team: str = "") -> None:
        """Load a model ahead of its first request (builds the built-in one if needed)."""
        entry = self.library.resolve(air, team)
        await submit(self.queue, "__warm__", lambda: self.library.pipeline(entry))

    async def _image(self, ref: str, parameter: str, own_hosts: frozenset[str]) -> Any:
        data = await load_image_bytes(ref, parameter, self.images, self.config.net, own_hosts)
        return await asyncio.to_thread(decode_image, data, parameter)

    def check(self, task: ImageInference, team: str) -> tuple[ModelEntry, str]:
        """Cheap checks with no I/O: the model, LoRAs and scheduler exist for ``team``.

        The server calls this before acknowledging a task, so an async task
        with an unknown model fails at once rather than after its ack.
        """
        entry = self.library.resolve(task.model, team)
        for index, ref in enumerate(task.lora):
            raise ModelNotFound(f"no LoRA {ref.model[:200]!r} is available", parameter=f"lora[{index}].model")
        return entry, canonical_scheduler(task.scheduler or entry.defaults.scheduler)

    async def prepare(self, task: ImageInference, team: str, own_hosts: frozenset[str] = frozenset()) -> tuple[ModelEntry, GenerationSpec]:
        """Check a request against the library and resolve its inputs (no device work)."""
        entry, scheduler = self.check(task, team)
        init = await self._image(task.seedImage, "seedImage", own_hosts) if task.seedImage is not None else None
        mask = await self._image(task.maskImage, "maskImage", own_hosts) if task.maskImage is not None else None
        if task.seed is not None:
            seeds = tuple((task.seed + i) % 2**63 for i in range(task.numberResults))
        else:
            seeds = tuple(secrets.randbelow(MAX_RANDOM_SEED) for _ in range(task.numberResults))
        spec = GenerationSpec(
            prompt=task.positivePrompt,
            negative_prompt=task.negativePrompt,
            width=task.width,
            height=task.height,
            steps=task.steps or entry.defaults.steps,
            cfg_scale=task.CFGScale if task.CFGScale is not None else entry.defaults.cfg_scale,
            scheduler=scheduler,
            seeds=seeds,
            clip_skip=task.clipSkip,
            init_image=init,
            mask_image=mask,
            strength=task.strength if task.strength is not None else entry.defaults.strength,
            mask_margin=task.maskMargin,
        )
        return entry, spec

    async def generate(
        self, task: ImageInference, *, team: str, owner: str, own_hosts: frozenset[str] = frozenset()
    ) -> list[GeneratedImage]:
        """Run an imageInference task; one :class:`GeneratedImage` per seed, stored on disk."""
        entry, spec = await self.prepare(task, team, own_hosts)
        return await submit(
            self.queue, owner, lambda: self._render(entry, spec, task.outputFormat, task.outputQuality)
        )

    def _render(self, entry: ModelEntry, spec: GenerationSpec, output_format: str, quality: int) -> list[GeneratedImage]:
        """Worker thread: generate, encode, store."""
        model = self.library.pipeline(entry)
        images = model.run(spec)
        _, ext, mime = FORMATS[output_format]
        cost = image_cost(spec.width, spec.height, spec.steps)
        results = []
        for seed, image in zip(spec.seeds, images):
            data = encode_image(image, output_format, quality)
            image_uuid, name = self.images.put(data, ext)
            results.append(GeneratedImage(image_uuid, name, seed, data, mime, cost))
        return results

    async def upload_image(self, ref: str, own_hosts: frozenset[str] = frozenset()) -> tuple[str, str]:
        """Decode, re-encode as PNG (dropping metadata) and store; returns (imageUUID, file name)."""
        data = await load_image_bytes(ref, "image", self.images, self.config.net, own_hosts)

        def store() -> tuple[str, str]:
            image = decode_image(data, "image")
            return self.images.put(encode_image(image, "PNG", 95), "png")

        return await asyncio.to_thread(store)
