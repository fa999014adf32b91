"""SDXL generation: the SD-1.x wrapper with SDXL's diffusers pipelines.

SDXL differs from SD-1.x in what diffusers already handles (two text
encoders and tokenizers, pooled text and size/crop micro-conditioning), so
the wrapper only names SDXL's three pipelines and what loading them needs;
variants, scheduler swap, seeds, clipSkip, LoRA sets and stopping are the
SD-1.x code (:class:`~engine.pipelines.stable_diffusion.StableDiffusionModel`).

SDXL's ``encode_prompt`` reads clip_skip from ``hidden_states`` only, so the
SD-1.x ``text_model`` alias (and hiding it during LoRA loads) is not needed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, ClassVar

from engine.errors import InvalidInput
from engine.pipelines.stable_diffusion.pipeline import StableDiffusionModel


class StableDiffusionXLModel(StableDiffusionModel):
    """A loaded SDXL model and its derived task pipelines (txt2img, img2img, inpaint)."""

    PIPELINES: ClassVar[dict[str, str]] = {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    }
    CONTROLNET_PIPELINES: ClassVar[dict[str, str]] = {
        "txt2img": "StableDiffusionXLControlNetPipeline",
        "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionXLControlNetInpaintPipeline",
    }
    XL: ClassVar[bool] = True
    LOAD_KWARGS: ClassVar[dict[str, Any]] = {"add_watermarker": False}
    """No invisible watermark: it needs an optional package and changes the pixels it returns."""

    @staticmethod
    def _adapt(pipe: Any) -> None:
        """Nothing to fix: SDXL never reaches through ``text_model``."""

    @staticmethod
    def _lora_loading_context(base: Any) -> Callable[[], AbstractContextManager[None]]:
        return nullcontext

    @staticmethod
    def training_conditioning(pipe: Any, caption: str, n: int, size: tuple[int, int]) -> tuple[Any, dict[str, Any] | None]:
        """Both text encoders' embeddings, plus the pooled text and size micro-conditioning (no crop) per image."""
        device = pipe.unet.device
        embeds, _, pooled, _ = pipe.encode_prompt(caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        height, width = size
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=embeds.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).to(device)
        return embeds, {"text_embeds": pooled.repeat(n, 1), "time_ids": time_ids.repeat(n, 1)}

    def _prompt_embeds(self, spec: Any) -> dict[str, Any]:
        """SDXL's conditioning adds the pooled text embeddings of the second encoder."""
        pipe = self.base
        do_cfg = spec.cfg_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=spec.prompt, device=pipe._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=do_cfg,
            negative_prompt=spec.negative_prompt, clip_skip=spec.clip_skip or None,
        )
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}


class StableDiffusionXLRefinerModel(StableDiffusionXLModel):
    """A loaded SDXL refiner-layout checkpoint (``sd_xl_refiner_1.0`` and its fine-tunes): it only finishes.

    One text encoder (OpenCLIP bigG) and a UNet conditioned on an aesthetic
    score: diffusers runs it as ``StableDiffusionXLImg2ImgPipeline`` with
    ``requires_aesthetics_score`` (its default scores, 6 and 2.5).  It cannot
    start an image from noise, so :meth:`run` refuses with a message that
    says where it belongs; :meth:`refine` (inherited) is its use.
    """

    PIPELINES: ClassVar[dict[str, str]] = {
        "txt2img": "StableDiffusionXLImg2ImgPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    }
    LOAD_KWARGS: ClassVar[dict[str, Any]] = {"add_watermarker": False, "requires_aesthetics_score": True}

    def _variant(self, mode: str) -> Any:
        return self.base if mode in ("txt2img", "img2img") else super()._variant(mode)

    def run(self, spec: Any, should_stop: Callable[[], bool] | None = None, refiner: Any = None) -> list[Any]:
        raise InvalidInput(
            "this model is an SDXL refiner (one text encoder, aesthetic-score conditioning): it can only finish another "
            "SDXL model's image; name it as refiner.model and an SDXL checkpoint as model",
            parameter="model",
        )

    def run_batch(self, specs: list[Any], should_stop: Callable[[], bool] | None = None) -> list[Any]:
        return self.run(specs[0], should_stop)
