"""The engine's front: prepared jobs in, events out (see :mod:`engine.jobs`).

``Engine`` owns the model library, the image store, the fair work queue and
the device worker.  It knows nothing of sockets.  The server calls
:meth:`Engine.prepare_job` (a decoded task → a typed, serialisable job,
resolved once, off the event loop) and :meth:`Engine.run` (a job → events to
a sink); the work itself lives in one module per kind: :mod:`engine.inference`,
:mod:`engine.upload.ingest`, :mod:`engine.training.runner`, :mod:`engine.search`.
``generate``, ``train``, ``upload_model`` and ``search_models`` are the same
calls for tests and benches that want a return value instead of events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from protocol.common import UUID_PATTERN
from protocol.inference import ImageInference, ImageUpload
from protocol.media import MediaStorage
from protocol.preprocess import ControlNetPreprocess, ImageControlNetPreProcess
from protocol.upscale import ImageUpscale, Upscale

from engine.cache import ModelCache
from engine.images.codec import decode_image, encode_image
from engine.images.sources import load_image_bytes
from engine.file_leases import FileLeases
from engine.images.store import ImageStore
from engine.models import ModelEntry, ModelLibrary
from engine.net import NetPolicy
from engine.registry.db import Database
from engine.registry.models import ModelRegistry, ModelRow
from engine.registry.view import ModelView
from engine.search import search_in_view, search_models
from engine.upload.ingest import Emit, IngestConfig, IngestRequest, ModelIngest
from engine.upload.store import ModelStore
from protocol.models import ModelSearch, ModelSearchResult, ModelUpload
from engine.pipelines.stable_diffusion import GenerationSpec
from engine import jobs
from engine.errors import JobFailed
from engine.inference import Inference, model_ref, report_failure
from engine.jobs import Job
from engine.workqueue import FairQueue, Worker, submit
from engine.training.runner import RECIPE_BASES, ImportTarget, TrainingOutcome, TrainingRunner, StatusEmit
from protocol.training import Training, TrainingPlan

log = logging.getLogger("wisp.engine")

# wisp never reaches a model hub: every model is local (built-in or uploaded).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")



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
    image_ttl_s: float = 30 * 86400.0
    store_dir: Path | None = None
    """Where model files are read by content hash; None: ``<data_dir>/store``.  A fleet replica points it at its
    node's shared disk cache (engine.fleet.blobs), filled from the front end's origin."""
    png_parameters: bool = False
    """PNGs carry their generation parameters (A1111's ``parameters`` text chunk) when a request does not say
    (``embedParameters``).  Off for the engine used as a library; the server turns it on (``WISP_PNG_PARAMETERS``)."""
    """How long a generated or uploaded image is kept when its request names no ``ttl`` (0: until deleted by hand)."""


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


GeneratedImage = jobs.GeneratedImage


class Engine:
    def __init__(self, config: EngineConfig, db: Database | None = None) -> None:
        self.config = config
        data_dir = Path(config.data_dir)
        self.db = db or Database(data_dir / "wisp.db")
        self.registry = ModelRegistry(self.db)
        self.model_view = ModelView(self.registry)
        self.model_store = ModelStore(Path(config.store_dir) if config.store_dir is not None else data_dir / "store")
        self.images = ImageStore(data_dir / "images", data_dir / "tmp", self.db, default_ttl_s=config.image_ttl_s, write_behind=True)
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
        self.leases = FileLeases()
        self._doomed_files: set[str] = set()
        """Hashes of deleted models' files, removed by :meth:`collect_files` once nothing uses them."""
        self.inference = Inference(self.library, self.images, self.queue, config.net, self._stopping, self.max_work,
                                   batching=config.max_batch > 1, leases=self.leases, png_parameters=config.png_parameters)

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

    FILE_GRACE_S = 60.0
    """A deleted model's file written or reused this recently waits (an upload of the same bytes may be registering)."""

    def delete_model(self, air: str, team: str) -> ModelRow:
        """Worker thread: delete ``team``'s model ``air``; its file goes when nothing refers to or uses it.

        The AIR stops resolving at once.  Jobs already prepared name the file
        by its hash and hold a lease on it (:class:`FileLeases`), so they
        finish; :meth:`collect_files` (now, and from the server's
        housekeeping) removes the file afterwards.
        """
        row = self.registry.delete(air, team)
        self._doomed_files.add(row.sha256)
        self.collect_files()
        return row

    def files_to_remove(self) -> int:
        """Deleted models' files still waiting for their last user (or their grace period)."""
        return len(self._doomed_files)

    def collect_files(self) -> int:
        """Worker thread: remove deleted models' files that no row names and no running job uses; returns how many."""
        removed = 0
        for sha256 in list(self._doomed_files):
            if self.registry.refers_to(sha256):
                self._doomed_files.discard(sha256)  # another AIR has these bytes (or they were uploaded again)
            elif not self.leases.held(sha256) and self.model_store.remove(sha256, self.FILE_GRACE_S):
                self._doomed_files.discard(sha256)
                removed += 1
        return removed

    def start(self) -> None:
        if not self._started:
            from engine.heap import keep_freed_memory

            keep_freed_memory()  # before the device thread allocates its first request (engine.heap)
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
        self.db.sync_writes()  # the images' owner rows (written behind)
        return len(left)

    @property
    def batch_limit(self) -> int:
        """How many compatible jobs may share a device call here (1: dynamic batching is off)."""
        return self._worker.max_batch

    def batch_sizes(self) -> dict[int, int]:
        """Device calls so far, by how many requests each ran (dynamic batching)."""
        return dict(self._worker.batches)

    def training_jobs(self) -> int:
        """Training jobs running or waiting."""
        return len(self.training._jobs)

    def device_busy(self) -> bool:
        """True while the device thread is still inside a job (after :meth:`stop`: a step longer than its wait)."""
        return self._started and self._worker.thread.is_alive()

    async def warm(self, air: str, team: str = "", freeze_libraries: bool = False) -> None:
        """Load a model ahead of its first request (builds the built-in one if needed).

        ``freeze_libraries`` (a long-running server): first move the libraries' objects out of the garbage
        collector's way (engine.heap), on the device thread before the load, so no model is frozen with them."""
        entry = self.library.resolve(air, team)

        def load() -> Any:
            if freeze_libraries:
                from engine.heap import freeze_library_objects
                from engine.models import LOAD_LOCK

                with LOAD_LOCK:
                    freeze_library_objects()
            return self.library.pipeline(entry)

        await submit(self.queue, "__warm__", load)

    # ---- the job interface ------------------------------------------------------------

    async def prepare_job(self, task: Any, team: str, owner: str) -> Job:
        """A decoded task as the job that runs it, resolved once, or an :class:`EngineError` to answer before any ack.

        Registry reads (models, LoRAs, sources, quotas) happen in a worker
        thread, never on the event loop.  ``owner`` is whose turn the job
        takes in the fair queue (a session).
        """
        if isinstance(task, ImageInference):
            if self.inference.needs_registry(task):
                return await asyncio.to_thread(self.inference.prepare, task, team, owner)
            return self.inference.prepare(task, team, owner)  # a built-in model and nothing else to look up: no I/O
        if isinstance(task, Training):
            return await asyncio.to_thread(self._prepare_training, task, team)
        if isinstance(task, ModelUpload):
            return jobs.UploadJob(task_uuid=task.taskUUID, team=team, request=task)
        if isinstance(task, ModelSearch):
            return jobs.SearchJob(task_uuid=task.taskUUID, team=team, query=task)
        if isinstance(task, ImageUpload):
            return jobs.ImageUploadJob(task_uuid=task.taskUUID, team=team, image=task.image)
        if isinstance(task, MediaStorage):  # an upload (a delete is answered by the gateway, not run as a job)
            assert task.media is not None
            return jobs.ImageUploadJob(task_uuid=task.taskUUID, team=team, image=task.media)
        if isinstance(task, (ImageUpscale, Upscale)):
            if task.uses_builtin:  # Lanczos: nothing to look up
                return jobs.UpscaleJob(task_uuid=task.taskUUID, team=team, image=task.image, factor=task.factor,
                                       output_format=task.outputFormat, output_quality=task.outputQuality)
            return await asyncio.to_thread(self._prepare_upscale, task, team, owner)
        if isinstance(task, (ImageControlNetPreProcess, ControlNetPreprocess)):
            from engine.preprocessors import check as check_preprocessor

            parameter = "preProcessorType" if task.preProcessorType is not None else "model"
            return jobs.PreprocessJob(
                task_uuid=task.taskUUID, team=team, image=task.image, preprocessor=check_preprocessor(task.preprocessor, parameter),
                low_threshold=task.low, high_threshold=task.high, width=task.width, height=task.height,
                output_format=task.outputFormat, output_quality=task.outputQuality,
            )
        raise TypeError(f"no job for {type(task).__name__}")

    async def run(
        self, job: Job, sink: jobs.Sink, own_hosts: frozenset[str] = frozenset(), errors: list[BaseException] | None = None,
    ) -> None:
        """Run ``job``, reporting to ``sink`` (on the loop, in order); ends with exactly one Finished or Failed.

        Failures are events, not exceptions; only cancellation (the server
        stopping) propagates.  ``own_hosts``: this server's ``host:port``
        spellings, so a URL of its own ``/images/`` is read from disk.
        """
        if isinstance(job, jobs.InferenceJob):
            await self.inference.run(job, sink, own_hosts, errors)
            return
        try:
            if isinstance(job, jobs.UploadJob):
                async def phase(status: str, message: str) -> None:
                    sink(jobs.UploadPhase(job.task_uuid, status, message))

                local = Path(job.local_source) if job.local_source is not None else None
                row = await self.ingest.run(job.request, job.team, phase, local_source=local)
                sink(jobs.Finished(task_uuid=job.task_uuid, uploaded=jobs.UploadedModel(air=row.air, sha256=row.sha256,
                                                                                                size_bytes=row.size_bytes)))
            elif isinstance(job, jobs.SearchJob):
                sink(jobs.Finished(task_uuid=job.task_uuid, search=await self.search_models(job.query, job.team)))
            elif isinstance(job, jobs.TrainingJob):
                async def status(state: str, message: str, **fields: Any) -> None:
                    sink(jobs.TrainingProgress(task_uuid=job.task_uuid, status=state, message=message, **fields))

                outcome = await self._train(job, status, own_hosts)
                sink(jobs.Finished(task_uuid=job.task_uuid, trained=jobs.TrainedLora(
                    air=outcome.air, architecture=outcome.architecture, steps=outcome.steps, loss=outcome.loss,
                    images=outcome.images, seconds=outcome.seconds)))
            elif isinstance(job, jobs.PreprocessJob):
                sink(await self.preprocess(job, own_hosts))
            elif isinstance(job, jobs.UpscaleJob):
                sink(await self.upscale(job, own_hosts))
            elif isinstance(job, jobs.ImageUploadJob):
                image_uuid, name = await self.upload_image(job.image, own_hosts, job.team)
                sink(jobs.Finished(task_uuid=job.task_uuid, images=[jobs.GeneratedImage(
                    image_uuid=image_uuid, file_name=name, seed=0, data=b"", mime="image/png", cost=0.0)]))
            else:
                raise TypeError(f"not a job: {type(job).__name__}")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            report_failure(sink, job.task_uuid, exc, errors)

    def cancel_inference(self, team: str, task_uuid: str) -> bool:
        """``taskCancel`` of an imageInference: a queued one ends at once, a running one after its current step."""
        return self.inference.cancel(team, task_uuid)

    # ---- the same, returning values (tests, benches) ------------------------------------

    async def prepare(self, task: ImageInference, team: str, own_hosts: frozenset[str] = frozenset()) -> tuple[ModelEntry, GenerationSpec]:
        """The library entry and generation spec ``task`` resolves to (its images read; no device work)."""
        job = await self.inference.load_inputs(await asyncio.to_thread(self.inference.prepare, task, team, ""), own_hosts)
        return self.inference.entry(job.model), await asyncio.to_thread(self.inference.spec, job)

    async def generate(
        self, task: ImageInference, *, team: str, owner: str, own_hosts: frozenset[str] = frozenset(),
        progress: "Callable[[int, int, list[str] | None], None] | None" = None,
        on_start: Callable[[], None] | None = None,
    ) -> list[GeneratedImage]:
        """Run an imageInference task through the job interface; one image per seed, stored on disk.

        ``progress(step, steps, previews)`` is called on the event loop for
        each step, in order, before the result; ``on_start()`` when the
        device takes the task.  Failures raise :class:`JobFailed` with the
        wire code.
        """
        job = await self.prepare_job(task, team, owner)
        finished = await self._outcome(job, own_hosts, progress=progress, on_start=on_start)
        return list(finished.images)

    async def _outcome(
        self, job: Job, own_hosts: frozenset[str], progress: "Callable[[int, int, list[str] | None], None] | None" = None,
        on_start: Callable[[], None] | None = None,
    ) -> jobs.Finished:
        end: list[jobs.Finished | jobs.Failed] = []

        def sink(event: jobs.Event) -> None:
            if isinstance(event, (jobs.Finished, jobs.Failed)):
                end.append(event)
            elif isinstance(event, jobs.Step) and progress is not None:
                progress(event.step, event.steps, event.previews)
            elif isinstance(event, jobs.Started) and on_start is not None:
                on_start()

        errors: list[BaseException] = []
        await self.run(job, sink, own_hosts, errors)
        if isinstance(end[0], jobs.Failed):
            if errors:
                raise errors[0]  # in-process: the exception itself, for callers that test its type
            failed = end[0]
            raise JobFailed(failed.code, failed.message, parameter=failed.parameter, retryable=failed.retryable, **failed.extra)
        return end[0]

    def cache_stats(self) -> dict[str, Any]:
        """The model cache's counters and occupancy (hits, misses, evictions, bytes per tier...)."""
        return {**self.cache.stats().as_dict(), "loraCache": self.lora_cache_stats()}

    def lora_cache_stats(self) -> dict[str, Any]:
        """The LoRA adapter cache's counters (hits, misses = file reads, evictions, bytes, budget)."""
        return self.lora_cache.stats().as_dict()

    async def upload_image(self, ref: str, own_hosts: frozenset[str] = frozenset(), team: str | None = None) -> tuple[str, str]:
        """Decode, re-encode as PNG (dropping metadata) and store for ``team``; returns (imageUUID, file name)."""
        data = await load_image_bytes(ref, "image", self.images, self.config.net, own_hosts, team)

        def store() -> tuple[str, str]:
            image = decode_image(data, "image")
            return self.images.put(encode_image(image, "PNG", 95), "png", team=team)

        return await asyncio.to_thread(store)

    async def preprocess(self, job: jobs.PreprocessJob, own_hosts: frozenset[str] = frozenset()) -> jobs.Finished:
        """A ControlNet guide from an image, resized first if asked; CPU work on a thread, not the device queue."""
        from engine.preprocessors import apply

        def make(image: Any) -> Any:
            from PIL import Image

            if job.width or job.height:
                image = image.resize((job.width or image.width, job.height or image.height), Image.Resampling.LANCZOS)
            return apply(job.preprocessor, image, job.low_threshold, job.high_threshold)

        return await self._image_to_image(job.task_uuid, job.team, job.image, make, job.output_format, job.output_quality, own_hosts)

    MAX_UPSCALED_PIXELS = 4096 * 4096
    """The largest image an upscale may produce (16.8 megapixels), and the largest a model pass may make on its way."""

    def _prepare_upscale(self, task: ImageUpscale | Upscale, team: str, owner: str) -> jobs.UpscaleJob:
        """Worker thread: an upscale naming an uploaded upscaler model, resolved (its bytes, network and scale).

        The factor defaults to the model's scale; another one resizes the
        model's output by Lanczos to that factor.
        """
        assert task.model is not None
        row = self.library.resolve_upscaler(task.model, team)
        detected = row.meta.get("upscaler") or {}
        ref = jobs.UpscalerRef(air=row.air, sha256=row.sha256, architecture=str(detected.get("architecture", "")),
                               scale=int(detected.get("scale", 1)), size_bytes=row.size_bytes)
        requested = task.requested_factor
        return jobs.UpscaleJob(task_uuid=task.taskUUID, team=team, image=task.image,
                               factor=float(ref.scale) if requested is None else requested, output_format=task.outputFormat,
                               output_quality=task.outputQuality, model=ref, owner=owner)

    def _upscaled_size(self, width: int, height: int, factor: float, what: str = "the upscaled image") -> tuple[int, int]:
        """``factor`` × (width, height), or :class:`WorkLimitExceeded` past :attr:`MAX_UPSCALED_PIXELS`."""
        from engine.errors import WorkLimitExceeded

        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        if size[0] * size[1] > self.MAX_UPSCALED_PIXELS:
            raise WorkLimitExceeded(f"{what} would be {size[0]}×{size[1]}; this server makes at most "
                                    f"{self.MAX_UPSCALED_PIXELS} pixels: a smaller factor or image", parameter="upscaleFactor")
        return size

    async def upscale(self, job: jobs.UpscaleJob, own_hosts: frozenset[str] = frozenset()) -> jobs.Finished:
        """An image enlarged ``job.factor`` times: by Lanczos resampling (the built-in ``wisp:lanczos-upscaler@1``), or by
        an uploaded upscaler model (:meth:`_upscale_by_model`)."""
        if job.model is not None:
            with self.leases.hold([job.model.sha256]):  # a model deleted meanwhile keeps its file until this ends
                return await self._upscale_by_model(job, job.model, own_hosts)

        def make(image: Any) -> Any:
            from PIL import Image

            return image.resize(self._upscaled_size(image.width, image.height, job.factor), Image.Resampling.LANCZOS)

        return await self._image_to_image(job.task_uuid, job.team, job.image, make, job.output_format, job.output_quality, own_hosts)

    async def _upscale_by_model(self, job: jobs.UpscaleJob, model: jobs.UpscalerRef, own_hosts: frozenset[str]) -> jobs.Finished:
        """The image through the upscaler network on the device worker (cached and pinned there: engine.models), then
        resized by Lanczos to ``job.factor`` × the input when that is not the network's scale.

        Both the output and the network's own output are held to :attr:`MAX_UPSCALED_PIXELS`, checked before the
        network runs.  On a CPU engine the device worker is a CPU thread: the same path.
        """

        def make(image: Any) -> Any:
            from PIL import Image

            size = self._upscaled_size(image.width, image.height, job.factor)
            self._upscaled_size(image.width, image.height, model.scale, f"{model.air}'s own output (×{model.scale})")
            with self.library.use_upscaler(model.sha256) as network:
                made = network.run(image)
            return made if made.size == size else made.resize(size, Image.Resampling.LANCZOS)

        return await self._image_to_image(job.task_uuid, job.team, job.image, make, job.output_format, job.output_quality, own_hosts,
                                          owner=job.owner)

    async def _image_to_image(
        self, task_uuid: str, team: str, ref: str, make: Callable[[Any], Any], output_format: str, quality: int,
        own_hosts: frozenset[str], owner: str | None = None,
    ) -> jobs.Finished:
        """Read an input image (the team's own imageUUIDs only), make a new one from it, store both.

        ``make`` runs on a thread, or, given the ``owner`` whose turn it takes,
        on the device worker (it runs a model).  An input that came as
        anything but an imageUUID is stored too, so the result's
        ``inputImageUUID`` names it.
        """
        from engine.images.codec import FORMATS

        data = await load_image_bytes(ref, "inputImage", self.images, self.config.net, own_hosts, team)
        known = self.images.find(ref, team) if _is_uuid(ref) else None

        def work() -> jobs.Finished:
            image = decode_image(data, "inputImage").convert("RGB")
            made = make(image)
            input_uuid = ref.lower() if known is not None else self.images.put(encode_image(image, "PNG", 95), "png", team=team)[0]
            _, ext, mime = FORMATS[output_format]
            encoded = encode_image(made, output_format, quality)
            made_uuid, name = self.images.put(encoded, ext, team=team)
            result = jobs.GeneratedImage(image_uuid=made_uuid, file_name=name, seed=0, data=encoded, mime=mime, cost=0.0)
            return jobs.Finished(task_uuid=task_uuid, images=[result], input_image_uuid=input_uuid)

        if owner is not None:
            return await submit(self.queue, owner, work)
        return await asyncio.to_thread(work)

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
        assert not isinstance(plan, Exception) and isinstance(plan, TrainingPlan)  # the decoder refused a bad plan already
        entry = self.library.resolve(plan.base_model or RECIPE_BASES[plan.family], team, parameter="baseModel")
        if family(entry.architecture) != plan.family:
            raise InvalidInput(
                f"{entry.air} is {entry.architecture}; the recipe {plan.recipe} trains {plan.family} LoRAs", parameter="baseModel"
            )
        if self.library.refines_only(entry):
            raise InvalidInput(f"{entry.air} is an SDXL refiner: it only finishes images; train on an SDXL checkpoint",
                               parameter="baseModel")
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

    def _prepare_training(self, task: Training, team: str) -> jobs.TrainingJob:
        """Worker thread: the training's plan, base model and target, checked once (the plan is computed once)."""
        plan, entry, target = self.check_training(task, team)
        return jobs.TrainingJob(
            task_uuid=task.taskUUID, team=team, plan=plan, base=model_ref(entry),
            target=None if target is None else jobs.TrainingTarget(
                air=target.air, name=target.name, version=target.version, unique_identifier=target.unique_identifier,
                private=target.private, hero_image_url=target.hero_image_url, short_description=target.short_description),
        )

    async def train(self, task: Training, team: str, emit: StatusEmit, own_hosts: frozenset[str] = frozenset()) -> TrainingOutcome:
        """Run a training task to a registered LoRA; statuses go to ``emit`` as they happen (tests, benches)."""
        return await self._train(await asyncio.to_thread(self._prepare_training, task, team), emit, own_hosts)

    async def _train(self, job: jobs.TrainingJob, emit: StatusEmit, own_hosts: frozenset[str]) -> TrainingOutcome:
        with self.leases.hold([job.base.sha256]):
            return await self._train_with(job, emit, own_hosts)

    async def _train_with(self, job: jobs.TrainingJob, emit: StatusEmit, own_hosts: frozenset[str]) -> TrainingOutcome:
        plan, entry, team, task_uuid = job.plan, self.inference.entry(job.base), job.team, job.task_uuid
        final_target = await self.training_target(job)

        async def read_dataset(resolution: int, folder: Path) -> list[Path]:
            return await self.read_dataset(job, resolution, folder, own_hosts)

        async def register(path: Path, phase: Any) -> None:
            await self.register_lora(job, final_target, path, phase)

        return await self.training.run(
            f"{team}\x00{task_uuid}", plan, entry, final_target, read_dataset=read_dataset, register=register, emit=emit
        )

    async def training_target(self, job: jobs.TrainingJob) -> ImportTarget:
        """Where the trained LoRA is registered: the request's AIR, or a new one under the team's default source."""
        if job.target is None:
            from engine.registry.team_settings import TeamSettings

            source = await asyncio.to_thread(TeamSettings(self.db).default_source, job.team)
            short = job.task_uuid.replace("-", "")[:12].lower()
            return ImportTarget(
                air=f"{source}:lora-{short}@1", name=f"LoRA trained by task {job.task_uuid}"[:400], version="1",
                unique_identifier="trained", private=True,
            )
        t = job.target
        return ImportTarget(air=t.air, name=t.name, version=t.version, unique_identifier=t.unique_identifier,
                            private=t.private, hero_image_url=t.hero_image_url, short_description=t.short_description)

    async def read_dataset(self, job: jobs.TrainingJob, resolution: int, folder: Path, own_hosts: frozenset[str]) -> list[Path]:
        """The training's images fetched and prepared at ``resolution`` into ``folder`` (the team's own imageUUIDs only)."""
        from engine.training import dataset

        plan = job.plan
        return await dataset.gather(plan.dataset, plan.dataset_parameter, resolution, self.images, self.config.net, own_hosts, folder,
                                    job.team)

    async def register_lora(self, job: jobs.TrainingJob, target: ImportTarget, path: Path, phase: Any) -> None:
        """A trained LoRA file registered under ``target`` through the ingest (the upload phases go to ``phase``)."""
        plan, entry = job.plan, self.inference.entry(job.base)
        meta = {"heroImageURL": target.hero_image_url, "shortDescription": target.short_description,
                "positiveTriggerWords": plan.trigger_word, "tags": ["trained", plan.lora_type],
                "comment": f"trained from {entry.air} by {plan.recipe}"}
        request = IngestRequest(
            air=target.air, category="lora", architecture=entry.architecture, name=target.name,
            version=target.version, private=target.private,
            # every run is new content: never let the upload path reuse an earlier run's file
            unique_identifier=f"{target.unique_identifier}#{job.task_uuid}"[:256],
            meta={k: v for k, v in meta.items() if v is not None},
        )
        await self.ingest.run(request, job.team, phase, local_source=path)

    def cancel_training(self, team: str, task_uuid: str) -> bool:
        return self.training.cancel(f"{team}\x00{task_uuid}")

    async def search_models(self, task: ModelSearch, team: str) -> ModelSearchResult:
        """modelSearch: the built-in models (public) and every model ``team`` may see (the registry read in a thread)."""
        return await asyncio.to_thread(search_models, self.registry, task, team, self.model_view)

    def search_now(self, task: ModelSearch, team: str) -> ModelSearchResult | None:
        """modelSearch answered from memory, on the event loop (no I/O); None while the view is stale."""
        return search_in_view(self.model_view, task, team)


_UUID_RE = re.compile(UUID_PATTERN)


def _is_uuid(ref: str) -> bool:
    return _UUID_RE.match(ref) is not None
