"""One task's way back to its client: engine events become wire items, recorded, pushed and posted.

The gateway prepares a job and hands it here; :class:`Delivery` runs it
through :meth:`engine.core.Engine.run` and owns everything that follows from
its events: the task record (getResponse, getTaskDetails, the journal), the
session's frames (in order: every progress item and upload phase before the
results), the webhook (one POST per item, in order), the in-flight count, and
the failure or interruption of the task.  Nothing here knows how the engine
runs the job: in this process, or (later) on a replica.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Awaitable, Callable, Protocol

import msgspec

from engine import jobs
from engine.errors import EngineError, JobFailed, QueueFull
from engine.pricing import training_cost
from protocol.errors import ErrorCode, wire_error
from protocol.frames import encode_data, encode_errors
from protocol.inference import ImageInference, ImageResult, ImageUpload, ImageUploadResult, ProgressItem
from protocol.media import MediaStorage, MediaStorageResult
from protocol.models import ModelSearch, ModelUpload, ModelUploadStatus
from protocol.preprocess import ControlNetPreprocess, ImageControlNetPreProcess, PreprocessResult
from protocol.upscale import ImageUpscale, Upscale, UpscaleResult
from protocol.training import Training, TrainingStatus
from server import metrics
from server.context import RequestContext
from server.errors import to_wire_error
from server.sessions import Session
from server.tasklog import task_finished
from server.tasks import TaskRecord, TaskStore


class Host(Protocol):
    """What a delivery needs of the gateway that started it."""

    engine: Any
    tasks: TaskStore
    webhooks: Any
    counters: dict[str, int]

    def interrupted(self, record: TaskRecord) -> None: ...

log = logging.getLogger("wisp.server")

JobTask = (ImageInference | ImageUpload | ModelUpload | ModelSearch | Training | ImageControlNetPreProcess | ControlNetPreprocess
           | ImageUpscale | Upscale | MediaStorage)


class _Outbox:
    """Frames for one session, sent in the order pushed (events arrive on the loop; sends are awaited)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._last: asyncio.Future[None] | None = None

    def push(self, frames: list[bytes]) -> None:
        self._last = asyncio.ensure_future(self._send(self._last, frames))

    async def send(self, frames: list[bytes]) -> None:
        """``push`` then ``flush``; with nothing pending, sent from the caller's own task (no task made for it)."""
        if self._last is None or self._last.done():
            await self.session.emit(frames)
        else:
            self.push(frames)
            await self.flush()

    async def _send(self, previous: "asyncio.Future[None] | None", frames: list[bytes]) -> None:
        if previous is not None:
            await previous
        await self.session.emit(frames)

    async def flush(self) -> None:
        if self._last is not None:
            await self._last


