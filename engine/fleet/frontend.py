"""``FleetEngine``: the front end's engine when inference runs on a Ray Serve fleet.

It is the embedded :class:`engine.core.Engine` — registry, uploads, search,
images, preprocessing, upscaling and training stay in this process — with
:meth:`run` sending imageInference jobs to the fleet instead of the local
device: the job is prepared here exactly as before (registry reads in a
worker thread), its input images are read here, and then its MessagePack
bytes go to the replica the router picks, with the routing hint and this
front end's origin (where the replica fetches model files it lacks).  Events
come back as bytes and reach the sink as if the local engine had made them;
result images are stored here under the imageUUIDs the replica chose.

Faults: if the replica dies before the job's last event, the job is run once
more on another replica — an imageInference is deterministic (its seeds are
drawn when the job is made), so the client gets the image it would have got;
steps already reported are not reported twice.  If that fails too, the task
ends ``taskInterrupted``.  It never hangs: every attempt has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from engine import jobs
from engine.core import Engine, EngineConfig
from engine.errors import JobCancelled, ReplicaLost
from engine.fleet.blobs import Origin
from engine.fleet.replica import TrainedFile, decode_events
from engine.fleet.routing import Hint, batch_hint
from engine.images.codec import FORMATS
from engine.inference import failure, report_failure
from engine.registry.db import Database

log = logging.getLogger("wisp.fleet")

ATTEMPT_TIMEOUT_S = 3600.0
"""One attempt's bound (a job the fleet neither runs nor fails within this is interrupted)."""


def fleet_token(data_dir: Path) -> str:
    """The secret replicas present to the origin route; kept in the data dir so a restarted front end keeps it."""
    path = Path(data_dir) / "fleet.token"
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even for a moment
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


