"""training: a LoRA fine-tune as a long, streamed task.

Runware's SDKs send ``{"taskType":"training","model":RECIPE,"importModel":{…},
"inputs":{"dataset":…}}``; users of the seed APIs (ModelsLab /
stablediffusionapi ``lora_fine_tune``) know the same job by other names
(``instance_prompt``, ``class_prompt``, ``base_model_type``, ``images``,
``training_type``, ``lora_type``, ``max_train_steps``, ``seed``, ``webhook``),
and both spellings are accepted here with the same meaning.  ModelsLab sends
numbers as strings (``"seed": "0"``), so those fields take either.

:meth:`Training.plan` folds both spellings into one :class:`TrainingPlan`, the
only shape the engine sees.  ``taskCancel`` names a training task by its
taskUUID and stops it, queued or running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from protocol.common import MAX_IMAGE_REF_CHARS, Keyword, ModelAIR, NegativePrompt, Task, TaskUUID, URLString, webhook_url_error
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.models import AIR, ShortText

RECIPES: dict[str, str] = {
    "wisp:sd1x@lora-training": "sd1x",
    "wisp:sdxl@lora-training": "sdxl",
}
"""Training recipe id → the architecture family it trains a LoRA for."""

BASE_MODEL_TYPES = {"normal": "wisp:sd1x@lora-training", "sdxl": "wisp:sdxl@lora-training"}
"""The seed APIs' ``base_model_type`` → recipe."""

TRAINING_TYPE_CLASS_PROMPTS: dict[str, str | None] = {
    "men": "photo of a man",
    "male": "photo of a man",
    "women": "photo of a woman",
    "female": "photo of a woman",
    "couple": "photo of a couple",
    "null": None,
}
"""``training_type`` presets: the class prompt used for prior preservation when none is given."""

MIN_STEPS, MAX_STEPS = 1, 10_000
SEED_DEFAULT_STEPS = (10, 50)
"""The seed documents' rule: 2 × the number of images, between 10 and 50."""
MAX_DATASET_ITEMS = 64

LearningRate = Annotated[float, msgspec.Meta(gt=0, le=1)]
Rank = Annotated[int, msgspec.Meta(ge=1, le=128)]
Resolution = Annotated[int, msgspec.Meta(ge=64, le=1024, multiple_of=8)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=8)]
Text = NegativePrompt
NumberLike = int | Annotated[str, msgspec.Meta(max_length=20)]
DatasetItem = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IMAGE_REF_CHARS)]


class ImportModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the trained LoRA is registered (the fields of a modelUpload that apply)."""

    air: AIR
    name: ShortText
    uniqueIdentifier: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    version: ShortText
    private: bool | None = None
    heroImageURL: URLString | None = None
    shortDescription: Annotated[str, msgspec.Meta(min_length=2, max_length=40000)] | None = None
    architecture: Keyword | None = None
    category: Literal["lora", "lycoris"] | None = None


class TrainingInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    dataset: DatasetItem | list[DatasetItem] | None = None


@dataclass(frozen=True)
class TrainingPlan:
    """A training request with both spellings folded together and every default applied but the base's."""

    recipe: str
    family: str
    dataset: tuple[str, ...]
    dataset_parameter: str
    """``inputs.dataset`` or ``images``: where a bad image is reported."""
    steps: int | None
    """None: 2 × the number of images, between 10 and 50 (known once the dataset is read)."""
    learning_rate: float
    rank: int
    alpha: float
    seed: int
    instance_prompt: str
    class_prompt: str | None
    negative_prompt: str | None
    lora_type: str
    resolution: int | None
    batch_size: int
    base_model: str | None
    import_model: ImportModel | None
    trigger_word: str | None
    webhook: str | None
    prior_loss_weight: float
    class_images: int | None


