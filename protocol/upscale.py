"""Upscaling: ``imageUpscale`` (runware 0.5's name) and ``upscale`` (the 1.8 SDK's), one shape for both.

The 0.5 SDK sends the image as ``inputImage`` or ``inputs: {image}`` (after
uploading it), ``upscaleFactor``, and optionally ``model``, ``settings``,
``outputType``, ``outputFormat``, ``includeCost``, ``webhookURL`` and
``deliveryMethod``; it reads ``imageUUID``, ``inputImageUUID`` and the image
field of the output type.  Without ``model`` (or with
``wisp:lanczos-upscaler@1``) the built-in upscaler runs: Lanczos resampling,
no model (sharper than bicubic, invents no detail).  Any other ``model`` names
an upscaler model the team uploaded (category ``upscaler``); the engine
resolves it when it prepares the job (``modelNotFound`` / ``invalidParameter``
there, naming ``model``), since that reads the model registry.
``targetMegapixels`` is refused naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.common import Keyword, URLString, webhook_url_error
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.image_task import ImageToImageTask

LANCZOS_UPSCALER = "wisp:lanczos-upscaler@1"
UpscaleFactor = Annotated[float, msgspec.Meta(ge=1, le=4)]


class UpscaleSettings(msgspec.Struct, forbid_unknown_fields=True):
    upscaleFactor: UpscaleFactor | None = None


class _Upscale(ImageToImageTask):
    upscaleFactor: UpscaleFactor | None = None
    """Any factor from 1 to 4 (Runware's models take 2, 3 or 4); default 2, or an upscaler model's own scale."""
    targetMegapixels: int | None = None
    model: Keyword | None = None
    settings: UpscaleSettings | None = None
    webhookURL: URLString | None = None
    deliveryMethod: Literal["sync", "async"] = "sync"

    @property
    def requested_factor(self) -> float | None:
        """``upscaleFactor``, at the top or under ``settings``; None: not given."""
        if self.upscaleFactor is not None:
            return self.upscaleFactor
        if self.settings is not None and self.settings.upscaleFactor is not None:
            return self.settings.upscaleFactor
        return None

    @property
    def factor(self) -> float:
        """The built-in upscaler's factor: as requested, else 2."""
        requested = self.requested_factor
        return 2.0 if requested is None else requested

    @property
    def uses_builtin(self) -> bool:
        """Whether the built-in Lanczos upscaler runs (no ``model``, or its AIR)."""
        return self.model is None or self.model == LANCZOS_UPSCALER

    def check(self) -> WireError | None:
        missing = self.input_error()
        if missing is not None:
            return missing
        if self.targetMegapixels is not None:
            return wire_error(ErrorCode.UNSUPPORTED_PARAMETER, "wisp upscales by upscaleFactor; targetMegapixels is not offered",
                              parameter="targetMegapixels")
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
