"""What a model family is: the descriptor each ``engine/pipelines/<family>/family.py`` fills in.

A *family* is a weight layout that many declared architectures share
(``pony``, ``sdxlturbo`` and ``illustrious`` are all SDXL-shaped).  Everything
that differs between families lives in one :class:`ModelFamily` value in the
family's own folder; the rest of the engine asks the registry
(:mod:`engine.pipelines.families`) instead of switching on a family name.

This module is the type only: it imports nothing of wisp, so a descriptor
module can import it without pulling in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["BuiltinModel", "CheckpointComponent", "ModelDefaults", "ModelFamily", "RefinerLayout", "Sniffing"]


@dataclass(frozen=True)
class ModelDefaults:
    steps: int = 20
    cfg_scale: float = 7.0
    scheduler: str = "Default"
    strength: float = 0.8
    clip_skip: int | None = None
    """Text-encoder layers skipped (diffusers/wisp numbering: 1 = A1111's "clip skip 2")."""


@dataclass(frozen=True)
class CheckpointComponent:
    """One component of an original-layout (LDM/SGM) single file: where its tensors live."""

    name: str  # the diffusers pipeline attribute
    title: str  # for messages
    prefix: str  # of its tensors in the original file


@dataclass(frozen=True)
class RefinerLayout:
    """A second single-file layout of a family whose checkpoints only finish another model's denoising (SDXL's refiner).

    Chosen by the config folder a file gets (its model_index.json names ``pipeline``); the file holds
    ``components`` and loads as ``model_class``, which refuses to start an image on its own.
    """

    title: str  # for messages
    pipeline: str  # ``_class_name`` in its config folders' model_index.json
    components: tuple[CheckpointComponent, ...]
    model_class: Any


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model of the family: built offline on first use (random weights) or shipped in the package."""

    air: str
    name: str
    architecture: str
    version: str  # BUILD_VERSION: part of the model cache key
    build: Callable[[Path], Path]  # data_dir → its diffusers folder (built once, or the shipped one)
    defaults: ModelDefaults | None = None
    """What a request that omits steps/CFG/scheduler gets (None: its architecture's)."""
    comment: str = "built offline with random weights: draws noise"
    """What modelSearch says of it."""


@dataclass(frozen=True)
class Sniffing:
    """What in a file's header says "this family" (:mod:`engine.upload.sniff`)."""

    context_widths: tuple[int, ...]
    """U-Net cross-attention context widths (``attn2.to_k`` input) of the family's models."""
    embedding_widths: tuple[int, ...] = ()
    """Widths of a single-text-encoder textual-inversion vector of the family's real models."""
    tiny_embedding_widths: tuple[int, ...] = ()
    """The same for the family's tiny built-in model."""
    embedding_parts: Mapping[str, int] | None = None
    """A two-text-encoder textual inversion's part → vector width (SDXL: ``{"clip_l": 768, "clip_g": 1280}``)."""
    tiny_embedding_parts: Mapping[str, int] | None = None
    """The same for the family's tiny built-in model."""
    checkpoint_keys: tuple[str, ...] = ()
    """Name prefixes of an LDM single file that say the family when no width does."""
    checkpoint_keys_why: str = ""
    """How a sniff names those keys (``"SDXL conditioner/label_emb keys"``)."""
    lora_names: tuple[tuple[str, str], ...] = ()
    """LoRA/LyCORIS key names that only this family's adapters have, when no width decides: (regex matched
    against ``"<style>:<component>:<module>"`` — style ``kohya``/``diffusers``, component ``unet``, ``te``,
    ``te1``, ``te2`` or ``text_encoder``, module as kohya spells it —, what it shows)."""
    lora_names_weak: tuple[tuple[str, str], ...] = ()
    """The same, asked only when no family's ``lora_names`` matched."""
    controlnet_keys: tuple[str, ...] = ()
    """Name prefixes (after ``control_model.``) only a ControlNet of this family has."""
    controlnet_zero_convs: int = 0
    """Zero convolutions (one per U-Net input block) of an LDM/diffusers ControlNet of the family."""


@dataclass(frozen=True)
class ModelFamily:
    """Everything that differs between model families (SD-1.x, SDXL, …); one per ``engine/pipelines/<family>/``."""

    name: str
    """The family name architectures map to (``"sd1x"``); also the ``family`` of a VAE or training plan."""
    title: str
    """For messages (``"SD-1.x"``)."""
    architectures: Mapping[str, ModelDefaults]
    """Every declared architecture of this layout → what a request that omits steps/CFG/scheduler gets.
    The family's own name comes first (the fallback for a tag without a row)."""
    model_class: Any
    """The loaded-model wrapper (a :class:`~engine.pipelines.stable_diffusion.pipeline.StableDiffusionModel`);
    its ``PIPELINES`` names the diffusers pipeline class of each mode (txt2img, img2img, inpaint)."""
    components: tuple[CheckpointComponent, ...]
    """The single-file key layout: each component's prefix in an original-layout checkpoint."""
    config_folder: Callable[[Path, Path | None], Path]
    """``(data_dir, file)`` → a diffusers config folder (configs + tokenizers) to load ``file`` offline,
    chosen from its header's shapes; ``file=None``: the real model's configuration."""
    builtin: BuiltinModel
    """The tiny built-in model; also the base a training recipe of this family uses when none is named."""
    training_resolution: int
    """Training crop side when the request names none (the real models' native resolution)."""
    preview_factors: tuple[tuple[float, float, float], ...]
    """Latent channel → RGB linear map for step previews (one row per latent channel)."""
    lycoris_conv_projections: bool
    """Whether the U-Net's ``proj_in``/``proj_out`` are 1×1 convolutions (LyCORIS → LoRA conversion)."""
    sniffing: Sniffing
    extra_builtins: tuple[BuiltinModel, ...] = ()
    """Further built-in models of the family (``wisp:shapes-sd15@1``): listed, searchable, never a recipe's base."""
    builtin_controlnet: BuiltinModel | None = None
    """The tiny built-in ControlNet made from the built-in model's U-Net (``build``: data_dir → its folder)."""
    refines: bool = False
    """Whether a checkpoint of the family can finish another's denoising (``refiner``: SDXL's two-stage split)."""
    refiner_layout: RefinerLayout | None = None
    """The family's refiner-only checkpoint layout, if it has one (SDXL refiner 1.0)."""
    default_scheduler_adds_a_step: bool = False
    """Whether the checkpoints' own ("Default") scheduler is PNDM, whose img2img runs one step more than
    ``int(steps × strength)`` (so a request with fewer is still not empty)."""

    @property
    def pipelines(self) -> Mapping[str, str]:
        """The diffusers pipeline class name of each mode (``txt2img``, ``img2img``, ``inpaint``)."""
        pipelines: Mapping[str, str] = self.model_class.PIPELINES
        return pipelines

    @property
    def pipeline(self) -> str:
        """``_class_name`` in the model_index.json of this family's diffusers folders."""
        return self.pipelines["txt2img"]

    @property
    def defaults(self) -> ModelDefaults:
        """The defaults of the family's base architecture."""
        return self.architectures[self.name]
