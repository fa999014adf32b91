"""Training jobs, from request to registered LoRA: dataset → queue → training process → library.

One :class:`TrainingRunner` per engine.  A job

1. reads its dataset (fetch, check, crop; bad images named) while it still
   holds no slot, so a bad dataset fails in seconds, not after a queue wait;
2. waits for a device slot (``slots`` jobs at once, default 1; at most
   ``max_queued`` waiting, beyond that ``queueFull``);
3. runs ``python -m engine.training.worker`` and turns its event lines into
   statuses (deploying_gpu → training_started (+ progress) → training_success
   → trained_model_compressing);
4. hands the adapter file to the model-upload path (validate → store →
   register, exactly what a ``modelUpload`` does), reported as
   trained_model_uploading → trained_model_uploaded → deploying_model, and
   returns once the registry row exists: the LoRA is usable from then on.

Cancel kills the process (or drops the job from the queue).  Nothing of a
job survives it but the registered model: its folder under ``tmp/`` is
removed whatever happens, and ``tmp/`` is emptied at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from engine.errors import EngineError, InvalidInput, QueueFull
from engine.models import ModelEntry
from engine.pipelines import families
from engine.training.loop import LoopConfig
from protocol.errors import ErrorCode
from protocol.training import TrainingPlan, default_steps

log = logging.getLogger("wisp.engine.training")

StatusEmit = Callable[..., Awaitable[None]]
"""``await emit(training_status, message, *, step=, steps=, loss=, progress=)``."""

RECIPE_BASES = {f.name: f.builtin.air for f in families.all()}
"""The base checkpoint a recipe trains on when the request names none: the family's built-in model."""

UPLOAD_PHASES = {
    "validated": ("trained_model_uploading", "Uploading the trained model."),
    "stored": ("trained_model_uploaded", "Trained model uploaded."),
    "ready": ("deploying_model", "Deploying the trained model."),
}
"""modelUpload phases of the trained file → the seed documents' training statuses (and their descriptions)."""


class TrainingCancelled(EngineError):
    code = ErrorCode.TASK_CANCELLED


class TrainingFailed(EngineError):
    code = ErrorCode.TRAINING_FAILED


@dataclass(frozen=True)
class ImportTarget:
    """Where the trained LoRA is registered."""

    air: str
    name: str
    version: str
    unique_identifier: str
    private: bool
    hero_image_url: str | None = None
    short_description: str | None = None


@dataclass(frozen=True)
class TrainingOutcome:
    air: str
    steps: int
    loss: float
    seconds: float
    images: int
    architecture: str


@dataclass
class _Job:
    task_uuid: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None


def default_resolution(entry: ModelEntry) -> int:
    """The family's native resolution (SD-1.x 512, SDXL 1024); 64 for the built-in tiny models (noise at any size)."""
    if entry.builtin:
        return 64
    descriptor = families.family_of(entry.architecture)
    return descriptor.training_resolution if descriptor is not None else 512  # a base is always of a known family


