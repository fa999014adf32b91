"""``mediaStorage`` (the successor of imageUpload) and ``accountManagement``: the newer SDKs' account-side tasks.

``mediaStorage`` with ``operation: "upload"`` stores ``media`` (a data URI,
bare base64 or a URL — what runware 0.5.24's ``uploadMedia`` sends) and
answers its ``mediaUUID`` (also an imageUUID: it works wherever an image is
taken) and ``mediaURL``; ``operation: "delete"`` deletes one of the team's own
media by ``mediaUUID``.  wisp stores images only: other media are refused as
``invalidImage``.

``accountManagement`` with ``operation: "getDetails"`` answers the key's team,
its sources, its keys by prefix (never a key), and what it stores;
``"getUsageActivity"`` answers the team's tasks per type and outcome and its
images from wisp's own task journal (``days``, default 30).  Runware's
documents do not publish these two answers' fields: the shapes are wisp's,
documented in the README.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.common import Task, TaskUUID, UUID_PATTERN
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.inference import ImageRef

MediaUUID = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]


class MediaStorage(Task, tag="mediaStorage"):
    taskUUID: TaskUUID
    operation: Literal["upload", "delete"] = "upload"
    media: ImageRef | None = None
    mediaUUID: MediaUUID | None = None

    def check(self) -> WireError | None:
        if self.operation == "upload" and self.media is None:
            return wire_error(ErrorCode.MISSING_PARAMETER, "an upload needs media (a data URI, base64 or a URL)", parameter="media")
        if self.operation == "delete" and self.mediaUUID is None:
            return wire_error(ErrorCode.MISSING_PARAMETER, "a delete needs the mediaUUID to delete", parameter="mediaUUID")
        return None


class MediaStorageResult(msgspec.Struct, kw_only=True):
    taskType: str
    taskUUID: str
    mediaUUID: str
    operation: str = "upload"
    status: str = "success"
    mediaURL: str | msgspec.UnsetType = msgspec.UNSET
    """Where the stored media is served (uploads)."""


class AccountManagement(Task, tag="accountManagement"):
    taskUUID: TaskUUID
    operation: Literal["getDetails", "getUsageActivity"] = "getDetails"
    days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 30
