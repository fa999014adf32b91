"""imageInference and imageUpload: requests, their checks and their result items.

Fields wisp cannot honour yet are declared here so that a request using them
is refused with ``unsupportedParameter`` naming the field, never silently
ignored.  ``ttl`` (at least 60 s) is how long the request's images are kept
(without it, the server's ``WISP_IMAGE_TTL``); ``useCache`` is accepted and
ignored, as it changes nothing a client can observe on a self-hosted server.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec

from protocol.common import (
    Guidance,
    ClipSkip,
    Dimension,
    LoraWeight,
    Keyword,
    MaskMargin,
    MAX_IMAGE_REF_CHARS,
    ModelAIR,
    NegativePrompt,
    NumberResults,
    OutputQuality,
    Prompt,
    Seed,
    Steps,
    Strength,
    Task,
    TaskUUID,
    URLString,
    webhook_url_error,
)
from protocol.errors import ErrorCode, WireError, wire_error

OutputType = Literal["URL", "base64Data", "dataURI"]
OutputFormat = Literal["PNG", "JPG", "WEBP"]
DeliveryMethod = Literal["sync", "async"]
ImageRef = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IMAGE_REF_CHARS, description="imageUUID, URL, data URI or base64")]

# Fields of Runware's imageInference that wisp refuses for now (each would
# change the picture; ignoring one would hand back a wrong result).
UNSUPPORTED_INFERENCE_FIELDS: tuple[str, ...] = (
    "lycoris",
    "instantID",
    "ipAdapters",
    "referenceImages",
    "acePlusPlus",
    "puLID",
    "photoMaker",
    "acceleratorOptions",
    "acceleration",
    "providerSettings",
    "inputs",
    "ultralytics",
    "settings",
    "upscaleFactor",
    "uploadEndpoint",
    "resolution",
)


MAX_STEPS = 100  # the upper bound of protocol.common.Steps


def img2img_steps_error(steps: int, strength: float, *, strength_given: bool, extra_step: bool = False) -> WireError | None:
    """img2img and inpainting denoise for ``int(steps × strength)`` steps (diffusers' rule); zero is refused.

    ``steps`` and ``strength`` are the values the model will run with, its
    defaults included.  ``extra_step``: img2img (not inpainting) with PNDM,
    whose PLMS timesteps hold one more than ``steps``, so a zero count still
    runs one step once ``steps`` ≥ 2.  The error names ``strength`` when the
    request set it (or when no step count could help), else ``steps``, and
    its ``min`` is the least value that runs one step.
    """
    if int(steps * strength) >= 1 or (extra_step and steps >= 2):
        return None
    least_steps = next((n for n in range(steps + 1, MAX_STEPS + 1) if int(n * strength) >= 1), None)
    if strength_given or least_steps is None:
        least = math.ceil(10_000 / steps) / 10_000
        return wire_error(
            ErrorCode.INVALID_PARAMETER,
            f"img2img and inpainting denoise for int(steps × strength) steps, which must be at least 1: "
            f"with steps {steps}, strength must be at least {least}",
            parameter="strength",
            min=least,
        )
    return wire_error(
        ErrorCode.INVALID_PARAMETER,
        f"img2img and inpainting denoise for int(steps × strength) steps, which must be at least 1: "
        f"with strength {strength} (the model's default), steps must be at least {least_steps}",
        parameter="steps",
        min=least_steps,
    )


class LoraRef(msgspec.Struct, forbid_unknown_fields=True):
    model: ModelAIR
    weight: LoraWeight | None = None
    """None: the LoRA's ``defaultWeight`` (1.0 unless its upload said otherwise)."""


class EmbeddingRef(msgspec.Struct, forbid_unknown_fields=True):
    """A textual-inversion embedding (Runware's ``IEmbedding``: ``{model, weight?}``)."""

    model: ModelAIR
    weight: LoraWeight | None = None
    """Scales the embedding's vectors; None: 1.0; 0: the embedding is not applied at all."""


ControlWeight = Annotated[float, msgspec.Meta(ge=0, le=2)]
ControlMode = Literal["balanced", "prompt", "controlnet"]
StepPercentage = Annotated[float, msgspec.Meta(ge=0, le=100)]


class ControlNetRef(msgspec.Struct, forbid_unknown_fields=True):
    """One ``controlNet`` item (Runware's ``IControlNet``; the 0.5 SDK sends every field, ``null`` where unset).

    ``weight`` is diffusers' conditioning scale (default 1; 0 leaves the image
    exactly as without this ControlNet).  The step range is given in steps or
    in percent of the steps, not both; ``controlMode``: ``balanced`` (default),
    ``controlnet`` (diffusers' guess mode: the guide image matters more than the
    prompt), ``prompt`` (the weight is halved: the prompt matters more).
    """

    model: ModelAIR
    guideImage: ImageRef
    weight: ControlWeight | None = None
    startStep: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    endStep: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    startStepPercentage: StepPercentage | None = None
    endStepPercentage: StepPercentage | None = None
    controlMode: ControlMode | None = None
    preprocessor: Keyword | None = None
    """Preprocess the guide image first (the SDK's ``IControlNetCanny``): ``canny`` runs in wisp; those that need an
    annotator model are refused naming it (engine.preprocessors)."""
    lowThresholdCanny: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    highThresholdCanny: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    includeHandsAndFaceOpenPose: bool | None = None


OutpaintMargin = Annotated[int, msgspec.Meta(ge=0, le=2048, multiple_of=8)]


class Outpaint(msgspec.Struct, forbid_unknown_fields=True):
    """Runware's ``outpaint``: pixels added on each side of the seed image, and the seam's blur radius."""

    top: OutpaintMargin = 0
    right: OutpaintMargin = 0
    bottom: OutpaintMargin = 0
    left: OutpaintMargin = 0
    blur: Annotated[int, msgspec.Meta(ge=0, le=32)] = 0


class HiresFix(msgspec.Struct, forbid_unknown_fields=True):
    """``hiresFix`` as an object (``true`` means these defaults): a second img2img pass at ``scale`` × the size."""

    scale: Annotated[float, msgspec.Meta(ge=1, le=4)] = 2.0
    strength: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    steps: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    """The second pass's steps (it denoises ``int(steps × strength)`` of them); None: the request's."""


class Refiner(msgspec.Struct, forbid_unknown_fields=True):
    """Runware's ``refiner`` (SDXL): a second SDXL-family checkpoint finishes the denoising from ``startStep``
    (or ``startStepPercentage`` of the steps; neither: 80 %, the split SDXL's authors suggest)."""

    model: ModelAIR
    startStep: Annotated[int, msgspec.Meta(ge=1, le=99)] | None = None
    startStepPercentage: Annotated[int, msgspec.Meta(ge=1, le=99)] | None = None

    def start_fraction(self, steps: int) -> float:
        """The share of the schedule the base model runs (the refiner does the rest)."""
        if self.startStep is not None:
            return self.startStep / steps
        return (self.startStepPercentage if self.startStepPercentage is not None else 80) / 100


class Safety(msgspec.Struct, forbid_unknown_fields=True):
    checkContent: bool = False
    checkInputs: bool = False
    mode: Keyword | None = None
    tolerance: bool | None = None


class ImageInference(Task, tag="imageInference"):
    """Text-to-image, image-to-image (``seedImage``) and inpainting (``maskImage``)."""

    taskUUID: TaskUUID
    model: ModelAIR
    positivePrompt: Prompt
    negativePrompt: NegativePrompt | None = None
    width: Dimension = 512
    height: Dimension = 512
    steps: Steps | None = None
    CFGScale: Guidance | None = None
    scheduler: Keyword | None = None
    seed: Seed | None = None
    clipSkip: ClipSkip | None = None
    numberResults: NumberResults = 1
    outputType: OutputType | list[OutputType] = "URL"
    outputFormat: OutputFormat = "PNG"
    outputQuality: OutputQuality = 95
    includeCost: bool = False
    includeProgress: bool = False
    """Opt-in: stream ``{status:"processing", progress, step, steps}`` items before the results
    (off by default: the SDKs count every data item of a sync task as an image)."""
    includePreviews: bool = False
    """With ``includeProgress``: each progress item also carries ``previewImages`` (small PNG data URIs)."""
    deliveryMethod: DeliveryMethod = "sync"
    webhookURL: URLString | None = None
    seedImage: ImageRef | None = None
    maskImage: ImageRef | None = None
    strength: Strength | None = None
    maskMargin: MaskMargin | None = None
    lora: list[LoraRef] = []
    embeddings: list[EmbeddingRef] = []
    vae: ModelAIR | None = None
    """An uploaded VAE (category ``vae``) that replaces the model's for this request."""
    checkNSFW: bool = False
    safety: Safety | None = None
    ttl: int | None = None
    useCache: bool | None = None
    embedParameters: bool | None = None
    """wisp extension: whether a PNG carries its generation parameters (A1111's ``parameters`` text chunk: prompt,
    negative prompt, steps, sampler, CFG, seed, size, model, LoRAs); None: the server's setting (on unless
    ``WISP_PNG_PARAMETERS=0``)."""
    promptWeighting: Keyword | None = None
    """``compel`` (compel's syntax: ``(word)1.3``, ``word++``, ``.blend()``, ``.and()``) or ``sdEmbeds`` (A1111's
    ``(word:1.3)``, ``(word)``, ``[word]``), matched case-insensitively; either way prompts over 77 tokens are chunked,
    not cut.  Absent: the prompt is encoded exactly as before."""
    hiresFix: bool | HiresFix | None = None
    """Generate, upscale (Lanczos) and refine by img2img at the larger size; the result is ``scale`` × width × height."""
    outpaint: Outpaint | None = None
    """Extend ``seedImage`` by these margins and paint them; ``width``/``height`` are the extended size."""
    controlNet: Annotated[list[ControlNetRef], msgspec.Meta(max_length=4)] = []
    """ControlNets (at most 4), each with its guide image, weight and step range; see :class:`ControlNetRef`."""
    refiner: Refiner | None = None
    """SDXL only: a second checkpoint takes over the denoising from ``startStep``; see :class:`Refiner`."""
    # Declared only to be refused clearly; see UNSUPPORTED_INFERENCE_FIELDS.
    lycoris: Any = msgspec.UNSET
    instantID: Any = msgspec.UNSET
    ipAdapters: Any = msgspec.UNSET
    referenceImages: Any = msgspec.UNSET
    acePlusPlus: Any = msgspec.UNSET
    puLID: Any = msgspec.UNSET
    photoMaker: Any = msgspec.UNSET
    acceleratorOptions: Any = msgspec.UNSET
    acceleration: Any = msgspec.UNSET
    advancedFeatures: dict[str, Any] | None = None
    """Only ``{hiresFix}`` (how runware 0.5 sends it) is honoured; any other feature is refused naming it."""
    providerSettings: Any = msgspec.UNSET
    inputs: Any = msgspec.UNSET
    ultralytics: Any = msgspec.UNSET
    settings: Any = msgspec.UNSET
    upscaleFactor: Any = msgspec.UNSET
    uploadEndpoint: Any = msgspec.UNSET
    resolution: Any = msgspec.UNSET

    @property
    def hires(self) -> HiresFix | None:
        """The hires fix asked for, top level or under ``advancedFeatures`` (``true``: the defaults)."""
        value: Any = self.hiresFix
        if value is None and self.advancedFeatures:
            value = self.advancedFeatures.get("hiresFix")
        if value is True:
            return HiresFix()
        return value if isinstance(value, HiresFix) else None

    @property
    def output_types(self) -> list[str]:
        """The requested output types, in order, without duplicates."""
        kinds = [self.outputType] if isinstance(self.outputType, str) else self.outputType
        return list(dict.fromkeys(kinds))

    def check(self) -> WireError | None:
        """Cross-field rules msgspec's per-field constraints can't express."""
        for name in UNSUPPORTED_INFERENCE_FIELDS:
            value = getattr(self, name)
            if value is msgspec.UNSET or value is None or value == [] or value == {}:
                continue
            return wire_error(
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"wisp does not support `{name}` yet; remove it from the request",
                parameter=name,
            )
        if self.checkNSFW or (self.safety is not None and (self.safety.checkContent or self.safety.checkInputs)):
            return wire_error(
                ErrorCode.UNSUPPORTED_PARAMETER,
                "wisp has no content checker; NSFW checking cannot be honoured",
                parameter="safety.checkContent" if self.safety is not None else "checkNSFW",
            )
        if isinstance(self.outputType, list) and not self.outputType:
            return wire_error(
                ErrorCode.INVALID_PARAMETER, "outputType must name at least one type", parameter="outputType"
            )
        if self.promptWeighting is not None and self.promptWeighting.lower() not in ("compel", "sdembeds"):
            return wire_error(ErrorCode.INVALID_PARAMETER, "promptWeighting is compel or sdEmbeds", parameter="promptWeighting")
        for key, value in (self.advancedFeatures or {}).items():
            if key != "hiresFix" and value not in (None, False, {}, []):
                return wire_error(ErrorCode.UNSUPPORTED_PARAMETER, f"wisp does not support advancedFeatures.{key}; remove it",
                                  parameter=f"advancedFeatures.{key}")
            if key == "hiresFix" and not isinstance(value, (bool, type(None))):
                return wire_error(ErrorCode.INVALID_PARAMETER, "advancedFeatures.hiresFix is true or false",
                                  parameter="advancedFeatures.hiresFix")
        if self.outpaint is not None:
            edges = (self.outpaint.top, self.outpaint.right, self.outpaint.bottom, self.outpaint.left)
            if self.seedImage is None:
                return wire_error(ErrorCode.MISSING_PARAMETER, "outpaint extends a seedImage", parameter="seedImage")
            if self.maskImage is not None:
                return wire_error(ErrorCode.INVALID_PARAMETER, "outpaint makes its own mask; leave out maskImage", parameter="maskImage")
            if not any(edges):
                return wire_error(ErrorCode.INVALID_PARAMETER, "outpaint needs at least one margin above 0", parameter="outpaint")
        if self.refiner is not None:
            if self.refiner.startStep is not None and self.refiner.startStepPercentage is not None:
                return wire_error(ErrorCode.INVALID_PARAMETER, "give refiner.startStep or refiner.startStepPercentage, not both",
                                  parameter="refiner.startStepPercentage")
            for name, given in (("seedImage", self.seedImage), ("controlNet", self.controlNet), ("hiresFix", self.hires),
                                ("outpaint", self.outpaint)):
                if given:
                    return wire_error(ErrorCode.INVALID_PARAMETER, f"refiner applies to text-to-image requests; remove {name} "
                                      "or the refiner", parameter="refiner")
            if self.steps is not None and self.refiner.startStep is not None and self.refiner.startStep >= self.steps:
                return wire_error(ErrorCode.INVALID_PARAMETER, f"refiner.startStep must be below steps ({self.steps})",
                                  parameter="refiner.startStep", max=self.steps - 1)
        if self.maskImage is not None and self.seedImage is None:
            return wire_error(
                ErrorCode.MISSING_PARAMETER, "maskImage needs a seedImage to inpaint", parameter="seedImage"
            )
        hook = webhook_url_error(self.webhookURL, "webhookURL")
        if hook is not None:
            return hook
        if self.maskMargin is not None and self.maskImage is None:
            return wire_error(
                ErrorCode.INVALID_PARAMETER, "maskMargin applies only with a maskImage", parameter="maskMargin"
            )
        if self.ttl is not None and self.ttl < 60:
            return wire_error(
                ErrorCode.INVALID_PARAMETER, "ttl must be at least 60 seconds", parameter="ttl", min=60
            )
        seen: set[str] = set()
        for index, ref in enumerate(self.lora):
            if ref.model in seen:
                return wire_error(
                    ErrorCode.INVALID_PARAMETER,
                    f"LoRA {ref.model} is listed twice",
                    parameter=f"lora[{index}].model",
                )
            seen.add(ref.model)
        for index, control in enumerate(self.controlNet):
            where = f"controlNet[{index}]"
            for name, value in (("lowThresholdCanny", control.lowThresholdCanny), ("highThresholdCanny", control.highThresholdCanny)):
                if value is not None and control.preprocessor is None:
                    return wire_error(ErrorCode.INVALID_PARAMETER, f"{name} applies only with preprocessor canny",
                                      parameter=f"{where}.{name}")
            low, high = control.lowThresholdCanny, control.highThresholdCanny
            if low is not None and high is not None and low > high:
                return wire_error(ErrorCode.INVALID_PARAMETER, "lowThresholdCanny must not exceed highThresholdCanny",
                                  parameter=f"{where}.lowThresholdCanny")
            if control.startStep is not None and control.startStepPercentage is not None:
                return wire_error(ErrorCode.INVALID_PARAMETER, "give startStep or startStepPercentage, not both",
                                  parameter=f"{where}.startStepPercentage")
            if control.endStep is not None and control.endStepPercentage is not None:
                return wire_error(ErrorCode.INVALID_PARAMETER, "give endStep or endStepPercentage, not both",
                                  parameter=f"{where}.endStepPercentage")
            start = control.startStep if control.startStep is not None else control.startStepPercentage
            end = control.endStep if control.endStep is not None else control.endStepPercentage
            if start is not None and end is not None and (control.startStep is None) == (control.endStep is None) and start >= end:
                return wire_error(ErrorCode.INVALID_PARAMETER, "the ControlNet's start must come before its end",
                                  parameter=f"{where}.endStep" if control.endStep is not None else f"{where}.endStepPercentage")
        seen.clear()
        for index, emb in enumerate(self.embeddings):
            if emb.model in seen:
                return wire_error(
                    ErrorCode.INVALID_PARAMETER,
                    f"embedding {emb.model} is listed twice",
                    parameter=f"embeddings[{index}].model",
                )
            seen.add(emb.model)
        return None


class ImageUpload(Task, tag="imageUpload"):
    """Store an image (data URI, bare base64 or URL) for later use by imageUUID."""

    taskUUID: TaskUUID
    image: ImageRef


class ImageResult(msgspec.Struct, omit_defaults=True):
    """One generated image; exactly one of the three image fields per output type asked."""

    taskType: str
    taskUUID: str
    imageUUID: str
    seed: int
    NSFWContent: bool
    imageURL: str | msgspec.UnsetType = msgspec.UNSET
    imageBase64Data: str | msgspec.UnsetType = msgspec.UNSET
    imageDataURI: str | msgspec.UnsetType = msgspec.UNSET
    cost: float | msgspec.UnsetType = msgspec.UNSET
    status: str | msgspec.UnsetType = msgspec.UNSET


class ProgressItem(msgspec.Struct, omit_defaults=True):
    """One denoising step of an imageInference that asked for ``includeProgress``; never carries an image UUID."""

    taskType: str
    taskUUID: str
    status: str
    progress: float
    step: int
    steps: int
    previewImages: list[str] | msgspec.UnsetType = msgspec.UNSET


class ImageUploadResult(msgspec.Struct, omit_defaults=True):
    taskType: str
    taskUUID: str
    imageUUID: str
    imageURL: str
    status: str | msgspec.UnsetType = msgspec.UNSET


class AsyncAck(msgspec.Struct):
    """The item an async task gets at once; results come through getResponse."""

    taskType: str
    taskUUID: str
