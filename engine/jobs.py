"""The engine's interface: prepared jobs in, typed events out.

The server turns each decoded task into a job exactly once
(:meth:`engine.core.Engine.prepare`, off the event loop): the task is
validated against the library, every model reference is resolved to what
names its bytes (AIR → sha256, architecture, the family's defaults applied),
seeds are drawn, the cost is known.  A job is a plain msgspec Struct: no open
files, no locks, no pipelines, no paths — a content hash says which file,
and whoever runs the job maps it to its own copy.  ``msgspec`` encodes it
(JSON or MessagePack) and decodes it back unchanged, so the same job can run
in this process or on a replica across a network.

:meth:`engine.core.Engine.run` takes a job and reports what happens to a
sink, as :data:`Event` values, in order: :class:`Started` when the device
takes it, :class:`Step` after each denoising step (inference with progress),
:class:`UploadPhase` / :class:`TrainingProgress` for long tasks, then exactly
one :class:`Finished` or :class:`Failed` (a wire error code, never a
traceback).  That pair of calls is the only way the server talks to the
engine about work.

Everything here is data: importing this module pulls in msgspec and the
protocol's types, nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import msgspec

from protocol.models import ModelSearch, ModelSearchResult, ModelUpload
from protocol.training import TrainingPlan


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint, resolved: what it is and which bytes (built-in models are named by their build)."""

    air: str
    architecture: str
    builtin: bool
    sha256: str | None = None
    """The stored file's content hash (None for a built-in model)."""
    name: str = ""
    size_bytes: int = 0
    """The stored file's size (0: a built-in model, or not known): what a fleet router budgets for."""


class RefinerRef(msgspec.Struct, frozen=True, kw_only=True):
    """A ``refiner``, resolved: the checkpoint that finishes the denoising, and where it takes over."""

    model: ModelRef
    start: float
    """The share of the schedule the base model runs (diffusers' ``denoising_end`` / ``denoising_start``)."""


class LoraRef(msgspec.Struct, frozen=True, kw_only=True):
    air: str
    sha256: str
    weight: float


