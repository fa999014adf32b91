"""What every image-to-image utility task shares (ControlNet preprocessing, upscaling): one input image, one output.

The input comes as ``inputImage`` (the older shape) or ``inputs: {image}``
(the newer one), never both; the output as ``outputType``/``outputFormat``/
``outputQuality``, with ``includeCost``.
"""

from __future__ import annotations

import msgspec

from protocol.common import OutputQuality, Task, TaskUUID
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.inference import ImageRef, OutputFormat, OutputType


class ImageInputs(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageRef


class ImageToImageTask(Task):
    taskUUID: TaskUUID
    inputImage: ImageRef | None = None
    inputs: ImageInputs | None = None
    outputType: OutputType = "URL"
    outputFormat: OutputFormat = "PNG"
    outputQuality: OutputQuality = 95
    includeCost: bool = False

    @property
    def image(self) -> str:
        """The input image's reference, whichever shape carried it."""
        return self.inputImage if self.inputImage is not None else (self.inputs.image if self.inputs is not None else "")

    def input_error(self) -> WireError | None:
        """The error for no input image, or for one given both ways."""
        if (self.inputImage is None) == (self.inputs is None):
            return wire_error(ErrorCode.MISSING_PARAMETER if self.inputImage is None else ErrorCode.INVALID_PARAMETER,
                              "give the image as inputImage or as inputs.image (one of them)", parameter="inputImage")
        return None
