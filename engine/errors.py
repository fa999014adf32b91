"""The engine's exception tree.

``EngineError`` is the root; each subclass carries the wire ``code`` it maps
to and, where one input is at fault, the request ``parameter``.  The server
turns these into Runware errors in exactly one place; any other exception is
an internal error whose text never reaches a client.
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


class WorkLimitExceeded(EngineError):
    """A request asks for more work (megapixels × steps × images) than the server's per-request limit."""

    code = ErrorCode.WORK_LIMIT_EXCEEDED