class EmbeddingRef(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    trigger: str
    kind: str
    weight: float
    parameter: str


class VaeRef(msgspec.Struct, frozen=True, kw_only=True):
    air: str
    sha256: str
    family: str
    parameter: str = "vae"


class ControlRef(msgspec.Struct, frozen=True, kw_only=True):
    """One ``controlNet`` item, resolved: which ControlNet, how strongly, over which steps, and its guide image."""

    air: str
    family: str
    sha256: str | None
    """The stored file's hash (None: a built-in ControlNet)."""
    scale: float
    start: float
    end: float
    guess_mode: bool
    guide_image: str
    """The request's reference until :meth:`Inference.load_inputs` reads it."""
    guide_bytes: bytes | None = None
    parameter: str
    preprocessor: str | None = None
    """Run on the guide first (engine.preprocessors): ``canny``, with its thresholds."""
    low_threshold: int | None = None
    high_threshold: int | None = None


class InferenceJob(msgspec.Struct, frozen=True, kw_only=True, tag="imageInference"):
    """One imageInference, resolved and defaulted: a generation spec with references instead of objects."""

    task_uuid: str
    team: str
    owner: str
    """Whose turn in the fair queue this is (a session)."""
    model: ModelRef
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg_scale: float
    scheduler: str
    seeds: tuple[int, ...]
    """One per image, drawn at preparation: running the job again gives the same images."""
    clip_skip: int | None = None
    strength: float = 0.8
    mask_margin: int | None = None
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[EmbeddingRef, ...] = ()
    vae: VaeRef | None = None
    seed_image: str | None = None
    """The request's reference (imageUUID, URL, data URI, base64) until :meth:`Engine.load_inputs` reads it."""
    mask_image: str | None = None
    init_bytes: bytes | None = None
    """The seed image's encoded bytes, once read."""
    mask_bytes: bytes | None = None
    output_format: str = "PNG"
    output_quality: int = 95
    progress: bool = False
    previews: bool = False
    cost_per_image: float = 0.0
    controlnets: tuple[ControlRef, ...] = ()
    prompt_weighting: str | None = None
    """``compel`` or ``sdembeds`` (lower case); None: plain prompts."""
    hires: tuple[int, int, float, int] | None = None
    """hiresFix: (width, height, strength, steps) of the second, img2img pass over the first result upscaled."""
    outpaint: tuple[int, int, int, int, int] | None = None
    """(top, right, bottom, left, blur): the seed image is extended by these margins and they are painted."""
    ttl_s: int | None = None
    """The request's ``ttl``: seconds its images are kept (None: the server's default retention)."""
    refiner: RefinerRef | None = None
    png_parameters: bool = False
    """Whether a PNG carries the A1111 ``parameters`` text chunk (prompt, seed, steps…: engine.images.infotext)."""

    @property
    def inputs_loaded(self) -> bool:
        return ((self.seed_image is None or self.init_bytes is not None) and (self.mask_image is None or self.mask_bytes is not None)
                and all(c.guide_bytes is not None for c in self.controlnets))


class TrainingTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where a trained LoRA is registered."""

    air: str
    name: str
    version: str
    unique_identifier: str
    private: bool
    hero_image_url: str | None = None
    short_description: str | None = None


class TrainingJob(msgspec.Struct, frozen=True, kw_only=True, tag="training"):
    task_uuid: str
    team: str
    plan: TrainingPlan
    base: ModelRef
    target: TrainingTarget | None
    """None: a new AIR under the team's default source, chosen when the job runs."""


class UploadJob(msgspec.Struct, frozen=True, kw_only=True, tag="modelUpload"):
    task_uuid: str
    team: str
    request: ModelUpload
    local_source: str | None = None
    """A file this server already holds (``PUT /v1/files``), read instead of downloaded."""


class SearchJob(msgspec.Struct, frozen=True, kw_only=True, tag="modelSearch"):
    task_uuid: str
    team: str
    query: ModelSearch


class ImageUploadJob(msgspec.Struct, frozen=True, kw_only=True, tag="imageUpload"):
    task_uuid: str
    team: str
    image: str
    """The request's reference (imageUUID, URL, data URI or base64)."""


class PreprocessJob(msgspec.Struct, frozen=True, kw_only=True, tag="controlNetPreprocess"):
    """A ControlNet guide made from an image (imageControlNetPreProcess / controlNetPreprocess); CPU only."""

    task_uuid: str
    team: str
    image: str
    """The request's reference (imageUUID, URL, data URI, base64)."""
    preprocessor: str
    low_threshold: int | None = None
    high_threshold: int | None = None
    width: int | None = None
    height: int | None = None
    output_format: str = "PNG"
    output_quality: int = 95


class UpscalerRef(msgspec.Struct, frozen=True, kw_only=True):
    """An uploaded upscaler model (category ``upscaler``), resolved: which bytes, and what they were detected as."""

    air: str
    sha256: str
    architecture: str
    """spandrel's name of the network (``ESRGAN``, ``RealESRGAN Compact``, …), as detected at upload."""
    scale: int
    """What one pass of the network multiplies each side by."""
    size_bytes: int = 0


class UpscaleJob(msgspec.Struct, frozen=True, kw_only=True, tag="upscale"):
    """An image enlarged (imageUpscale / upscale): by the built-in Lanczos upscaler on a thread (``model`` None), or by
    an uploaded upscaler model on the device worker, its output resized by Lanczos when ``factor`` is not its scale."""

    task_uuid: str
    team: str
    image: str
    factor: float
    output_format: str = "PNG"
    output_quality: int = 95
    model: UpscalerRef | None = None
    owner: str = ""
    """Whose turn in the fair queue a model pass takes (a session)."""


Job = Union[InferenceJob, TrainingJob, UploadJob, SearchJob, ImageUploadJob, PreprocessJob, UpscaleJob]


# ---- events ----------------------------------------------------------------------


class Started(msgspec.Struct, frozen=True, tag="started"):
    """The device took the job from the queue."""

    task_uuid: str
    at: float | None = None
    """When (``time.monotonic()`` of the engine's process): the event may reach the loop later, in a bunch with the
    steps.  Meaningful in-process only; an engine in another process leaves it None (the receiver's clock then)."""


class Step(msgspec.Struct, frozen=True, tag="step"):
    """One denoising step done (jobs that asked for progress)."""

    task_uuid: str
    step: int
    steps: int
    previews: list[str] | None = None


class UploadPhase(msgspec.Struct, frozen=True, tag="uploadPhase"):
    task_uuid: str
    status: str
    message: str


class TrainingProgress(msgspec.Struct, frozen=True, kw_only=True, tag="trainingProgress"):
    task_uuid: str
    status: str
    message: str
    progress: float | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None


class GeneratedImage(msgspec.Struct, frozen=True, kw_only=True):
    """One generated image, stored by the engine that made it."""

    image_uuid: str
    file_name: str
    seed: int
    data: bytes
    mime: str
    cost: float


class TrainedLora(msgspec.Struct, frozen=True, kw_only=True):
    air: str
    architecture: str
    steps: int
    loss: float | None
    images: int
    seconds: float


class UploadedModel(msgspec.Struct, frozen=True, kw_only=True):
    air: str
    sha256: str
    size_bytes: int = 0
    """The stored file's size (0 from an engine that does not say)."""


class Finished(msgspec.Struct, frozen=True, kw_only=True, tag="finished"):
    """The job's result: ``images`` (inference; imageUpload: one, without its bytes), ``search``, ``trained`` or ``uploaded``."""

    task_uuid: str
    images: list[GeneratedImage] = []
    search: ModelSearchResult | None = None
    trained: TrainedLora | None = None
    uploaded: UploadedModel | None = None
    input_image_uuid: str | None = None
    """A preprocess or upscale job's input, as an imageUUID (stored if it came some other way)."""


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag="failed"):
    """The job ended in an error, as the wire will show it."""

    task_uuid: str
    code: str
    message: str
    parameter: str | None = None
    extra: dict[str, Any] = {}
    retryable: bool = False
    """The job was refused before it started (a full queue): its taskUUID may be sent again."""


Event = Union[Started, Step, UploadPhase, TrainingProgress, Finished, Failed]
Sink = Callable[[Event], None]
"""Where events go; called on the event loop, in order."""


def encode(value: Job | Event) -> bytes:
    """A job or an event as MessagePack (what crosses a process or a network)."""
    return msgspec.msgpack.encode(value)


def decode_job(data: bytes) -> Job:
    return msgspec.msgpack.decode(data, type=Job)


def decode_event(data: bytes) -> Event:
    return msgspec.msgpack.decode(data, type=Event)
