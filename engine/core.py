"""The engine facade: what the server (or a test, or a bench) calls.

``Engine`` owns the model library, the image store, the fair work queue and
the device worker.  It knows nothing of sockets: it takes protocol task types
and returns plain result objects, raising :mod:`engine.errors` on bad input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from protocol.inference import ImageInference

from engine.cache import ModelCache
from engine.images.codec import FORMATS, decode_image, encode_image
from engine.images.sources import load_image_bytes
from engine.images.store import ImageStore
from engine.models import BUILTIN_MODELS, LoraEntry, ModelEntry, ModelLibrary
from engine.net import NetPolicy
from engine.registry.db import Database
from engine.registry.models import ModelRegistry, ModelRow
from engine.upload.ingest import Emit, IngestConfig, ModelIngest
from engine.upload.store import ModelStore
from protocol.models import ModelInfo, ModelSearch, ModelSearchResult, ModelUpload
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.pipeline import batch_key
from engine.pricing import image_cost
from engine.schedulers import canonical_scheduler
from engine.errors import EngineStopped, JobCancelled, WorkLimitExceeded
from engine.workqueue import Batchable, FairQueue, StepRelay, Worker, submit, withdraw
from engine.training.runner import RECIPE_BASES, ImportTarget, TrainingOutcome, TrainingRunner, StatusEmit
from protocol.training import Training, TrainingPlan

log = logging.getLogger("wisp.engine")

# wisp never reaches a model hub: every model is local (built-in or uploaded).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MAX_RANDOM_SEED = 2**31 - 1


def default_torch_threads() -> int:
    """All cores but one, so the event loop always has a core for pings."""
    return max(1, (os.cpu_count() or 2) - 1)


def effective_max_batch(config: "EngineConfig") -> int:
    """``config.max_batch``, or 1 where batched images could not equal their lone runs.

    On the CPU a batched image is bit-for-bit its lone run only when every
    kernel's thread split falls on a vector boundary for both batch sizes,
    which holds for a power-of-two thread count (1, 2, 4, … measured: see
    :mod:`engine.pipelines.batch_invariance`); with 3, 6 or 7 threads an
    elementwise kernel ends a thread's share in its scalar tail at a
    batch-dependent place.  Batching is then off, said once in the log.
    """
    threads = config.torch_threads
    if config.max_batch > 1 and not config.device.startswith("cuda") and threads & (threads - 1):
        log.warning(
            "dynamic batching off: %d torch threads is not a power of two, and batched images would differ from "
            "lone runs in the last bit; set WISP_TORCH_THREADS to 1, 2, 4, 8, … to batch", threads,
        )
        return 1
    return config.max_batch


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    device: str = "cpu"
    torch_threads: int = field(default_factory=default_torch_threads)
    max_queue: int = 256
    net: NetPolicy = NetPolicy()
    max_model_bytes: int = 20 * 1024**3
    storage_dtype: str = "F16"
    cache_device_bytes: int = 0
    """Model-cache budget of the device tier; 0: derived from the device's memory (see engine.cache)."""
    cache_host_bytes: int = 0
    """Model-cache budget of the host (RAM) tier; 0: derived from the machine's RAM."""
    training_slots: int = 1
    """Training jobs run at once (each in its own process); more wait in line."""
    dtype: str = "auto"
    """Weights' dtype for inference: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``."""
    max_batch: int = 8
    """Dynamic batching: at most this many compatible one-image txt2img requests share a device call (1: off)."""
    batch_window_ms: float = 0.0
    """How long a request waits for companions; 0: it takes only those already queued (a lone one never waits)."""
    training_max_queued: int = 16
    lora_cache_bytes: int = 0
    """Budget of the host-RAM LoRA adapter cache (engine.lora_cache); 0: derived (4 % of RAM, at least 64 MiB)."""
    download_threads: int = 4
    """Model downloads at once, on their own threads (never the default executor)."""
    max_work: float = 0.0
    """Per-request work limit in megapixel-steps (width × height / 2^20 × steps × numberResults); 0: by device (see :func:`default_max_work`)."""
    download_timeout_s: float = 3600.0
    """Total time one model download may take."""


