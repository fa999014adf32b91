"""Session-level tasks: authentication, ping and the two look-ups by taskUUID."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from protocol.common import LenientTask, SessionUUID, Task, TaskUUID


class Authentication(LenientTask, tag="authentication"):
    """First message of every socket; ``connectionSessionUUID`` resumes a session."""

    apiKey: Annotated[str, msgspec.Meta(max_length=1024)] | msgspec.UnsetType = msgspec.UNSET
    connectionSessionUUID: SessionUUID | None = None


class Ping(LenientTask, tag="ping"):
    """Keep-alive; answered with ``pong`` ahead of any queued work."""

    ping: bool = True
    taskUUID: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class GetResponse(Task, tag="getResponse"):
    """Poll the results of an earlier task (async delivery, or after a reconnect)."""

    taskUUID: TaskUUID
    numberResults: int | None = None


class GetTaskDetails(Task, tag="getTaskDetails"):
    """Ask for an earlier task's request and response."""

    taskUUID: TaskUUID


class AuthenticationResult(msgspec.Struct):
    """The one data item without a taskUUID (the JS SDK matches on taskType)."""

    connectionSessionUUID: str
    taskType: str = "authentication"


class Pong(msgspec.Struct, omit_defaults=True):
    """``{"taskType":"ping","pong":true}``, with the ping's taskUUID when it had one."""

    taskType: str
    pong: bool
    taskUUID: str | msgspec.UnsetType = msgspec.UNSET


class TaskDetailsResult(msgspec.Struct):
    taskUUID: str
    request: list[dict[str, Any]]
    response: list[dict[str, Any]]
    taskType: str = "getTaskDetails"


class ProcessingItem(msgspec.Struct):
    """What getResponse answers for a task that is still running."""

    taskType: str
    taskUUID: str
    status: str = "processing"