class TrainingRunner:
    def __init__(
        self,
        *,
        data_dir: Path,
        device: str,
        threads: int,
        slots: int = 1,
        max_queued: int = 16,
        python: str = sys.executable,
    ) -> None:
        self.data_dir = data_dir
        self.device = device
        self.threads = threads
        self.slots = slots
        self.max_queued = max_queued
        self.python = python
        self._jobs: dict[str, _Job] = {}
        self._running = 0
        self._waiters: list[tuple[_Job, asyncio.Future[None]]] = []

    # ---- queue --------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def _acquire(self, job: _Job, on_wait: Callable[[int], Awaitable[None]]) -> None:
        if self._running < self.slots and not self._waiters:
            self._running += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise QueueFull(f"{self.max_queued} training jobs are already waiting; retry later")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((job, turn))
        await on_wait(len(self._waiters))
        cancel = asyncio.ensure_future(job.cancelled.wait())
        try:
            await asyncio.wait([turn, cancel], return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
            if not turn.done():
                self._waiters = [(j, f) for j, f in self._waiters if f is not turn]
                turn.cancel()
        if not turn.done() or turn.cancelled():
            raise TrainingCancelled("the training job was cancelled before it started")
        if job.cancelled.is_set():
            self._release()
            raise TrainingCancelled("the training job was cancelled before it started")

    def _release(self) -> None:
        while self._waiters:
            _, turn = self._waiters.pop(0)
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next job
                return
        self._running -= 1

    def cancel(self, task_uuid: str) -> bool:
        """Stop a queued or running job; False when no such job is in progress."""
        job = self._jobs.get(task_uuid)
        if job is None:
            return False
        job.cancelled.set()
        if job.process is not None and job.process.returncode is None:
            job.process.kill()
        return True

    def kill_all(self) -> None:
        """Server shutdown: stop every training process now."""
        for key in list(self._jobs):
            self.cancel(key)

    # ---- one job ------------------------------------------------------------

    async def run(
        self,
        task_uuid: str,
        plan: TrainingPlan,
        base: ModelEntry,
        target: ImportTarget,
        *,
        read_dataset: Callable[[int, Path], Awaitable[list[Path]]],
        register: Callable[[Path, Callable[[str, str], Awaitable[None]]], Awaitable[None]],
        emit: StatusEmit,
    ) -> TrainingOutcome:
        """Run one job end to end; raises an :class:`EngineError` on any failure."""
        if task_uuid in self._jobs:
            raise InvalidInput("this training job is already running", parameter="taskUUID")
        job = _Job(task_uuid)
        self._jobs[task_uuid] = job
        folder = self.data_dir / "tmp" / f"train-{hashlib.sha256(task_uuid.encode()).hexdigest()[:16]}"
        try:
            resolution = plan.resolution or default_resolution(base)
            images = await read_dataset(resolution, folder / "images")
            steps = plan.steps or default_steps(len(images))

            async def waiting(position: int) -> None:
                await emit("queued", f"waiting for a training slot ({position} in line)")

            await self._acquire(job, waiting)
            try:
                result = await self._train(job, plan, base, images, steps, resolution, folder, emit)
            finally:
                self._release()
            if job.cancelled.is_set():
                raise TrainingCancelled("the training job was cancelled")

            async def phase(status: str, message: str) -> None:
                mapped = UPLOAD_PHASES.get(status)
                if mapped is not None:
                    await emit(*mapped)

            await register(Path(result["file"]), phase)
            return TrainingOutcome(
                air=target.air, steps=steps, loss=float(result["loss"]), seconds=float(result["seconds"]),
                images=len(images), architecture=base.architecture,
            )
        finally:
            del self._jobs[task_uuid]
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def _job_document(
        self, plan: TrainingPlan, base: ModelEntry, images: list[Path], steps: int, resolution: int, folder: Path
    ) -> dict[str, Any]:
        loop = LoopConfig(
            steps=steps, learning_rate=plan.learning_rate, rank=plan.rank, alpha=plan.alpha, seed=plan.seed,
            lora_type=plan.lora_type, batch_size=plan.batch_size, prior_loss_weight=plan.prior_loss_weight,
        )
        class_images = 0
        if plan.class_prompt:
            class_images = plan.class_images or min(len(images), 8)
        return {
            "job_dir": str(folder),
            "data_dir": str(self.data_dir),
            "device": self.device,
            "threads": self.threads,
            "base": {"air": base.air, "architecture": base.architecture, "builtin": base.builtin, "file": str(base.file) if base.file else None},
            "images": [str(p) for p in images],
            "caption": plan.instance_prompt,
            "class_prompt": plan.class_prompt,
            "negative_prompt": plan.negative_prompt,
            "class_images": class_images,
            "resolution": resolution,
            "loop": asdict(loop),
        }

    async def _train(
        self, job: _Job, plan: TrainingPlan, base: ModelEntry, images: list[Path], steps: int, resolution: int,
        folder: Path, emit: StatusEmit,
    ) -> dict[str, Any]:
        document = self._job_document(plan, base, images, steps, resolution, folder)
        if job.cancelled.is_set():
            raise TrainingCancelled("the training job was cancelled")
        if base.builtin:  # built here, once, so every training process only loads it (same state each run)
            from engine.models import builtin_folder

            await asyncio.to_thread(builtin_folder, base.air, self.data_dir)
        log_path = folder / "worker.log"
        with open(log_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                self.python, "-m", "engine.training.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        job.process = process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write((json.dumps(document) + "\n").encode())
            await process.stdin.drain()
            done: dict[str, Any] | None = None
            failure: dict[str, Any] | None = None
            while line := await process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.pop("event", None)
                if kind == "status":
                    status = event.pop("status")
                    await emit(status, event.pop("message", ""), **event)
                elif kind == "progress":
                    event.pop("elapsed_s", None)
                    loss = event.get("loss")
                    await emit("training_started", f"step {event.get('step')} of {event.get('steps')}, loss {loss:.4f}" if loss is not None else "", **event)
                elif kind == "done":
                    done = event
                elif kind == "error":
                    failure = event
            code = await process.wait()
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        finally:
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()
        if job.cancelled.is_set():
            raise TrainingCancelled("the training job was cancelled")
        if done is None or code != 0:
            detail = failure.get("kind", "crash") if failure else f"exit status {code}"
            log.error("training %s failed (%s): %s; log: %s", job.task_uuid, detail, (failure or {}).get("message"), _tail(log_path))
            raise TrainingFailed(f"the training process failed ({detail}); the server log has the details")
        return done


def _tail(path: Path, size: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode("utf-8", "replace")