def default_max_work(device: str) -> float:
    """Megapixel-steps one request may ask for: 64 on a CPU (512² × 20 steps × 12 images), 4096 on CUDA.

    Without a bound one request (2048² × 100 steps on a CPU) holds the device
    for hours; set ``WISP_MAX_WORK`` to what the hardware should accept.
    """
    return 4096.0 if device.startswith("cuda") else 64.0


def inference_dtype(device: str, name: str = "auto") -> Any:
    """The torch dtype models are loaded in: half precision on CUDA by default, float32 on CPU.

    One code path either way: only the dtype and the device differ.  CPU
    float16 is refused (slow and unsupported by several CPU kernels).
    """
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else None
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name)
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, float16 or bfloat16")
    if dtype is torch.float16 and not device.startswith("cuda"):
        raise ValueError("float16 needs a CUDA device; use float32 or bfloat16 on CPU")
    return None if dtype is torch.float32 else dtype


@dataclass(frozen=True)
class GeneratedImage:
    image_uuid: str
    file_name: str
    seed: int
    data: bytes
    mime: str
    cost: float


class Engine:
    def __init__(self, config: EngineConfig, db: Database | None = None) -> None:
        self.config = config
        data_dir = Path(config.data_dir)
        self.db = db or Database(data_dir / "wisp.db")
        self.registry = ModelRegistry(self.db)
        self.model_store = ModelStore(data_dir / "store")
        self.images = ImageStore(data_dir / "images", data_dir / "tmp")
        self._stopping = threading.Event()
        self.cache = ModelCache(config.device, device_bytes=config.cache_device_bytes, host_bytes=config.cache_host_bytes)
        from engine.lora_cache import LoraCache

        self.lora_cache = LoraCache(config.lora_cache_bytes)  # the engine's own; every model's adapters read through it
        self.library = ModelLibrary(
            data_dir, config.device, self.registry, self.model_store, dtype=inference_dtype(config.device, config.dtype), cache=self.cache,
            lora_cache=self.lora_cache,
        )
        self.ingest = ModelIngest(
            self.registry,
            self.model_store,
            IngestConfig(
                tmp_dir=data_dir / "tmp",
                max_model_bytes=config.max_model_bytes,
                storage_dtype=config.storage_dtype,
                policy=config.net,
                download_threads=config.download_threads,
                download_timeout_s=config.download_timeout_s,
                cancel=self._stopping,
            ),
            prove_checkpoint=self._prove_checkpoint,
        )
        self.queue = FairQueue(config.max_queue)
        self.training = TrainingRunner(
            data_dir=data_dir, device=config.device, threads=config.torch_threads,
            slots=config.training_slots, max_queued=config.training_max_queued,
        )
        self._worker = Worker(
            self.queue, "wisp-device-0", on_start=self._init_thread,
            max_batch=effective_max_batch(config), batch_window_s=config.batch_window_ms / 1000,
        )
        self._started = False
        self.max_work = config.max_work or default_max_work(config.device)
        self._cancels: dict[tuple[str, str], threading.Event] = {}
        """(team, taskUUID) → the cancel flag of each imageInference not finished yet (taskCancel)."""

    def _init_thread(self) -> None:
        from engine.models import LOAD_LOCK

        with LOAD_LOCK:  # diffusers' lazy imports are not thread-safe: never two threads importing at once
            import diffusers
            import torch
            import transformers

        torch.set_num_threads(self.config.torch_threads)
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

    def sweep_store(self, older_than_s: float = 3600.0) -> int:
        """Start-up: delete stored model files no model row references (see :meth:`ModelStore.sweep`)."""
        return self.model_store.sweep(self.registry.stored_sha256s(), older_than_s)

    def start(self) -> None:
        if not self._started:
            self._worker.start()
            self._started = True

    def stop(self, wait_s: float = 10.0) -> int:
        """Stop taking work; jobs not started are failed, a running one is abandoned at its next step.

        Waits (up to ``wait_s``) for the device thread to finish, so the process
        never exits with torch running on a daemon thread (that aborts).
        Returns how many queued jobs were dropped.
        """
        from engine.errors import EngineStopped

        self._stopping.set()
        self.ingest.downloads.close()
        self.training.kill_all()
        left = self.queue.close()
        for job in left:
            job.loop.call_soon_threadsafe(
                lambda f=job.future: f.done() or f.set_exception(EngineStopped("the server is shutting down"))
            )
        if self._started and self._worker.thread.is_alive() and self._worker.thread is not threading.current_thread():
            self._worker.thread.join(wait_s)
        return len(left)

    def device_busy(self) -> bool:
        """True while the device thread is still inside a job (after :meth:`stop`: a step longer than its wait)."""
        return self._started and self._worker.thread.is_alive()

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
            self.library.resolve_lora(ref.model, team, entry, f"lora[{index}].model")
        self.library.resolve_extras(task, team, entry)  # embeddings, vae
        scheduler = canonical_scheduler(task.scheduler or entry.defaults.scheduler)
        if task.seedImage is not None:  # img2img/inpainting: at least one denoising step, the model's defaults included
            from engine.errors import InvalidInput
            from engine.models import family
            from protocol.inference import img2img_steps_error

            strength = task.strength if task.strength is not None else entry.defaults.strength
            pndm = scheduler in ("PNDM", "PNDMScheduler") or (scheduler == "Default" and family(entry.architecture) == "sd1x")
            err = img2img_steps_error(task.steps or entry.defaults.steps, strength, strength_given=task.strength is not None,
                                      extra_step=pndm and task.maskImage is None)
            if err is not None:
                raise InvalidInput(err.message, parameter=err.parameter, min=err.min)
        steps = task.steps or entry.defaults.steps
        work = task.width * task.height / 1_048_576 * steps * task.numberResults
        limit = self.max_work
        if work > limit:
            raise WorkLimitExceeded(
                f"this request is {work:.1f} megapixel-steps (width × height / 2^20 × steps × numberResults); "
                f"this server allows at most {limit:g} per request: fewer images, steps or pixels", parameter="steps", max=limit,
            )
        return entry, scheduler

    def _loras(self, task: ImageInference, team: str, entry: ModelEntry) -> tuple[Any, ...]:
        uses = []
        for index, ref in enumerate(task.lora):
            from engine.lora import LoraUse

            lora: LoraEntry = self.library.resolve_lora(ref.model, team, entry, f"lora[{index}].model")
            uses.append(LoraUse(key=lora.sha256, path=lora.path, weight=lora.default_weight if ref.weight is None else ref.weight))
        return tuple(uses)

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
            clip_skip=task.clipSkip if task.clipSkip is not None else entry.defaults.clip_skip,
            init_image=init,
            mask_image=mask,
            strength=task.strength if task.strength is not None else entry.defaults.strength,
            mask_margin=task.maskMargin,
            loras=self._loras(task, team, entry),
            **self.library.resolve_extras(task, team, entry),
        )
        return entry, spec

    async def generate(
        self, task: ImageInference, *, team: str, owner: str, own_hosts: frozenset[str] = frozenset(),
        progress: "Callable[[int, int, list[str] | None], None] | None" = None,
        on_start: Callable[[], None] | None = None,
    ) -> list[GeneratedImage]:
        """Run an imageInference task; one :class:`GeneratedImage` per seed, stored on disk.

        ``progress(step, steps, previews)`` is called on the event loop after
        each denoising step, in step order, before the results (``previews``:
        PNG data URIs when the task asked for progress items and previews,
        else None).  Without ``includeProgress`` the steps are handed over in
        bunches, every 0.5 s and at the end (:class:`~engine.workqueue.StepRelay`:
        a wake-up per step cost more CPU than the rest of the request's
        overhead).  ``on_start()`` when the device takes the task from the queue.
        """
        cancel = threading.Event()
        cancel_key = (team, task.taskUUID.lower())
        self._cancels[cancel_key] = cancel
        relay = StepRelay(asyncio.get_running_loop(), progress, live=task.includeProgress) if progress is not None else None
        try:
            entry, spec = await self.prepare(task, team, own_hosts)
            if cancel.is_set():
                raise JobCancelled("cancelled by taskCancel before it started")
            if relay is not None:
                spec = dataclasses.replace(spec, on_step=self._step_reporter(relay, task.includeProgress and task.includePreviews, entry))
                on_start = relay.starting(on_start)
            key = batch_key(spec)
            batch = None
            if key is not None and self.config.max_batch > 1:
                batch = Batchable(
                    key=(self.library.cache_key(entry), key), payload=(spec, task.outputFormat, task.outputQuality),
                    run=lambda payloads: self._render_batch(entry, payloads),
                )
            return await submit(
                self.queue, owner, lambda: self._render(entry, spec, task.outputFormat, task.outputQuality, cancel), batch=batch,
                on_start=on_start, cancel=cancel,
            )
        finally:
            if relay is not None:
                relay.finish()
            if self._cancels.get(cancel_key) is cancel:
                del self._cancels[cancel_key]

    def cancel_inference(self, team: str, task_uuid: str) -> bool:
        """``taskCancel`` of an imageInference: a queued one ends at once, a running one after its current step.

        Returns False when no such task is waiting or running.  Either way
        the task itself ends with ``taskCancelled``.
        """
        cancel = self._cancels.get((team, task_uuid.lower()))
        if cancel is None:
            return False
        withdraw(self.queue, cancel)
        return True

    @staticmethod
    def _step_reporter(relay: StepRelay, previews: bool, entry: ModelEntry) -> "Callable[[int, int, Any], None]":
        """The worker-thread step callback that hands (step, steps, previews) to ``relay``."""
        from engine.images.previews import preview_data_uris
        from engine.models import family

        kind = family(entry.architecture)

        def on_step(step: int, steps: int, latents: Any) -> None:
            images = preview_data_uris(latents, kind) if previews and latents is not None else None
            relay.report(step, steps, images)

        return on_step

    def _render(
        self, entry: ModelEntry, spec: GenerationSpec, output_format: str, quality: int, cancel: threading.Event | None = None,
    ) -> list[GeneratedImage]:
        """Worker thread: generate, encode, store; stops between steps when the engine stops or ``cancel`` is set."""
        stopping = self._stopping

        def should_stop() -> bool:
            return stopping.is_set() or (cancel is not None and cancel.is_set())

        try:
            with self.library.use(entry) as model, self.library.use_vae(spec) as spec:  # pinned: not evicted while it runs
                images = model.run(spec, should_stop)
        except EngineStopped:
            if cancel is not None and cancel.is_set() and not stopping.is_set():
                raise JobCancelled("cancelled by taskCancel between denoising steps") from None
            raise
        return self._store(spec, images, output_format, quality)

    def _render_batch(self, entry: ModelEntry, payloads: list[tuple[GenerationSpec, str, int]]) -> list[list[GeneratedImage]]:
        """Worker thread: compatible one-image requests in one pipeline call (dynamic batching)."""
        with self.library.use(entry) as model:
            images = model.run_batch([spec for spec, _, _ in payloads], self._stopping.is_set)
        return [self._store(spec, [image], fmt, quality) for (spec, fmt, quality), image in zip(payloads, images)]

    def _store(self, spec: GenerationSpec, images: list[Any], output_format: str, quality: int) -> list[GeneratedImage]:
        _, ext, mime = FORMATS[output_format]
        cost = image_cost(spec.width, spec.height, spec.steps)
        results = []
        for seed, image in zip(spec.seeds, images):
            data = encode_image(image, output_format, quality)
            image_uuid, name = self.images.put(data, ext)
            results.append(GeneratedImage(image_uuid, name, seed, data, mime, cost))
        return results

    def cache_stats(self) -> dict[str, Any]:
        """The model cache's counters and occupancy (hits, misses, evictions, bytes per tier...)."""
        return {**self.cache.stats().as_dict(), "loraCache": self.lora_cache_stats()}

    def lora_cache_stats(self) -> dict[str, Any]:
        """The LoRA adapter cache's counters (hits, misses = file reads, evictions, bytes, budget)."""
        return self.lora_cache.stats().as_dict()

    async def upload_image(self, ref: str, own_hosts: frozenset[str] = frozenset()) -> tuple[str, str]:
        """Decode, re-encode as PNG (dropping metadata) and store; returns (imageUUID, file name)."""
        data = await load_image_bytes(ref, "image", self.images, self.config.net, own_hosts)

        def store() -> tuple[str, str]:
            image = decode_image(data, "image")
            return self.images.put(encode_image(image, "PNG", 95), "png")

        return await asyncio.to_thread(store)

    # ---- the model library -------------------------------------------------

    async def _prove_checkpoint(self, path: Path, architecture: str) -> None:
        from engine.errors import EngineError

        try:
            await submit(self.queue, "__ingest__", lambda: self.library.prove_checkpoint(path, architecture))
        except EngineError as exc:
            if exc.parameter == "model":  # an upload has no `model`: the file itself is at fault
                exc.parameter = "downloadURL"
            raise

    async def upload_model(self, task: ModelUpload, team: str, emit: Emit, local_source: Path | None = None) -> ModelRow:
        """Run a modelUpload through its five phases (see :mod:`engine.upload.ingest`).

        ``local_source``: the file behind a ``/v1/files`` URL of this server,
        read from disk instead of downloaded.
        """
        return await self.ingest.run(task, team, emit, local_source=local_source)

    # ---- training ------------------------------------------------------------

    def check_training(self, task: Training, team: str) -> tuple[TrainingPlan, ModelEntry, ImportTarget | None]:
        """Cheap checks before the ack: the base model, the recipe's family, where the result goes."""
        from engine.errors import InvalidInput
        from engine.models import family
        from engine.upload.ingest import SourceNotAllowed
        from protocol.models import split_air

        plan = task.plan()
        assert not isinstance(plan, Exception) and isinstance(plan, TrainingPlan)
        entry = self.library.resolve(plan.base_model or RECIPE_BASES[plan.family], team, parameter="baseModel")
        if family(entry.architecture) != plan.family:
            raise InvalidInput(
                f"{entry.air} is {entry.architecture}; the recipe {plan.recipe} trains {plan.family} LoRAs", parameter="baseModel"
            )
        target = None
        imported = plan.import_model
        from engine.registry.team_settings import TeamSettings

        # the LoRA quota, checked now rather than after the training (the upload path checks it again)
        TeamSettings(self.db).check_lora_upload(team, "lora", is_new=imported is None or self.registry.get(imported.air) is None)
        if imported is not None:
            if imported.architecture is not None and family(imported.architecture) != plan.family:
                raise InvalidInput(f"importModel.architecture {imported.architecture} does not match the recipe's {plan.family}",
                                   parameter="importModel.architecture")
            if self.registry.source_team(split_air(imported.air)[0]) != team:
                raise SourceNotAllowed("importModel.air must use one of your team's sources (`wisp sources create`)",
                                       parameter="importModel.air")
            existing = self.registry.get(imported.air)
            if existing is not None and existing.category not in ("lora", "lycoris"):
                raise InvalidInput(f"{imported.air} is a {existing.category}; a trained LoRA cannot replace it", parameter="importModel.air")
            target = ImportTarget(
                air=imported.air, name=imported.name, version=imported.version,
                unique_identifier=imported.uniqueIdentifier, private=True if imported.private is None else imported.private,
                hero_image_url=imported.heroImageURL, short_description=imported.shortDescription,
            )
        return plan, entry, target

    async def train(self, task: Training, team: str, emit: StatusEmit, own_hosts: frozenset[str] = frozenset()) -> TrainingOutcome:
        """Run a training task to a registered LoRA; statuses go to ``emit`` as they happen."""
        from engine.training import dataset

        plan, entry, target = self.check_training(task, team)
        if target is None:
            from engine.registry.team_settings import TeamSettings

            source = await asyncio.to_thread(TeamSettings(self.db).default_source, team)
            short = task.taskUUID.replace("-", "")[:12].lower()
            target = ImportTarget(
                air=f"{source}:lora-{short}@1", name=f"LoRA trained by task {task.taskUUID}"[:400], version="1",
                unique_identifier="trained", private=True,
            )
        final_target = target

        async def read_dataset(resolution: int, folder: Path) -> list[Path]:
            return await dataset.gather(plan.dataset, plan.dataset_parameter, resolution, self.images, self.config.net, own_hosts, folder)

        async def register(path: Path, phase: Any) -> None:
            upload = ModelUpload(
                taskUUID=task.taskUUID, air=final_target.air, category="lora", architecture=entry.architecture,
                downloadURL=f"training:{task.taskUUID}",
                # every run is new content: never let the upload path reuse an earlier run's file
                uniqueIdentifier=f"{final_target.unique_identifier}#{task.taskUUID}"[:256],
                name=final_target.name, version=final_target.version, private=final_target.private,
                heroImageURL=final_target.hero_image_url, shortDescription=final_target.short_description,
                positiveTriggerWords=plan.trigger_word, tags=["trained", plan.lora_type],
                comment=f"trained from {entry.air} by {plan.recipe}",
            )
            await self.ingest.run(upload, team, phase, local_source=path)

        return await self.training.run(
            f"{team}\x00{task.taskUUID}", plan, entry, final_target, read_dataset=read_dataset, register=register, emit=emit
        )

    def cancel_training(self, team: str, task_uuid: str) -> bool:
        return self.training.cancel(f"{team}\x00{task_uuid}")

    async def search_models(self, task: ModelSearch, team: str) -> ModelSearchResult:
        """modelSearch: the built-in models (public) and every model ``team`` may see."""
        rows = await asyncio.to_thread(
            self.registry.search,
            team,
            text=task.search,
            category=task.category,
            type_=task.type,
            architectures=(task.architecture,) if task.architecture else None,
            conditioning=task.conditioning,
            visibility=task.visibility,
            tags=task.tags,
            limit=10**9,
            offset=0,
        )
        found = [_builtin_info(e) for e in BUILTIN_MODELS.values() if _builtin_matches(e, task)]
        found += [_row_info(r) for r in rows[1]]
        return ModelSearchResult(
            taskType="modelSearch",
            taskUUID=task.taskUUID,
            totalResults=len(found),
            results=found[task.offset : task.offset + task.limit],
        )


