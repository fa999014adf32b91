"""The fleet's replicas: a whole wisp engine per Ray Serve replica, jobs in, events out.

``EngineReplica`` is the deployment class (:mod:`engine.fleet.cluster` wraps
it with ``serve.deployment``).  Each replica holds its own
:class:`engine.core.Engine` — two-tier byte-budgeted model cache with
pinning, LoRA cache, dynamic batching, one device thread — in a scratch data
directory, and reads model files from its node's shared
:class:`~engine.fleet.blobs.BlobCache`.  :meth:`EngineReplica.run` takes a job
as the MessagePack bytes of :mod:`engine.jobs`, fetches the files it names
(once per node), runs it, and streams every event back as MessagePack bytes:
the front end decodes them exactly as it would its own engine's.

Images travel back in the ``Finished`` event (their bytes are in it anyway);
the replica's image store only names them (``transient``), and the front end
stores them under the same imageUUIDs.  Cancellation (``taskCancel``, a client gone, the front end
stopping) reaches the replica as a cancelled stream and withdraws the job.

``record_routing_stats`` tells the router (:mod:`engine.fleet.router`) what
this replica holds; the same state is published to the ``FleetState`` actor
for the front end's ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Union

import msgspec

from engine import jobs
from engine.core import EngineConfig
from engine.errors import EngineError
from engine.fleet.blobs import BlobCache, Origin
from engine.inference import failure

log = logging.getLogger("wisp.fleet")

STATE_ACTOR = "wisp-fleet-state"
NAMESPACE = "wisp"
"""The Ray namespace of wisp's actors (the FleetState actor, the driver)."""


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica of a deployment is started with (a plain, picklable value)."""

    cache_dir: str
    """The node's root for model files and replica scratch directories (shared by the replicas of a node)."""
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(data_dir=Path(".")))
    """The replica's engine settings: the front end's own (one config tree), its data dir and store replaced on the
    replica by the scratch dir and the node's disk cache."""
    disk_bytes: int = 64 * 1024**3
    gil_switch_interval_s: float = 0.0005
    publish: bool = True
    """Publish state to the FleetState actor (inference replicas; a training replica is not routed by model)."""


class TrainedFile(msgspec.Struct, frozen=True, kw_only=True, tag="trainedFile"):
    """A training replica's result file (the LoRA's bytes), sent before its Finished: the front end registers it."""

    task_uuid: str
    data: bytes


ReplicaEvent = Union[jobs.Started, jobs.Step, jobs.UploadPhase, jobs.TrainingProgress, jobs.Finished, jobs.Failed, TrainedFile]


def encode_events(events: list[Any]) -> bytes:
    """One stream item: the events ready at once, in order, as a MessagePack array."""
    return msgspec.msgpack.encode(events)


def decode_events(data: bytes) -> list[Any]:
    """:func:`encode_events` read back: :mod:`engine.jobs` events, and :class:`TrainedFile`."""
    return msgspec.msgpack.decode(data, type=list[ReplicaEvent])


def model_key(cache_key: object) -> str | None:
    """The routing key of a model-cache key (``"<air>|<sha256>"`` → the hash, ``"<air>|builtin-vN"`` → the AIR)."""
    if not isinstance(cache_key, str):
        return None
    parts = cache_key.split("|")
    if len(parts) != 2:
        return None  # VAEs, ControlNets: not routed on
    air, content = parts
    return air if content.startswith("builtin-") else content


def model_keys(cache_keys: Iterable[object]) -> set[str]:
    """The routing keys of the models among ``cache_keys`` (see :func:`model_key`)."""
    return {key for key in map(model_key, cache_keys) if key}