class Delivery:
    def __init__(self, gateway: Host, session: Session, record: TaskRecord, task: JobTask, ctx: RequestContext) -> None:
        self.gateway = gateway
        self.session = session
        self.record = record
        self.task = task
        self.ctx = ctx
        self.is_async = getattr(task, "deliveryMethod", "sync") == "async"
        self.webhook: str | None = getattr(task, "webhookURL", None)
        self.outbox = _Outbox(session)
        self.streamed: list[Any] = []
        self.end: jobs.Finished | jobs.Failed | None = None
        self._last_training_status: str | None = None

    # ---- events (on the loop, in order) ---------------------------------------------

    def sink(self, event: jobs.Event) -> None:
        record, task = self.record, self.task
        if isinstance(event, jobs.Started):
            record.start(event.at)
        elif isinstance(event, jobs.Step):
            record.progress = min(1.0, event.step / max(1, event.steps))
            if isinstance(task, ImageInference) and task.includeProgress:
                progress_item = ProgressItem(
                    taskType="imageInference", taskUUID=task.taskUUID, status="processing",
                    progress=round(record.progress, 4), step=event.step, steps=event.steps,
                    previewImages=event.previews if event.previews is not None else msgspec.UNSET,
                )
                self.outbox.push(encode_data([progress_item]))  # live only: never recorded for getResponse
        elif isinstance(event, jobs.UploadPhase):
            assert isinstance(task, ModelUpload)
            record.start()  # an upload's work begins with its first phase (it has no device queue)
            phase = ModelUploadStatus(taskType="modelUpload", taskUUID=task.taskUUID, status=event.status, message=event.message,
                                      air=task.air)
            self.streamed.append(phase)
            record.items = list(self.streamed)
            log.info("modelUpload %s %s: %s (air=%s, team=%s)", task.taskUUID, event.status, event.message, task.air, self.session.team)
            if not self.is_async:
                self.outbox.push(encode_data([phase]))
            if self.webhook:
                self._hook(encode_data([phase])[0])
        elif isinstance(event, jobs.TrainingProgress):
            record.start()  # a training's first status comes when it leaves the line for a slot
            status = TrainingStatus(
                taskType="training", taskUUID=task.taskUUID, status="processing", trainingStatus=event.status, message=event.message,
                progress=event.progress, step=event.step, steps=event.steps, loss=event.loss,
            )
            record.items = [status]  # the latest status only: a long job's progress never piles up
            self.outbox.push(encode_data([status]))
            if self._last_training_status != event.status:  # a line per status change, never per step
                log.info("training %s %s: %s (team=%s)", task.taskUUID, event.status, event.message, self.session.team)
            if self.webhook and self._last_training_status != event.status:  # one POST per status change, in order
                self._hook(encode_data([status])[0])
            self._last_training_status = event.status
        else:
            if isinstance(event, jobs.Finished) and event.uploaded is not None:
                metrics.model_stored(event.uploaded.size_bytes)
            self.end = event

    # ---- the whole task ---------------------------------------------------------------

    async def run(self, job: jobs.Job, prepare: Callable[[jobs.Job], jobs.Job] | None = None) -> None:
        """Run ``job`` (``prepare``: a last step on the loop that may refuse it), then deliver its outcome."""
        if isinstance(job, jobs.TrainingJob):
            self.webhook = job.plan.webhook
        finished = await self._outcome(self._work(job, prepare))
        if finished is None:
            return
        items = self._items(finished)
        record = self.record
        record.succeed(self.streamed + items)
        self.gateway.tasks.finish(record)
        sent = 0
        if items and (not self.is_async or isinstance(self.task, Training)):
            frames = encode_data(items)
            sent = sum(len(frame) for frame in frames)
            await self.outbox.send(frames)
        self._log("success", images=len(finished.images), sent=sent)
        if self.webhook:
            for result in items:
                self._hook(encode_data([result])[0])

    async def _work(self, job: jobs.Job, prepare: Callable[[jobs.Job], jobs.Job] | None) -> jobs.Finished:
        if prepare is not None:
            job = prepare(job)
        await self.gateway.engine.run(job, self.sink, self.ctx.own_hosts)
        await self.outbox.flush()  # every progress item and phase goes out before the results
        end = self.end
        if isinstance(end, jobs.Failed):
            raise JobFailed(end.code, end.message, parameter=end.parameter, retryable=end.retryable, **end.extra)
        assert isinstance(end, jobs.Finished), "a job ends with Finished or Failed"
        return end

    def _items(self, finished: jobs.Finished) -> list[Any]:
        task, ctx = self.task, self.ctx
        if isinstance(task, ImageInference):
            return [self._image_item(task, image) for image in finished.images]
        if isinstance(task, MediaStorage):
            (image,) = finished.images
            return [MediaStorageResult(taskType="mediaStorage", taskUUID=task.taskUUID, mediaUUID=image.image_uuid,
                                       mediaURL=f"{ctx.base_url}/images/{image.file_name}")]
        if isinstance(task, ImageUpload):
            (image,) = finished.images
            return [ImageUploadResult(taskType="imageUpload", taskUUID=task.taskUUID, imageUUID=image.image_uuid,
                                      imageURL=f"{ctx.base_url}/images/{image.file_name}")]
        if isinstance(task, ModelSearch):
            assert finished.search is not None
            return [finished.search]
        if isinstance(task, (ImageControlNetPreProcess, ControlNetPreprocess)):
            return [self._preprocess_item(task, finished)]
        if isinstance(task, (ImageUpscale, Upscale)):
            (image,) = finished.images
            assert finished.input_image_uuid is not None
            suffix, value = self._image_field(task.outputType, image)
            fields: dict[str, Any] = {f"image{suffix}": value}
            if task.includeCost:
                fields["cost"] = 0.0
            return [UpscaleResult(taskType=task.__struct_config__.tag, taskUUID=task.taskUUID,  # type: ignore[arg-type]
                                  imageUUID=image.image_uuid, inputImageUUID=finished.input_image_uuid, **fields)]
        if isinstance(task, Training):
            outcome = finished.trained
            assert outcome is not None
            return [TrainingStatus(
                taskType="training", taskUUID=task.taskUUID, status="success", trainingStatus="model_ready",
                message="The trained model is ready for use.", progress=1.0, step=outcome.steps, steps=outcome.steps,
                loss=outcome.loss, air=outcome.air,
                outputs={"air": outcome.air, "architecture": outcome.architecture, "steps": outcome.steps, "loss": outcome.loss,
                         "images": outcome.images, "seconds": round(outcome.seconds, 3)},
                cost=training_cost(outcome.steps) if task.includeCost else None,
            )]
        return []  # modelUpload: its phases were the items

    def _preprocess_item(self, task: ImageControlNetPreProcess | ControlNetPreprocess, finished: jobs.Finished) -> PreprocessResult:
        (image,) = finished.images
        assert finished.input_image_uuid is not None
        suffix, value = self._image_field(task.outputType, image)
        extra: dict[str, Any] = {f"guideImage{suffix}": value}
        if task.new_shape:  # the newer task shape: also the generic image fields
            extra.update({"imageUUID": image.image_uuid, f"image{suffix}": value})
        if task.includeCost:
            extra["cost"] = 0.0
        return PreprocessResult(taskType=task.__struct_config__.tag, taskUUID=task.taskUUID,  # type: ignore[arg-type]
                                guideImageUUID=image.image_uuid, inputImageUUID=finished.input_image_uuid, **extra)

    def _image_field(self, output_type: str, image: jobs.GeneratedImage) -> tuple[str, str]:
        """(field suffix, value) of one image in ``output_type``: ``URL``, ``Base64Data`` or ``DataURI``."""
        if output_type == "URL":
            return "URL", f"{self.ctx.base_url}/images/{image.file_name}"
        encoded = base64.b64encode(image.data).decode("ascii")
        return ("Base64Data", encoded) if output_type == "base64Data" else ("DataURI", f"data:{image.mime};base64,{encoded}")

    def _image_item(self, task: ImageInference, image: jobs.GeneratedImage) -> ImageResult:
        fields: dict[str, Any] = {}
        encoded: str | None = None
        for kind in task.output_types:
            if kind == "URL":
                fields["imageURL"] = f"{self.ctx.base_url}/images/{image.file_name}"
                continue
            encoded = encoded or base64.b64encode(image.data).decode("ascii")
            if kind == "base64Data":
                fields["imageBase64Data"] = encoded
            else:
                fields["imageDataURI"] = f"data:{image.mime};base64,{encoded}"
        if task.includeCost:
            fields["cost"] = image.cost
        return ImageResult(taskType="imageInference", taskUUID=task.taskUUID, imageUUID=image.image_uuid, seed=image.seed,
                           NSFWContent=False, **fields)

    # ---- endings ------------------------------------------------------------------------

    async def _outcome(self, work: Awaitable[jobs.Finished]) -> jobs.Finished | None:
        """The result of the task's work, or None once a failure was recorded and reported.

        A cancelled job (server stopping) is recorded as interrupted.  The
        session's in-flight count drops whatever happens, and before the
        failure is reported: a client that hears of it may send its next task
        at once, and that task must find the slot free.
        """
        session = self.session
        try:
            result = await work
        except asyncio.CancelledError:
            session.in_flight -= 1
            self.gateway.interrupted(self.record)
            self._log(ErrorCode.TASK_INTERRUPTED)
            raise
        except BaseException as exc:
            session.in_flight -= 1
            await self._failed(exc)
            return None
        session.in_flight -= 1
        return result

    def _log(self, outcome: str, images: int = 0, sent: int = 0) -> None:
        record = self.record
        task_finished(record.task_type, record.task_uuid, self.session.team, getattr(self.task, "model", None)
                      or getattr(self.task, "air", None), outcome, record.created_at, record.started_at, images, sent)

    async def _failed(self, exc: BaseException) -> None:
        """The task ended in an error: record it (unless retryable), tell the session and the webhook."""
        record = self.record
        error = to_wire_error(exc, record.task_type, record.task_uuid)
        self._log(error.code)
        if isinstance(exc, QueueFull) or (isinstance(exc, EngineError) and getattr(exc, "retryable", False)):
            self.gateway.tasks.release(record)
        else:
            record.fail(error)
            self.gateway.tasks.finish(record)
        self.gateway.counters["errors"] += 1
        await self.session.emit(encode_errors([error]))
        if self.webhook:
            self._hook(encode_errors([error])[0])

    def _hook(self, frame: bytes) -> None:
        """POST one frame to the task's webhook, in order with the task's other posts."""
        self.gateway.webhooks.post(self.webhook or "", frame, sequence=f"{self.session.team}\x00{self.record.task_uuid}")


def interrupted_error(record: TaskRecord) -> Any:
    return wire_error(ErrorCode.TASK_INTERRUPTED, "the server stopped before this task finished; send it again with a new taskUUID",
                      task_type=record.task_type, task_uuid=record.task_uuid)