def _builtin_matches(entry: ModelEntry, task: ModelSearch) -> bool:
    if task.visibility == "private" or task.tags or task.conditioning:
        return False
    if task.category not in (None, entry.category) or task.type not in (None, "base"):
        return False
    if task.architecture not in (None, entry.architecture):
        return False
    if task.search and task.search.lower() not in f"{entry.air} {entry.name} builtin".lower():
        return False
    return True


def _builtin_info(entry: ModelEntry) -> ModelInfo:
    return ModelInfo(
        air=entry.air, name=entry.name, version="1", category=entry.category, architecture=entry.architecture,
        tags=["builtin"], heroImage="", private=False, comment="built offline with random weights: draws noise",
        type="base", defaultSteps=entry.defaults.steps, defaultCFG=entry.defaults.cfg_scale,
        defaultScheduler=entry.defaults.scheduler, defaultStrength=entry.defaults.strength,
    )


def _row_info(row: ModelRow) -> ModelInfo:
    meta = row.meta
    return ModelInfo(
        air=row.air, name=row.name, version=row.version, category=row.category, architecture=row.architecture,
        tags=row.tags, heroImage=meta.get("heroImageURL") or "", private=row.private, comment=meta.get("comment") or "",
        type=row.type, conditioning=row.conditioning, shortDescription=meta.get("shortDescription"),
        positiveTriggerWords=meta.get("positiveTriggerWords"), negativeTriggerWords=meta.get("negativeTriggerWords"),
        defaultScheduler=meta.get("defaultScheduler"), defaultSteps=meta.get("defaultSteps"),
        defaultCFG=meta.get("defaultCFG"), defaultStrength=meta.get("defaultStrength"),
        defaultWeight=meta.get("defaultWeight"), sizeBytes=row.size_bytes,
    )
