"""SD-1.x generation on top of diffusers' own pipelines.

One base :class:`~diffusers.StableDiffusionPipeline` is loaded per model; the
img2img and inpaint variants are derived with ``from_pipe`` and share its
components, so the weights exist once.  ``run`` is called from a worker
thread, never the event loop; a per-model lock keeps the scheduler swap and
the call together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

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


class StableDiffusionModel:
    """A loaded SD-1.x model and its derived task pipelines."""

    def __init__(self, base: Any, device: str) -> None:
        self.base = base
        self.device = device
        self.lock = threading.Lock()
        self._variants: dict[str, Any] = {"txt2img": base}
        self._scheduler_config = base.scheduler.config
        self._default_scheduler = base.scheduler

    # 1. load
    @classmethod
    def load(cls, folder: Path, device: str = "cpu", dtype: Any = None) -> "StableDiffusionModel":
        import torch
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype or torch.float32, safety_checker=None, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        _alias_text_model(pipe.text_encoder)
        return cls(pipe, device)

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
    def run(self, spec: GenerationSpec) -> list[Image.Image]:
        """Generate one image per seed, in seed order."""
        import torch

        with self.lock, torch.inference_mode():
            pipe = self._variant(spec.mode)
            scheduler = make_scheduler(spec.scheduler, self._scheduler_config)
            pipe.scheduler = scheduler if scheduler is not None else self._default_scheduler
            output = pipe(**self._call_kwargs(spec))
        return list(output.images)