class FleetEngine(Engine):
    def __init__(self, config: EngineConfig, db: Database | None = None) -> None:
        super().__init__(config, db)
        self.fleet: Any = None
        self._stream_handle: Any = None
        self.origin: Origin | None = None
        self.token = fleet_token(Path(config.data_dir))
        self._calls: dict[tuple[str, str], Any] = {}
        """(team, taskUUID) → the fleet call running it (taskCancel cancels the call)."""
        self._cancelled: set[tuple[str, str]] = set()
        self._replicas: list[dict[str, Any]] = []
        self._state_task: asyncio.Task[None] | None = None
        self.remote_trainings = 0
        """Training jobs sent to the fleet's training deployment."""
        self.retries = 0
        """Jobs run a second time after their replica died."""

    def attach(self, fleet: Any, origin_url: str) -> None:
        """Use ``fleet`` (:class:`engine.fleet.cluster.Fleet`); replicas fetch model files from ``origin_url``."""
        self.fleet = fleet
        self._stream_handle = None
        self.origin = Origin(origin_url, self.token)

    # ---- the job interface ------------------------------------------------------------

    async def run(
        self, job: jobs.Job, sink: jobs.Sink, own_hosts: frozenset[str] = frozenset(), errors: list[BaseException] | None = None,
    ) -> None:
        if isinstance(job, jobs.InferenceJob) and self.fleet is not None:
            await self._run_remote(job, sink, own_hosts, errors)
            return
        if isinstance(job, jobs.TrainingJob) and self.fleet is not None and self.fleet.training is not None:
            await self._train_remote(job, sink, own_hosts, errors)
            return
        await super().run(job, sink, own_hosts, errors)

    async def _train_remote(
        self, job: jobs.TrainingJob, sink: jobs.Sink, own_hosts: frozenset[str], errors: list[BaseException] | None,
    ) -> None:
        """A training on the fleet's training deployment: the dataset is gathered here, the LoRA registered here."""
        import tempfile

        import msgspec

        from engine.training.runner import UPLOAD_PHASES, default_resolution

        key = (job.team, job.task_uuid.lower())
        self.remote_trainings += 1
        folder = Path(tempfile.mkdtemp(prefix="train-", dir=Path(self.config.data_dir) / "tmp"))
        try:
            target = await self.training_target(job)
            job = msgspec.structs.replace(job, target=jobs.TrainingTarget(
                air=target.air, name=target.name, version=target.version, unique_identifier=target.unique_identifier,
                private=target.private, hero_image_url=target.hero_image_url, short_description=target.short_description))
            resolution = job.plan.resolution or default_resolution(self.inference.entry(job.base))
            images = await self.read_dataset(job, resolution, folder, own_hosts)

            def pack() -> list[tuple[str, bytes]]:
                names = [p.name for p in images]
                extra = sorted(p.name for p in folder.iterdir() if p.name not in set(names))
                return [(name, (folder / name).read_bytes()) for name in [*names, *extra]]

            dataset = await asyncio.to_thread(pack)
            origin = {"url": self.origin.url, "token": self.origin.token} if self.origin is not None else None
            response = self.fleet.training.options(stream=True).train.remote(jobs.encode(job), dataset, origin)
            self._calls[key] = response
            async for data in response:
                for event in decode_events(data):
                    if isinstance(event, TrainedFile):
                        path = folder / "trained.safetensors"
                        await asyncio.to_thread(path.write_bytes, event.data)

                        async def phase(status: str, message: str) -> None:
                            mapped = UPLOAD_PHASES.get(status)
                            if mapped is not None:
                                sink(jobs.TrainingProgress(task_uuid=job.task_uuid, status=mapped[0], message=mapped[1]))

                        await self.register_lora(job, target, path, phase)
                        continue
                    sink(event)
                    if isinstance(event, (jobs.Finished, jobs.Failed)):
                        return
            raise ReplicaLost("the training replica ended the task's stream without a result")
        except asyncio.CancelledError:
            call = self._calls.get(key)
            if call is not None:
                call.cancel()
            raise
        except Exception as exc:
            if key in self._cancelled or _is_cancelled_error(exc):
                from engine.training.runner import TrainingCancelled

                sink(failure(job.task_uuid, TrainingCancelled("the training job was cancelled")))
                return
            if type(exc).__module__.startswith("ray"):
                exc = ReplicaLost("the training replica running this task stopped; the training was not finished")
            report_failure(sink, job.task_uuid, exc, errors)
        finally:
            self._calls.pop(key, None)
            self._cancelled.discard(key)
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _run_remote(
        self, job: jobs.InferenceJob, sink: jobs.Sink, own_hosts: frozenset[str], errors: list[BaseException] | None,
    ) -> None:
        key = (job.team, job.task_uuid.lower())
        try:
            job = await self.inference.load_inputs(job, own_hosts)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            report_failure(sink, job.task_uuid, exc, errors)
            return
        hint = routing_hint(job)
        payload = jobs.encode(job)
        origin = {"url": self.origin.url, "token": self.origin.token} if self.origin is not None else None
        seen = _Seen()
        try:
            for attempt in (1, 2):
                if key in self._cancelled:
                    sink(failure(job.task_uuid, JobCancelled("cancelled by taskCancel before it started")))
                    return
                if job.progress:  # live steps: a stream
                    response = self._streaming().run.remote(hint.as_dict(), payload, origin)
                else:  # one reply: a stream's set-up and items cost more than the whole call (bench/fleet.py)
                    response = self.fleet.handle.run_once.remote(hint.as_dict(), payload, origin)
                self._calls[key] = response
                try:
                    async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                        async for data in _items(response, job.progress):
                            for event in decode_events(data):
                                if not seen.first(event):
                                    continue
                                if isinstance(event, jobs.Finished) and event.images:
                                    event = await asyncio.to_thread(self._keep_images, job, event)
                                sink(event)
                                if isinstance(event, (jobs.Finished, jobs.Failed)):
                                    return
                    raise ReplicaLost("the replica ended the task's stream without a result")
                except asyncio.CancelledError:
                    response.cancel()  # the replica withdraws the job
                    raise
                except Exception as exc:
                    if key in self._cancelled or _is_cancelled_error(exc):
                        sink(failure(job.task_uuid, JobCancelled("cancelled by taskCancel between denoising steps")))
                        return
                    if attempt == 1:
                        self.retries += 1
                        log.warning("task %s: its replica failed (%s); running it again on another replica", job.task_uuid,
                                    type(exc).__name__)
                        await asyncio.sleep(0.5)  # the controller notices a dead replica within its health-check period
                        continue
                    log.error("task %s: failed on two replicas (%s)", job.task_uuid, type(exc).__name__)
                    sink(failure(job.task_uuid, ReplicaLost(
                        "the engine replica running this task stopped, and so did the one it was moved to; the task was "
                        "not finished (it may be sent again)")))
                    return
        finally:
            self._calls.pop(key, None)
            self._cancelled.discard(key)

    def _streaming(self) -> Any:
        """The engine deployment's handle in streaming mode (made once: ``options`` builds a new handle each call)."""
        if self._stream_handle is None:
            self._stream_handle = self.fleet.handle.options(stream=True)
        return self._stream_handle

    def _keep_images(self, job: jobs.InferenceJob, event: jobs.Finished) -> jobs.Finished:
        """Worker thread: the result's images stored in this front end's image store, under the replica's imageUUIDs."""
        _, ext, _ = FORMATS[job.output_format]
        for image in event.images:
            self.images.put(image.data, ext, image_uuid=image.image_uuid, team=job.team, ttl_s=job.ttl_s)
        return event

    def cancel_training(self, team: str, task_uuid: str) -> bool:
        key = (team, task_uuid.lower())
        call = self._calls.get(key)
        if call is None:
            return super().cancel_training(team, task_uuid)
        self._cancelled.add(key)
        call.cancel()
        return True

    def cancel_inference(self, team: str, task_uuid: str) -> bool:
        key = (team, task_uuid.lower())
        call = self._calls.get(key)
        if call is None:
            return super().cancel_inference(team, task_uuid)
        self._cancelled.add(key)
        call.cancel()
        return True

    # ---- state -------------------------------------------------------------------------

    async def watch_replicas(self, period_s: float = 1.0) -> None:
        """Keep :meth:`replica_states` fresh (read from the FleetState actor; never blocks the loop)."""
        while True:
            try:
                if self.fleet is not None:
                    self._replicas = await self.fleet.state.snapshot.remote()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("fleet state unavailable: %s", exc)
            await asyncio.sleep(period_s)

    async def refresh_replicas(self) -> list[dict[str, Any]]:
        if self.fleet is not None:
            self._replicas = await self.fleet.state.snapshot.remote()
        return self._replicas

    def replica_states(self) -> list[dict[str, Any]]:
        """Each replica's last published state (cache tiers, loads, queue), for ``/healthz``."""
        return list(self._replicas)

    def fleet_summary(self) -> dict[str, Any]:
        return {"engine": self.fleet.settings.mode if self.fleet is not None else "embedded",
                "replicas": self.replica_states(), "retries": self.retries,
                "trainings": self.remote_trainings, "router": _router_counters(), "at": time.time()}

    def stop(self, wait_s: float = 10.0) -> int:
        dropped = super().stop(wait_s)
        for call in list(self._calls.values()):
            try:
                call.cancel()
            except Exception:
                pass
        return dropped


