"""Runware-style errors: the one shape every failure takes on the wire.

Codes are stable strings; README's "Error codes" table documents each one.
The SDKs special-case ``invalidApiKey``, ``missingApiKey``, ``conflictTaskUUID``
and ``unsupportedTaskType``; the rest are wisp's own.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorCode:
    """Namespace of the error codes wisp puts on the wire."""

    INVALID_API_KEY = "invalidApiKey"
    MISSING_API_KEY = "missingApiKey"
    AUTH_RATE_LIMITED = "authRateLimited"
    NOT_AUTHENTICATED = "notAuthenticated"
    INVALID_FRAME = "invalidFrame"
    INVALID_TASK = "invalidTask"
    INVALID_TASK_UUID = "invalidTaskUUID"
    MISSING_PARAMETER = "missingParameter"
    INVALID_PARAMETER = "invalidParameter"
    UNKNOWN_PARAMETER = "unknownParameter"
    UNSUPPORTED_PARAMETER = "unsupportedParameter"
    UNSUPPORTED_TASK_TYPE = "unsupportedTaskType"
    CONFLICT_TASK_UUID = "conflictTaskUUID"
    TASK_NOT_FOUND = "taskNotFound"
    TASK_INTERRUPTED = "taskInterrupted"
    TASK_CANCELLED = "taskCancelled"
    TRAINING_FAILED = "trainingFailed"
    MODEL_NOT_FOUND = "modelNotFound"
    INVALID_IMAGE = "invalidImage"
    INVALID_MODEL_FILE = "invalidModelFile"
    SOURCE_NOT_ALLOWED = "sourceNotAllowed"
    MODEL_LOAD_FAILED = "modelLoadFailed"
    LORA_LOAD_FAILED = "loraLoadFailed"
    IMAGE_NOT_FOUND = "imageNotFound"
    URL_NOT_ALLOWED = "urlNotAllowed"
    DOWNLOAD_FAILED = "downloadFailed"
    FRAME_TOO_LARGE = "frameTooLarge"
    TOO_MANY_TASKS = "tooManyTasks"
    TOO_MANY_TASKS_IN_FLIGHT = "tooManyTasksInFlight"
    QUEUE_FULL = "queueFull"
    RESPONSE_TOO_LARGE = "responseTooLarge"
    WORK_LIMIT_EXCEEDED = "workLimitExceeded"
    TOO_MANY_CONNECTIONS = "tooManyConnections"
    # HTTP-only bodies (server.routes, server.http)
    BAD_REQUEST = "badRequest"
    NOT_FOUND = "notFound"
    FORBIDDEN = "forbidden"
    METHOD_NOT_ALLOWED = "methodNotAllowed"
    PAYLOAD_TOO_LARGE = "payloadTooLarge"
    INSUFFICIENT_STORAGE = "insufficientStorage"
    SESSION_NOT_FOUND = "sessionNotFound"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internalError"


class WireError(msgspec.Struct, omit_defaults=True):
    """One entry of an ``{"errors": [...]}`` frame.

    ``taskUUID`` is set whenever the failing task had one, so the 0.5 and JS
    SDKs can route the error to the waiting call.
    """

    code: str
    message: str
    taskType: str | msgspec.UnsetType = msgspec.UNSET
    taskUUID: str | msgspec.UnsetType = msgspec.UNSET
    parameter: str | msgspec.UnsetType = msgspec.UNSET
    type: str | msgspec.UnsetType = msgspec.UNSET
    documentation: str | msgspec.UnsetType = msgspec.UNSET
    min: Any = msgspec.UNSET
    max: Any = msgspec.UNSET
    default: Any = msgspec.UNSET
    taskIndex: int | msgspec.UnsetType = msgspec.UNSET

    def for_task(self, task_type: str | None, task_uuid: str | None) -> "WireError":
        """Return a copy routed to a task (fields left unset stay unset)."""
        return msgspec.structs.replace(
            self,
            taskType=task_type if task_type is not None else self.taskType,
            taskUUID=task_uuid if task_uuid is not None else self.taskUUID,
        )


def wire_error(
    code: str,
    message: str,
    *,
    task_type: str | None = None,
    task_uuid: str | None = None,
    parameter: str | None = None,
    type_: str | None = None,
    **extra: Any,
) -> WireError:
    """Build a :class:`WireError`, leaving absent fields off the wire."""
    unset = msgspec.UNSET
    return WireError(
        code=code,
        message=message,
        taskType=task_type if task_type is not None else unset,
        taskUUID=task_uuid if task_uuid is not None else unset,
        parameter=parameter if parameter is not None else unset,
        type=type_ if type_ is not None else unset,
        **{k: v for k, v in extra.items() if v is not None},
    )
