"""Shared wire types: the tagged ``Task`` base and named constraint aliases.

Every task struct subclasses :class:`Task`; msgspec reads ``taskType`` as the
tag.  Constraint aliases live here so one range is written once and the
``min``/``max`` of a range error can be read back from the type itself.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from protocol.errors import ErrorCode, WireError, wire_error

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

TaskUUID = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN, description="a UUID chosen by the client")]
SessionUUID = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Dimension = Annotated[int, msgspec.Meta(ge=64, le=2048, multiple_of=8)]
Steps = Annotated[int, msgspec.Meta(ge=1, le=100)]
Guidance = Annotated[float, msgspec.Meta(ge=0, le=50)]
NumberResults = Annotated[int, msgspec.Meta(ge=1, le=20)]
Strength = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
ClipSkip = Annotated[int, msgspec.Meta(ge=0, le=2)]
OutputQuality = Annotated[int, msgspec.Meta(ge=20, le=99)]
LoraWeight = Annotated[float, msgspec.Meta(ge=-4, le=4)]
MaskMargin = Annotated[int, msgspec.Meta(ge=32, le=128)]
Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=3000)]
NegativePrompt = Annotated[str, msgspec.Meta(max_length=3000)]
"""Every prompt-like text (negative prompts, training prompts, trigger words): Runware's 3000 characters."""
ModelAIR = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
URLString = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Keyword = Annotated[str, msgspec.Meta(max_length=100)]
"""A name picked from a list (scheduler, architecture, conditioning, mode): 100 characters."""
MAX_IMAGE_REF_CHARS = 48 * 1024 * 1024
"""An image given inline: base64 of the largest input image (32 MiB) with line breaks and a data-URI header fits."""


def webhook_url_error(url: str | None, parameter: str) -> WireError | None:
    """``urlNotAllowed`` for a webhook that is not an http(s) URL with a host (``""``/None: no webhook).

    Only the form is checked here; where the host resolves to is the server's
    guard's business, also before the ack.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if ok:
        return None
    return wire_error(ErrorCode.URL_NOT_ALLOWED, f"{parameter} must be an http(s) URL with a host", parameter=parameter)


class Task(msgspec.Struct, tag_field="taskType", kw_only=True, forbid_unknown_fields=True):
    """Base of every client task; subclasses set ``tag`` to their taskType."""


class LenientTask(msgspec.Struct, tag_field="taskType", kw_only=True):
    """Base for session-level tasks whose extra fields are harmless and ignored."""