def job_files(job: jobs.Job) -> list[str]:
    """Content hashes of every stored file ``job`` reads."""
    if isinstance(job, jobs.InferenceJob):
        found = [job.model.sha256, *(lora.sha256 for lora in job.loras), *(e.sha256 for e in job.embeddings),
                 job.vae.sha256 if job.vae is not None else None, *(c.sha256 for c in job.controlnets),
                 job.refiner.model.sha256 if job.refiner is not None else None]
        return [sha for sha in found if sha]
    if isinstance(job, jobs.TrainingJob):
        return [job.base.sha256] if job.base.sha256 else []
    return []


class EngineReplica:
    """One engine replica (see the module docstring)."""

    def __init__(self, settings: ReplicaSettings) -> None:
        from engine.core import Engine

        self.id = _replica_id()
        self.settings = settings
        sys.setswitchinterval(settings.gil_switch_interval_s)  # the device thread must not hold the loop for 5 ms per hand-off
        root = Path(settings.cache_dir)
        self.scratch = root / "replicas" / self.id
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.blobs = BlobCache(root / "blobs", settings.disk_bytes)
        self.engine = Engine(replace(settings.engine, data_dir=self.scratch, store_dir=self.blobs.root))
        self.engine.images.transient = True  # results travel in their Finished events; the front end stores them
        self.engine.start()
        self.running: dict[str, str] = {}
        """taskUUID → model key of the jobs this replica holds (fetching, queued or on the device)."""
        self.waiting: dict[str, str] = {}
        """taskUUID → batch hint of the jobs accepted here and not started yet (reported to the router when this
        replica's engine batches)."""
        self.jobs_done = 0
        self.run_ms: list[float] = []
        """How long the last jobs took here, from their bytes arriving to their last event (milliseconds)."""
        self.cold_loads: list[tuple[str, float]] = []
        """(model key, when) of jobs that found their model neither resident nor loading here (the last 500)."""
        self.started_at = time.time()
        self._state_actor: Any = None
        log.info("engine replica %s ready (pid %d, device %s, %d torch threads)", self.id, os.getpid(), settings.engine.device,
                 settings.engine.torch_threads)

    async def run(self, hint: dict[str, Any], job_bytes: bytes, origin: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        """Run one job; yields its events as MessagePack arrays (:func:`encode_events`), the last holding its Finished or
        Failed."""
        began = time.perf_counter()
        job = jobs.decode_job(job_bytes)
        task_uuid = job.task_uuid
        model = str(hint.get("model", "")) if isinstance(hint, dict) else ""
        if model and model not in self._resident_or_loading():
            self.cold_loads = [*self.cold_loads[-499:], (model, time.time())]
        self.running[task_uuid] = model
        mates = hint.get("batch") if isinstance(hint, dict) else None
        if isinstance(mates, str) and mates:
            self.waiting[task_uuid] = mates
        events: asyncio.Queue[jobs.Event] = asyncio.Queue()
        runner: asyncio.Task[None] | None = None
        files = contextlib.ExitStack()
        try:
            try:
                where = Origin(origin["url"], origin["token"]) if origin else None
                hashes = job_files(job)
                if hashes:  # file I/O (and maybe a download): off the loop
                    await asyncio.to_thread(files.enter_context, self.blobs.holding(hashes, where))
            except EngineError as exc:
                self._done(task_uuid, files)
                yield encode_events([failure(task_uuid, exc)])
                return
            runner = asyncio.get_running_loop().create_task(self.engine.run(job, events.put_nowait))
            while True:
                batch = [await events.get()]
                while not events.empty():  # what is already here goes as one stream item (each item costs an RPC)
                    batch.append(events.get_nowait())
                if task_uuid in self.waiting and any(isinstance(e, jobs.Started) for e in batch):
                    del self.waiting[task_uuid]  # on the device now: no longer a pass to join
                final = next((e for e in batch if isinstance(e, (jobs.Finished, jobs.Failed))), None)
                if final is None:
                    yield encode_events(batch)
                    continue
                await runner
                self.run_ms = [*self.run_ms[-99:], (time.perf_counter() - began) * 1000]
                self._done(task_uuid, files)  # before the last yield: the caller stops reading after it
                yield encode_events(batch)
                return
        except asyncio.CancelledError:
            if isinstance(job, jobs.InferenceJob):
                self.engine.cancel_inference(job.team, task_uuid)
            elif isinstance(job, jobs.TrainingJob):
                self.engine.cancel_training(job.team, task_uuid)
            raise
        finally:
            self._done(task_uuid, files)

    async def run_once(self, hint: dict[str, Any], job_bytes: bytes, origin: dict[str, str] | None = None) -> bytes:
        """:meth:`run` as one reply (every event, in order): for jobs that do not stream progress, one round trip
        instead of a stream's set-up and items."""
        events: list[Any] = []
        async for data in self.run(hint, job_bytes, origin):
            events.extend(decode_events(data))
        return encode_events(events)

    async def train(self, job_bytes: bytes, dataset: list[tuple[str, bytes]], origin: dict[str, str] | None = None,
                    ) -> AsyncIterator[bytes]:
        """Run one training job on the images the front end gathered (``dataset``: file name, bytes; images first, in
        order); yields its statuses, then the LoRA file (:class:`TrainedFile`) and Finished — or Failed.

        The LoRA is not registered here: the front end owns the registry and registers it as it does its own.
        """
        from engine.training.runner import ImportTarget

        job = jobs.decode_job(job_bytes)
        if not isinstance(job, jobs.TrainingJob) or job.target is None:
            yield encode_events([jobs.Failed(task_uuid=job.task_uuid, code="internalError", message="not a prepared training job")])
            return
        task_uuid, target = job.task_uuid, job.target
        events: asyncio.Queue[Any] = asyncio.Queue()
        trained: dict[str, bytes] = {}
        files = contextlib.ExitStack()
        self.running[task_uuid] = "training"

        async def emit(status: str, message: str, **fields: Any) -> None:
            events.put_nowait(jobs.TrainingProgress(task_uuid=task_uuid, status=status, message=message, **fields))

        async def read_dataset(resolution: int, folder: Path) -> list[Path]:
            def write() -> list[Path]:
                folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for name, data in dataset:
                    path = folder / Path(name).name  # a bare name: nothing outside the folder
                    path.write_bytes(data)
                    paths.append(path)
                return [p for p in paths if p.suffix.lower() != ".txt"]

            return await asyncio.to_thread(write)

        async def keep(path: Path, phase: Any) -> None:
            trained["data"] = await asyncio.to_thread(path.read_bytes)

        async def work() -> None:
            try:
                hashes = job_files(job)
                if hashes:
                    where = Origin(origin["url"], origin["token"]) if origin else None
                    await asyncio.to_thread(files.enter_context, self.blobs.holding(hashes, where))
                entry = self.engine.inference.entry(job.base)
                outcome = await self.engine.training.run(
                    f"{job.team}\x00{task_uuid}", job.plan, entry,
                    ImportTarget(air=target.air, name=target.name, version=target.version, unique_identifier=target.unique_identifier,
                                 private=target.private, hero_image_url=target.hero_image_url,
                                 short_description=target.short_description),
                    read_dataset=read_dataset, register=keep, emit=emit,
                )
                events.put_nowait(TrainedFile(task_uuid=task_uuid, data=trained["data"]))
                events.put_nowait(jobs.Finished(task_uuid=task_uuid, trained=jobs.TrainedLora(
                    air=outcome.air, architecture=outcome.architecture, steps=outcome.steps, loss=outcome.loss,
                    images=outcome.images, seconds=outcome.seconds)))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                events.put_nowait(failure(task_uuid, exc))

        runner = asyncio.get_running_loop().create_task(work())
        try:
            while True:
                batch = [await events.get()]
                while not events.empty():
                    batch.append(events.get_nowait())
                if any(isinstance(e, (jobs.Finished, jobs.Failed)) for e in batch):
                    await runner
                    self._done(task_uuid, files)
                    yield encode_events(batch)
                    return
                yield encode_events(batch)
        except asyncio.CancelledError:
            self.engine.cancel_training(job.team, task_uuid)
            runner.cancel()
            raise
        finally:
            self._done(task_uuid, files)

    def _done(self, task_uuid: str, files: contextlib.ExitStack) -> None:
        """A job's end, counted once: its files released, its queue slot freed."""
        files.close()
        self.waiting.pop(task_uuid, None)
        if self.running.pop(task_uuid, None) is not None:
            self.jobs_done += 1

    def _resident_or_loading(self) -> set[str]:
        cache = self.engine.cache
        return model_keys([*cache.keys(), *cache.loading_keys()]) | set(self.running.values())

    def state(self) -> dict[str, Any]:
        """What this replica holds: routing keys by tier, loads in flight, free bytes, queue, counters."""
        from engine.cache import DEVICE, HOST

        cache = self.engine.cache
        stats = cache.stats()

        def keys(tier: str) -> list[str]:
            return sorted(model_keys(cache.keys(tier)))

        return {
            "id": self.id, "pid": os.getpid(), "node": _node_id(),
            "device": keys(DEVICE), "host": keys(HOST),
            "loading": sorted(model_keys(cache.loading_keys())),
            "loras": sorted(self.engine.lora_cache.keys()),
            # room a model could have without evicting one in use (idle models are evictable: counting them as
            # occupied would send a model to whichever replica happened to evict last, scattering the partition)
            "free_device": max(0, stats.device_budget - cache.pinned_bytes(DEVICE)),
            "free_host": max(0, stats.host_budget - cache.pinned_bytes(HOST)),
            "unused_device": max(0, stats.device_budget - stats.device_bytes),
            "queue": len(self.running), "running": sorted(self.running),
            "waiting": sorted(set(self.waiting.values())) if self.engine.batch_limit > 1 else [],
            "loads": stats.misses, "hits": stats.hits + stats.coalesced, "evictions": stats.evictions_dropped + stats.evictions_to_host,
            "jobs": self.jobs_done, "downloads": self.blobs.downloads, "disk_bytes": self.blobs.used_bytes(),
            "batches": {str(k): v for k, v in self.engine.batch_sizes().items()},
            "run_ms_p50": round(sorted(self.run_ms)[len(self.run_ms) // 2], 2) if self.run_ms else None,
            "cold_loads": [[model, round(when, 3)] for model, when in self.cold_loads],
        }

    def record_routing_stats(self) -> dict[str, Any]:
        """Polled by Serve for the router; also published for ``/healthz`` (fire and forget)."""
        state = self.state()
        if not self.settings.publish:
            return state
        try:
            if self._state_actor is None:
                import ray

                self._state_actor = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
            self._state_actor.report.remote(self.id, state)
        except Exception:  # the state actor is optional (health output only)
            self._state_actor = None
        return state

    def check_health(self) -> None:
        if not self.engine._worker.thread.is_alive():
            raise RuntimeError("the replica's device thread stopped")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.stop(wait_s=2.0)
            shutil.rmtree(self.scratch, ignore_errors=True)


class FleetState:
    """A detached actor holding each replica's last published state (the front end reads it for ``/healthz``)."""

    def __init__(self) -> None:
        self.replicas: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica_id: str, state: dict[str, Any]) -> None:
        self.replicas[replica_id] = (time.time(), state)

    def snapshot(self, max_age_s: float = 30.0) -> list[dict[str, Any]]:
        now = time.time()
        for key in [k for k, (when, _) in self.replicas.items() if now - when > max_age_s]:
            del self.replicas[key]
        return [dict(state, age_s=round(now - when, 2), reported_at=when) for when, state in self.replicas.values()]


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside Serve (a unit test)
        return f"local-{os.getpid()}"


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())[:12]
    except Exception:
        return ""