class Training(Task, tag="training"):
    """Train a LoRA on a dataset; async only.  See the README's "Training" section for every field."""

    taskUUID: TaskUUID
    model: ModelAIR | None = None
    deliveryMethod: Literal["sync", "async"] = "async"
    importModel: ImportModel | None = None
    inputs: TrainingInputs | None = None
    # recipe parameters (Runware spelling)
    trainingSteps: int | None = None
    learningRate: LearningRate | None = None
    triggerWord: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    baseModel: ModelAIR | None = None
    rank: Rank | None = None
    alpha: Annotated[float, msgspec.Meta(gt=0, le=1024)] | None = None
    resolution: Resolution | None = None
    batchSize: BatchSize | None = None
    priorLossWeight: Annotated[float, msgspec.Meta(ge=0, le=10)] | None = None
    numClassImages: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    webhookURL: URLString | None = None
    includeCost: bool | None = None
    # the seed APIs' spelling (ModelsLab / stablediffusionapi lora_fine_tune)
    instance_prompt: Text | None = None
    class_prompt: Text | None = None
    base_model_type: Literal["normal", "sdxl"] | None = None
    negative_prompt: Text | None = None
    images: Annotated[list[DatasetItem], msgspec.Meta(max_length=MAX_DATASET_ITEMS)] | None = None
    training_type: Literal["men", "male", "women", "female", "couple", "null"] | None = None
    lora_type: Literal["lora", "lycoris"] | None = None
    max_train_steps: NumberLike | None = None
    seed: NumberLike | None = None
    webhook: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    """The seed APIs send ``""`` or ``null`` for "no webhook"."""
    wandb_key: Annotated[str, msgspec.Meta(max_length=400)] | None = None
    """Accepted and ignored: wisp reports progress itself and never calls out to wandb."""

    def check(self) -> WireError | None:
        plan = self.plan()
        return plan if isinstance(plan, WireError) else None

    def plan(self) -> TrainingPlan | WireError:
        def bad(parameter: str, message: str, code: str = ErrorCode.INVALID_PARAMETER, **extra: Any) -> WireError:
            return wire_error(code, message, parameter=parameter, **extra)

        for name, url in (("webhookURL", self.webhookURL), ("webhook", self.webhook)):
            hook = webhook_url_error(url, name)
            if hook is not None:
                return hook
        if self.deliveryMethod != "async":
            return bad("deliveryMethod", "training is a long task: send it with deliveryMethod \"async\" and poll getResponse")
        recipe = self.model
        if recipe is None and self.base_model_type is not None:
            recipe = BASE_MODEL_TYPES[self.base_model_type]
        if recipe is None:
            recipe = "wisp:sd1x@lora-training"
        if recipe not in RECIPES:
            return bad("model", f"unknown training recipe {recipe[:100]!r}; known: {', '.join(RECIPES)}")
        if self.base_model_type is not None and BASE_MODEL_TYPES[self.base_model_type] != recipe:
            return bad("base_model_type", f"base_model_type {self.base_model_type} contradicts the recipe {recipe}")
        dataset: list[str] = []
        parameter = "inputs.dataset"
        if self.inputs is not None and self.inputs.dataset is not None:
            dataset = [self.inputs.dataset] if isinstance(self.inputs.dataset, str) else list(self.inputs.dataset)
        if self.images is not None:
            if dataset:
                return bad("images", "send the dataset once: inputs.dataset or images, not both")
            dataset, parameter = list(self.images), "images"
        if not dataset:
            return bad(parameter, "a dataset is required: a zip URL, image URLs, imageUUIDs or data URIs", ErrorCode.MISSING_PARAMETER)
        if len(dataset) > MAX_DATASET_ITEMS:
            return bad(parameter, f"at most {MAX_DATASET_ITEMS} dataset entries", max=MAX_DATASET_ITEMS)
        steps = self.trainingSteps
        if self.max_train_steps is not None:
            value = _number(self.max_train_steps)
            if value is None:
                return bad("max_train_steps", "max_train_steps must be a whole number")
            if steps is not None and steps != value:
                return bad("max_train_steps", "trainingSteps and max_train_steps disagree")
            steps = value
        if steps is not None and not MIN_STEPS <= steps <= MAX_STEPS:
            name = "trainingSteps" if self.trainingSteps is not None else "max_train_steps"
            return bad(name, f"{name} must be between {MIN_STEPS} and {MAX_STEPS}", min=MIN_STEPS, max=MAX_STEPS)
        seed = 0
        if self.seed is not None:
            parsed = _number(self.seed)
            if parsed is None or not 0 <= parsed < 2**63:
                return bad("seed", "seed must be a whole number between 0 and 2^63-1")
            seed = parsed
        if self.importModel is not None and self.importModel.category not in (None, "lora", "lycoris"):
            return bad("importModel.category", "a trained model is a lora")
        lora_type = self.lora_type or ("lycoris" if self.importModel is not None and self.importModel.category == "lycoris" else "lora")
        class_prompt = self.class_prompt
        if class_prompt is None and self.training_type is not None:
            class_prompt = TRAINING_TYPE_CLASS_PROMPTS[self.training_type]
        instance = self.instance_prompt
        if instance is None:
            instance = self.triggerWord or ""
        elif self.triggerWord and self.triggerWord not in instance:
            instance = f"{self.triggerWord} {instance}"
        rank = self.rank or 4
        return TrainingPlan(
            recipe=recipe,
            family=RECIPES[recipe],
            dataset=tuple(dataset),
            dataset_parameter=parameter,
            steps=steps,
            learning_rate=self.learningRate if self.learningRate is not None else 1e-4,
            rank=rank,
            alpha=self.alpha if self.alpha is not None else float(rank),
            seed=seed,
            instance_prompt=instance,
            class_prompt=class_prompt or None,
            negative_prompt=self.negative_prompt,
            lora_type=lora_type,
            resolution=self.resolution,
            batch_size=self.batchSize or 1,
            base_model=self.baseModel,
            import_model=self.importModel,
            trigger_word=self.triggerWord,
            webhook=self.webhookURL or self.webhook or None,
            prior_loss_weight=self.priorLossWeight if self.priorLossWeight is not None else 1.0,
            class_images=self.numClassImages,
        )


def default_steps(images: int) -> int:
    low, high = SEED_DEFAULT_STEPS
    return max(low, min(high, 2 * images))


def _number(value: int | str) -> int | None:
    if isinstance(value, int):
        return value
    text = value.strip()
    return int(text) if text.isdigit() else None


class TaskCancel(Task, tag="taskCancel"):
    """Cancel a queued or running training job; ``taskUUID`` is the job's own."""

    taskUUID: TaskUUID


class TaskCancelResult(msgspec.Struct):
    taskType: str
    taskUUID: str
    cancelled: bool


TRAINING_STATUSES: tuple[str, ...] = (
    "queued",
    "deploying_gpu",
    "training_started",
    "training_success",
    "trained_model_compressing",
    "trained_model_uploading",
    "trained_model_uploaded",
    "deploying_model",
    "model_ready",
)
"""The seed documents' status sequence, with ``queued`` first while the job waits for a slot."""


class TrainingStatus(msgspec.Struct, omit_defaults=True):
    """One status of a training job: ``status`` is "processing" until the final "success" item.

    Only the final item carries ``outputs`` (the 0.5 SDK's poll counts any
    item with ``outputs`` as the result).
    """

    taskType: str
    taskUUID: str
    status: str
    trainingStatus: str
    message: str = ""
    progress: float | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    air: str | None = None
    outputs: dict[str, Any] | None = None
    cost: float | None = None
