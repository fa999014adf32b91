"""ControlNet preprocessing as a task of its own: ``imageControlNetPreProcess`` (runware 0.5's name) and
``controlNetPreprocess`` (the 1.8 SDK's and today's documents').

Both names take Runware's documented flat fields (``inputImage``,
``preProcessorType``, ``width``, ``height``, the Canny thresholds,
``includeHandsAndFaceOpenPose``); ``controlNetPreprocess`` also takes the
newer shape, ``model: "runware:controlnet-preprocess@<name>"`` with
``inputs: {image}`` and ``settings: {lowThresholdCanny, highThresholdCanny}``.
The result names the guide image it made (``guideImageUUID`` and its URL,
base64 or data URI per ``outputType``) and the input's ``inputImageUUID``; a
request in the newer shape also gets them as ``imageUUID``/``imageURL``/….
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from protocol.common import Dimension, Keyword
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.image_task import ImageToImageTask

Threshold = Annotated[int, msgspec.Meta(ge=0, le=255)]
MODEL_PREFIX = "runware:controlnet-preprocess@"
_MODEL_RE = re.compile(r"^runware:controlnet-preprocess@([a-z0-9_]+)$")


class PreprocessSettings(msgspec.Struct, forbid_unknown_fields=True):
    lowThresholdCanny: Threshold | None = None
    highThresholdCanny: Threshold | None = None
    includeHandsAndFaceOpenPose: bool | None = None


class _Preprocess(ImageToImageTask):
    """The fields both task names share; :attr:`image`, :attr:`preprocessor` and the thresholds read either shape."""

    preProcessorType: Keyword | None = None
    model: Keyword | None = None
    settings: PreprocessSettings | None = None
    width: Dimension | None = None
    height: Dimension | None = None
    lowThresholdCanny: Threshold | None = None
    highThresholdCanny: Threshold | None = None
    includeHandsAndFaceOpenPose: bool | None = None
    deliveryMethod: Literal["sync"] = "sync"

    @property
    def preprocessor(self) -> str:
        if self.preProcessorType is not None:
            return self.preProcessorType
        match = _MODEL_RE.match(self.model or "")
        return match.group(1) if match else ""

    @property
    def low(self) -> int | None:
        return self.lowThresholdCanny if self.lowThresholdCanny is not None else (self.settings.lowThresholdCanny if self.settings else None)

    @property
    def high(self) -> int | None:
        return self.highThresholdCanny if self.highThresholdCanny is not None else (self.settings.highThresholdCanny if self.settings else None)

    @property
    def new_shape(self) -> bool:
        """Sent in the newer shape (``model``/``inputs``): the result also carries the generic image fields."""
        return self.model is not None or self.inputs is not None

    def check(self) -> WireError | None:
        missing = self.input_error()
        if missing is not None:
            return missing
        if (self.preProcessorType is None) == (self.model is None):
            return wire_error(ErrorCode.MISSING_PARAMETER if self.model is None else ErrorCode.INVALID_PARAMETER,
                              f"name the preprocessor as preProcessorType or as model {MODEL_PREFIX}<name> (one of them)",
                              parameter="preProcessorType")
        if self.model is not None and not _MODEL_RE.match(self.model):
            return wire_error(ErrorCode.INVALID_PARAMETER, f"model must be {MODEL_PREFIX}<preprocessor>, such as {MODEL_PREFIX}canny",
                              parameter="model")
        if self.low is not None and self.high is not None and self.low > self.high:
            return wire_error(ErrorCode.INVALID_PARAMETER, "lowThresholdCanny must not exceed highThresholdCanny",
                              parameter="lowThresholdCanny")
        return None


class ImageControlNetPreProcess(_Preprocess, tag="imageControlNetPreProcess"):
    pass


class ControlNetPreprocess(_Preprocess, tag="controlNetPreprocess"):
    pass


class PreprocessResult(msgspec.Struct, omit_defaults=True):
    taskType: str
    taskUUID: str
    guideImageUUID: str
    inputImageUUID: str
    guideImageURL: str | msgspec.UnsetType = msgspec.UNSET
    guideImageBase64Data: str | msgspec.UnsetType = msgspec.UNSET
    guideImageDataURI: str | msgspec.UnsetType = msgspec.UNSET
    imageUUID: str | msgspec.UnsetType = msgspec.UNSET
    imageURL: str | msgspec.UnsetType = msgspec.UNSET
    imageBase64Data: str | msgspec.UnsetType = msgspec.UNSET
    imageDataURI: str | msgspec.UnsetType = msgspec.UNSET
    cost: float | msgspec.UnsetType = msgspec.UNSET


PreprocessTask = ImageControlNetPreProcess | ControlNetPreprocess


