"""Upscaling: ``imageUpscale`` (runware 0.5's name) and ``upscale`` (the 1.8 SDK's), one shape for both.

The 0.5 SDK sends the image as ``inputImage`` or ``inputs: {image}`` (after
uploading it), ``upscaleFactor``, and optionally ``model``, ``settings``,
``outputType``, ``outputFormat``, ``includeCost``, ``webhookURL`` and
``deliveryMethod``; it reads ``imageUUID``, ``inputImageUUID`` and the image
field of the output type.  wisp's upscaler is built in and says what it is:
``wisp:lanczos-upscaler@1`` (Lanczos resampling, no model: sharper than
bicubic, invents no detail).  ``targetMegapixels`` and upscaler models are
refused naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.common import Keyword, OutputQuality, Task, TaskUUID, URLString, webhook_url_error
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.inference import ImageRef, OutputFormat, OutputType

LANCZOS_UPSCALER = "wisp:lanczos-upscaler@1"
UpscaleFactor = Annotated[float, msgspec.Meta(ge=1, le=4)]


class UpscaleInputs(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageRef


class UpscaleSettings(msgspec.Struct, forbid_unknown_fields=True):
    upscaleFactor: UpscaleFactor | None = None


class _Upscale(Task):
    taskUUID: TaskUUID
    inputImage: ImageRef | None = None
    inputs: UpscaleInputs | None = None
    upscaleFactor: UpscaleFactor | None = None
    """Default 2; any factor from 1 to 4 (Runware's models take 2, 3 or 4)."""
    targetMegapixels: int | None = None
    model: Keyword | None = None
    settings: UpscaleSettings | None = None
    outputType: OutputType = "URL"
    outputFormat: OutputFormat = "PNG"
    outputQuality: OutputQuality = 95
    includeCost: bool = False
    webhookURL: URLString | None = None
    deliveryMethod: Literal["sync", "async"] = "sync"

    @property
    def image(self) -> str:
        return self.inputImage if self.inputImage is not None else (self.inputs.image if self.inputs is not None else "")

    @property
    def factor(self) -> float:
        if self.upscaleFactor is not None:
            return self.upscaleFactor
        if self.settings is not None and self.settings.upscaleFactor is not None:
            return self.settings.upscaleFactor
        return 2.0

    def check(self) -> WireError | None:
        if (self.inputImage is None) == (self.inputs is None):
            return wire_error(ErrorCode.MISSING_PARAMETER if self.inputImage is None else ErrorCode.INVALID_PARAMETER,
                              "give the image as inputImage or as inputs.image (one of them)", parameter="inputImage")
        if self.targetMegapixels is not None:
            return wire_error(ErrorCode.UNSUPPORTED_PARAMETER, "wisp upscales by upscaleFactor; targetMegapixels is not offered",
                              parameter="targetMegapixels")
        if self.model is not None and self.model != LANCZOS_UPSCALER:
            return wire_error(ErrorCode.MODEL_NOT_FOUND, f"no upscaler {self.model!r} on this server; it has {LANCZOS_UPSCALER}",
                              parameter="model")
        return webhook_url_error(self.webhookURL, "webhookURL")


class ImageUpscale(_Upscale, tag="imageUpscale"):
    pass


class Upscale(_Upscale, tag="upscale"):
    pass


class UpscaleResult(msgspec.Struct, omit_defaults=True):
    taskType: str
    taskUUID: str
    imageUUID: str
    inputImageUUID: str
    imageURL: str | msgspec.UnsetType = msgspec.UNSET
    imageBase64Data: str | msgspec.UnsetType = msgspec.UNSET
    imageDataURI: str | msgspec.UnsetType = msgspec.UNSET
    cost: float | msgspec.UnsetType = msgspec.UNSET
