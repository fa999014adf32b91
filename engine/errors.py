"""The engine's exception tree.

``EngineError`` is the root; each subclass carries the wire ``code`` it maps
to and, where one input is at fault, the request ``parameter``.  The server
turns these into Runware errors in exactly one place (``server.errors``), and
a job's failure travels as a :class:`engine.jobs.Failed` event with the same
code; any other exception is an internal error whose text never reaches a
client (logged, ``internalError``).

Every error, where it lives, and its code:

====================================================  =========================
``ModelNotFound`` (here)                               ``modelNotFound``
``InvalidInput`` (here)                                ``invalidParameter``
``InvalidImage`` (here)                                ``invalidImage``
``ImageNotFound`` (here)                               ``imageNotFound``
``URLNotAllowed`` (here)                               ``urlNotAllowed``
``DownloadFailed`` (here)                              ``downloadFailed``
``QueueFull`` (here; retryable, the taskUUID is freed)  ``queueFull``
``EngineStopped`` (here), ``GenerationStopped``        ``internalError`` (recorded
(engine.pipelines.stable_diffusion.pipeline)           ``taskInterrupted`` by the server)
``JobCancelled`` (here), ``TrainingCancelled``         ``taskCancelled``
(engine.training.runner)
``WorkLimitExceeded`` (here)                           ``workLimitExceeded``
``JobFailed`` (here: a Failed event raised again)      the event's code
``ModelLoadError`` (engine.safetensors_header),        ``modelLoadFailed``
``EmbeddingLoadError`` (engine.embeddings)
``LoraLoadError`` (engine.lora)                        ``loraLoadFailed``
``InvalidModelFile`` (engine.upload.safetensors_check)  ``invalidModelFile``
``UploadRefused`` (engine.upload.ingest)               ``invalidParameter``
``SourceNotAllowed`` (engine.upload.ingest),           ``sourceNotAllowed``
``ReservedSource`` (engine.registry.models)
``QuotaExceeded`` (engine.registry.team_settings)      ``quotaExceeded``
``TrainingFailed`` (engine.training.runner)            ``trainingFailed``
``UploadSourceGone`` (server.gateway)                  ``downloadFailed``
``PreprocessorUnavailable`` (engine.preprocessors)      ``unsupportedParameter``
``UpscalerUnavailable`` (engine.upscalers)              ``unsupportedParameter``
``NotYourModel`` (engine.registry.models)              ``sourceNotAllowed``
``ModelUnavailable`` (here: a fleet replica could      ``modelLoadFailed``
not fetch a model's bytes from the origin)
``ReplicaLost`` (here: the fleet replica running the   ``taskInterrupted``
job died, and it could not be run again)
``FleetUnavailable`` (here: no replica answers)         ``internalError``
====================================================  =========================
"""

from __future__ import annotations

from typing import Any

from protocol.errors import ErrorCode


class EngineError(Exception):
    code = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, parameter: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.extra = extra


class ModelNotFound(EngineError):
    """No model with that AIR is visible to the caller (missing and private look alike)."""

    code = ErrorCode.MODEL_NOT_FOUND


class InvalidInput(EngineError):
    code = ErrorCode.INVALID_PARAMETER


class InvalidImage(EngineError):
    code = ErrorCode.INVALID_IMAGE


class ImageNotFound(EngineError):
    code = ErrorCode.IMAGE_NOT_FOUND


class URLNotAllowed(EngineError):
    code = ErrorCode.URL_NOT_ALLOWED


class DownloadFailed(EngineError):
    code = ErrorCode.DOWNLOAD_FAILED


class QueueFull(EngineError):
    """The work queue is at its bound; the client may retry later."""

    code = ErrorCode.QUEUE_FULL


class EngineStopped(EngineError):
    code = ErrorCode.INTERNAL_ERROR


class JobCancelled(EngineError):
    """A queued or running job withdrawn by ``taskCancel`` (a running one stops between denoising steps)."""

    code = ErrorCode.TASK_CANCELLED


class JobFailed(EngineError):
    """A job's :class:`~engine.jobs.Failed` event raised again where a caller wants an exception (same code and text)."""

    def __init__(self, code: str, message: str, *, parameter: str | None = None, retryable: bool = False, **extra: Any) -> None:
        super().__init__(message, parameter=parameter, **extra)
        self.code = code
        self.retryable = retryable


class WorkLimitExceeded(EngineError):
    """A request asks for more work (megapixels × steps × images) than the server's per-request limit."""

    code = ErrorCode.WORK_LIMIT_EXCEEDED


class ModelUnavailable(EngineError):
    """A fleet replica could not fetch a model file by its hash from the origin (unreachable, refused, wrong bytes)."""

    code = ErrorCode.MODEL_LOAD_FAILED


class ReplicaLost(EngineError):
    """The fleet replica running a job died before it answered, and the job could not be run again elsewhere."""

    code = ErrorCode.TASK_INTERRUPTED


class FleetUnavailable(EngineError):
    """The Ray cluster or its engine replicas do not answer (the front end keeps serving everything else)."""

    code = ErrorCode.INTERNAL_ERROR
