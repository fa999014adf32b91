"""SD-1.x generation on top of diffusers' own pipelines.

One base :class:`~diffusers.StableDiffusionPipeline` is loaded per model; the
img2img and inpaint variants are derived with ``from_pipe`` and share its
components, so the weights exist once.  ``run`` is called from a worker
thread, never the event loop; a per-model lock keeps the scheduler swap and
the call together, and the LoRA set of the request (see :mod:`engine.lora`):
adapters live on the shared UNet/text encoder, so every variant sees them.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from engine.errors import EngineStopped
from engine.lora import LoraAdapters, LoraUse
from engine.schedulers import make_scheduler


@dataclass(frozen=True)
class GenerationSpec:
    """Everything one generation needs, resolved and defaulted."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg_scale: float
    scheduler: str
    seeds: tuple[int, ...]
    clip_skip: int | None = None
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float = 0.8
    mask_margin: int | None = None
    # In request order: a LoRA that fails is reported as ``lora[<index>].model``.
    loras: tuple[LoraUse, ...] = ()

    @property
    def mode(self) -> str:
        if self.mask_image is not None:
            return "inpaint"
        if self.init_image is not None:
            return "img2img"
        return "txt2img"


def _alias_text_model(text_encoder: Any) -> None:
    """Let diffusers' clip_skip path find ``text_model.final_layer_norm`` under transformers 5.

    transformers 5 flattened ``CLIPTextModel`` (no ``text_model`` child);
    diffusers 0.42 still reaches through it when ``clip_skip`` is set.  The
    alias is a plain attribute, not a registered submodule, so the module tree
    and state dict are unchanged.
    """
    if not hasattr(text_encoder, "text_model") and hasattr(text_encoder, "final_layer_norm"):
        object.__setattr__(text_encoder, "text_model", text_encoder)


@contextmanager
def hidden_text_model_alias(text_encoder: Any) -> Iterator[None]:
    """Remove the :func:`_alias_text_model` alias for the duration of a LoRA load.

    diffusers strips the ``text_model.`` prefix of text-encoder LoRA keys only
    when the encoder has no ``text_model`` attribute; with the alias present
    it keeps the prefix, matches no layer and fails with an ``IndexError``
    halfway through (after the UNet part was loaded).
    """
    aliased = text_encoder is not None and text_encoder.__dict__.get("text_model") is text_encoder
    if aliased:
        del text_encoder.__dict__["text_model"]
    try:
        yield
    finally:
        if aliased:
            object.__setattr__(text_encoder, "text_model", text_encoder)


class GenerationStopped(EngineStopped):
    """A run abandoned between steps because the engine is stopping."""


class StableDiffusionModel:
    """A loaded SD-1.x model and its derived task pipelines."""

    def __init__(self, base: Any, device: str) -> None:
        self.base = base
        self.device = device
        self.lock = threading.Lock()
        self._variants: dict[str, Any] = {"txt2img": base}
        self._scheduler_config = base.scheduler.config
        self._default_scheduler = base.scheduler
        self.loras = LoraAdapters(base, lambda: hidden_text_model_alias(base.text_encoder))

    # 1. load
    @classmethod
    def from_pipeline(cls, pipe: Any, device: str) -> "StableDiffusionModel":
        """Wrap a freshly loaded base pipeline (from a folder or a single file)."""
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        _alias_text_model(pipe.text_encoder)
        return cls(pipe, device)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu", dtype: Any = None) -> "StableDiffusionModel":
        """Load a diffusers-format folder (the built-in models)."""
        import torch
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype or torch.float32, safety_checker=None, requires_safety_checker=False
        )
        return cls.from_pipeline(pipe, device)

    def _variant(self, mode: str) -> Any:
        pipe = self._variants.get(mode)
        if pipe is None:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

            cls = StableDiffusionImg2ImgPipeline if mode == "img2img" else StableDiffusionInpaintPipeline
            pipe = cls.from_pipe(self.base)
            pipe.set_progress_bar_config(disable=True)
            self._variants[mode] = pipe
        return pipe

    # 2. check / prepare
    def _call_kwargs(self, spec: GenerationSpec) -> dict[str, Any]:
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in spec.seeds]
        kwargs: dict[str, Any] = dict(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            num_inference_steps=spec.steps,
            guidance_scale=spec.cfg_scale,
            num_images_per_prompt=len(spec.seeds),
            generator=generators,
            clip_skip=spec.clip_skip or None,
            output_type="pil",
        )
        if spec.mode == "txt2img":
            kwargs.update(width=spec.width, height=spec.height)
        else:
            assert spec.init_image is not None
            kwargs.update(image=spec.init_image.resize((spec.width, spec.height), Image.Resampling.LANCZOS), strength=spec.strength)
            if spec.mode == "inpaint":
                assert spec.mask_image is not None
                mask = spec.mask_image.convert("L").resize((spec.width, spec.height), Image.Resampling.NEAREST)
                kwargs.update(mask_image=mask, width=spec.width, height=spec.height)
                if spec.mask_margin:
                    kwargs.update(padding_mask_crop=spec.mask_margin)
        return kwargs

    # 3. run → 4. result
    def run(self, spec: GenerationSpec, should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        """Generate one image per seed, in seed order, with exactly ``spec.loras`` applied.

        LoRAs are loaded and switched outside inference mode: adapter
        parameters created inside it would be inference tensors, and PEFT's
        ``set_adapter`` later fails setting ``requires_grad`` on them.
        """
        import torch

        with self.lock:
            self.loras.activate(spec.loras, [f"lora[{i}].model" for i in range(len(spec.loras))])
            with torch.inference_mode():
                return self._generate(spec, should_stop)

    def _generate(self, spec: GenerationSpec, should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        """The diffusers call itself (caller holds the lock)."""
        pipe = self._variant(spec.mode)
        scheduler = make_scheduler(spec.scheduler, self._scheduler_config)
        pipe.scheduler = scheduler if scheduler is not None else self._default_scheduler
        kwargs = self._call_kwargs(spec)
        if should_stop is not None:

            def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                # Between denoising steps: the only safe point to abandon a run (server shutdown).
                if should_stop():
                    raise GenerationStopped("generation stopped: the server is shutting down")
                return tensors

            kwargs["callback_on_step_end"] = check
        output = pipe(**kwargs)
        return list(output.images)