class _Seen:
    """Drops what a second attempt repeats: a second Started, steps already reported."""

    def __init__(self) -> None:
        self.started = False
        self.step = 0

    def first(self, event: jobs.Event) -> bool:
        if isinstance(event, jobs.Started):
            if self.started:
                return False
            self.started = True
        elif isinstance(event, jobs.Step):
            if event.step <= self.step:
                return False
            self.step = event.step
        return True


async def _items(response: Any, streaming: bool) -> Any:
    """The stream items of a streaming call, or a unary call's one reply."""
    if streaming:
        async for data in response:
            yield data
    else:
        yield await response


def _router_counters() -> dict[str, int]:
    """The request router's counters (it runs in this process, on Serve's router thread)."""
    from engine.fleet import routing

    return dict(routing.COUNTERS)


def _is_cancelled_error(exc: BaseException) -> bool:
    return type(exc).__name__ in ("RequestCancelledError", "TaskCancelledError")



def routing_hint(job: jobs.InferenceJob) -> Hint:
    """What the router needs of ``job``: its model's key and bytes, its LoRAs, and whom it could share a pass with."""
    model = job.model.sha256 or job.model.air
    alone = (len(job.seeds) != 1 or job.seed_image is not None or job.mask_image is not None or job.hires is not None
             or job.prompt_weighting is not None or job.refiner is not None or bool(job.embeddings) or job.vae is not None
             or bool(job.controlnets) or job.outpaint is not None)  # fmt: skip
    batch = batch_hint(model, alone, job.width, job.height, job.steps, job.scheduler, job.cfg_scale, job.clip_skip,
                       tuple((lora.sha256, lora.weight) for lora in job.loras))
    return Hint(model=model, size=job.model.size_bytes, loras=tuple(lora.sha256 for lora in job.loras), batch=batch)
