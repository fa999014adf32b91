"""modelUpload and modelSearch: the model library's wire types.

Field names, ranges and defaults follow Runware's model upload document
(``shared/seeds/runware-model-upload.txt``).  The 0.5 SDK sends
``defaultGuidanceScale``, read here as ``defaultCFG``, and sends ``null`` for
fields its caller left out, so every optional field accepts ``null``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from protocol.common import Keyword, NegativePrompt, Steps, Task, TaskUUID, URLString, webhook_url_error
from protocol.errors import ErrorCode, WireError, wire_error

AIR_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}:[A-Za-z0-9][A-Za-z0-9_-]{0,63}@[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
"""``source:id@version``; no slashes, dots only inside the version, so an AIR never names a path."""
_AIR_RE = re.compile(AIR_PATTERN)

AIR = Annotated[str, msgspec.Meta(pattern=AIR_PATTERN, description="source:id@version")]
Category = Literal["checkpoint", "lora", "lycoris", "controlnet", "vae", "embeddings", "upscaler"]
ModelType = Literal["base", "inpainting", "refiner", "positive", "negative"]
ModelFormat = Literal["safetensors", "ckpt", "pt", "bin"]

ARCHITECTURES: tuple[str, ...] = (
    "flux1s", "flux1d", "fluxkontextdev", "hidreamdev", "hidreamfull", "qwen_image",
    "sd1x", "sdhyper", "sd1xlcm", "sdxl", "sdxllcm", "sdxldistilled", "sdxlhyper",
    "sdxllightning", "sdxlturbo", "sd3", "pony", "illustrious",
)
UPSCALER_ARCHITECTURE = "upscaler"
"""The one ``architecture`` of category ``upscaler`` (wisp detects the network itself: ESRGAN, SwinIR, …), and only of it."""
CONDITIONINGS: tuple[str, ...] = (
    "blur", "canny", "depth", "gray", "hed", "inpaint", "inpaintdepth", "lineart", "lowquality",
    "normal", "openmlsd", "openpose", "outfit", "pix2pix", "qrcode", "scrible", "seg", "shuffle",
    "sketch", "softedge", "tile",
)

DefaultCFG = Annotated[float, msgspec.Meta(ge=0, le=30)]
DefaultStrength = Annotated[float, msgspec.Meta(ge=0, le=1)]
DefaultWeight = Annotated[float, msgspec.Meta(ge=-4, le=4)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
Description = Annotated[str, msgspec.Meta(min_length=2, max_length=40000)]
Comment = Annotated[str, msgspec.Meta(min_length=2, max_length=1000)]
TriggerWords = NegativePrompt | Annotated[list[Tag], msgspec.Meta(max_length=100)]
"""One string of up to 3000 characters, or up to 100 words of up to 400."""
Retry = Annotated[int, msgspec.Meta(ge=0, le=10)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


def is_air(value: str) -> bool:
    return bool(_AIR_RE.match(value))


def split_air(air: str) -> tuple[str, str, str]:
    """``source:id@version`` → (source, id, version); the AIR must be valid."""
    source, rest = air.split(":", 1)
    model_id, version = rest.split("@", 1)
    return source, model_id, version


class ModelUpload(Task, tag="modelUpload"):
    """Register a model file fetched from ``downloadURL`` under ``air``."""

    taskUUID: TaskUUID
    air: AIR
    category: Category
    architecture: Keyword
    downloadURL: URLString
    uniqueIdentifier: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    name: ShortText
    version: ShortText
    format: ModelFormat = "safetensors"
    type: ModelType | None = None
    conditioning: Keyword | None = None
    defaultScheduler: Keyword | None = None
    defaultSteps: Steps | None = None
    defaultCFG: DefaultCFG | None = None
    defaultGuidanceScale: DefaultCFG | None = None
    defaultStrength: DefaultStrength | None = None
    defaultWeight: DefaultWeight | None = None
    private: bool | None = None
    heroImageURL: URLString | None = None
    tags: list[Tag] | None = None
    positiveTriggerWords: TriggerWords | None = None
    negativeTriggerWords: TriggerWords | None = None
    shortDescription: Description | None = None
    comment: Comment | None = None
    webhookURL: URLString | None = None
    deliveryMethod: Literal["sync", "async"] = "sync"
    retry: Retry | None = None

    @property
    def cfg(self) -> float | None:
        return self.defaultCFG if self.defaultCFG is not None else self.defaultGuidanceScale

    @property
    def is_private(self) -> bool:
        return True if self.private is None else self.private

    def check(self) -> WireError | None:
        def bad(parameter: str, message: str, code: str = ErrorCode.INVALID_PARAMETER, **extra: Any) -> WireError:
            return wire_error(code, message, parameter=parameter, **extra)

        if self.category == "upscaler" or self.architecture == UPSCALER_ARCHITECTURE:
            if self.category != "upscaler":
                return bad("architecture", f"architecture {UPSCALER_ARCHITECTURE} applies only to category upscaler")
            if self.architecture != UPSCALER_ARCHITECTURE:
                return bad("architecture", f"category upscaler takes architecture {UPSCALER_ARCHITECTURE!r}; the network "
                                           "(ESRGAN, SwinIR, …) is detected from the file")
        elif self.architecture not in ARCHITECTURES:
            return bad("architecture", f"unknown architecture {self.architecture[:40]!r}; known: {', '.join(ARCHITECTURES)}")
        if self.category in ("checkpoint", "embeddings") and self.type is None:
            return bad("type", f"type is required for category {self.category}", ErrorCode.MISSING_PARAMETER)
        if self.type is not None:
            allowed = {"checkpoint": ("base", "inpainting", "refiner"), "embeddings": ("positive", "negative")}.get(self.category, ())
            if self.type not in allowed:
                return bad("type", f"type {self.type} does not apply to category {self.category}")
        if self.category == "controlnet":
            if self.conditioning is None:
                return bad("conditioning", "conditioning is required for a controlnet", ErrorCode.MISSING_PARAMETER)
            if self.conditioning not in CONDITIONINGS:
                return bad("conditioning", f"unknown conditioning; known: {', '.join(CONDITIONINGS)}")
        elif self.conditioning is not None:
            return bad("conditioning", "conditioning applies only to category controlnet")
        if self.format != "safetensors":
            return bad(
                "format",
                f"format {self.format} is refused: pickle-based files can run code when loaded; convert to safetensors",
                ErrorCode.UNSUPPORTED_PARAMETER,
            )
        checkpoint_only = ("defaultScheduler", "defaultSteps", "defaultCFG", "defaultGuidanceScale", "defaultStrength")
        if self.category != "checkpoint":
            for name in checkpoint_only:
                if getattr(self, name) is not None:
                    return bad(name, f"{name} applies only to checkpoints")
        hook = webhook_url_error(self.webhookURL, "webhookURL")
        if hook is not None:
            return hook
        if self.defaultWeight is not None and self.category not in ("lora", "lycoris"):
            return bad("defaultWeight", "defaultWeight applies only to lora and lycoris")
        if self.tags is not None:
            if len(self.tags) > 100:
                return bad("tags", "at most 100 tags", max=100)
            if len(set(self.tags)) != len(self.tags):
                return bad("tags", "tags must be unique")
        return None


class ModelUploadStatus(msgspec.Struct):
    """One phase of an upload: validated → downloaded → optimized → stored → ready."""

    taskType: str
    taskUUID: str
    status: str
    message: str
    air: str


class ModelDelete(Task, tag="modelDelete"):
    """Delete a model of the caller's team (a wisp extension; Runware has no such task).

    The AIR stops resolving at once; tasks already running with it finish,
    and its file goes once no model refers to those bytes and nothing is
    using them.
    """

    taskUUID: TaskUUID
    air: AIR


class ModelDeleteResult(msgspec.Struct):
    taskType: str
    taskUUID: str
    air: str
    status: str = "deleted"


class ModelSearch(Task, tag="modelSearch"):
    taskUUID: TaskUUID
    search: Annotated[str, msgspec.Meta(max_length=400)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=100)] | None = None
    category: Category | None = None
    type: ModelType | None = None
    architecture: Keyword | None = None
    conditioning: Keyword | None = None
    visibility: Literal["public", "private", "all"] = "all"
    limit: Limit = 20
    offset: Offset = 0
    customTaskUUID: Keyword | None = None
    retry: int | None = None


class ModelInfo(msgspec.Struct):
    """One modelSearch result; the 0.5 SDK requires every field up to ``comment``."""

    air: str
    name: str
    version: str
    category: str
    architecture: str
    tags: list[str]
    heroImage: str
    private: bool
    comment: str
    type: str | None = None
    conditioning: str | None = None
    shortDescription: str | None = None
    positiveTriggerWords: str | None = None
    negativeTriggerWords: str | None = None
    defaultScheduler: str | None = None
    defaultSteps: int | None = None
    defaultCFG: float | None = None
    defaultStrength: float | None = None
    defaultWeight: float | None = None
    sizeBytes: int | None = None


class ModelSearchResult(msgspec.Struct):
    taskType: str
    taskUUID: str
    totalResults: int
    results: list[ModelInfo]


class EncodedModelSearchResult(msgspec.Struct, gc=False):
    """:class:`ModelSearchResult` with its ``results`` already JSON: the same fields in the same order, so it
    encodes to the same bytes.  A server answering the same search many times encodes the results once, and
    every answer shares those bytes (``gc=False``: it holds only strings, an int and bytes)."""

    taskType: str
    taskUUID: str
    totalResults: int
    results: msgspec.Raw
