"""SD-1.x generation on top of diffusers' own pipelines.

One base :class:`~diffusers.StableDiffusionPipeline` is loaded per model; the
img2img and inpaint variants are derived with ``from_pipe`` and share its
components, so the weights exist once.  ``run`` is called from a worker
thread, never the event loop; a per-model lock keeps the scheduler swap and
the call together, and the LoRA set of the request (see :mod:`engine.lora_adapters`):
adapters live on the shared UNet/text encoder, so every variant sees them.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Self

from PIL import Image

from engine.errors import EngineStopped
from engine.embeddings import textual_inversions
from engine.lora import LoraUse
from engine.lora_adapters import LoraAdapters
from engine.lora_cache import LoraCache
from engine.pipelines.batch_invariance import decode_image_by_image, per_request_kernels
from engine.pipelines.vae_swap import vae_override
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
    # Textual inversions and a VAE override, for this request only (engine.embeddings, engine.vae).
    embeddings: tuple[Any, ...] = ()
    vae: Any = None
    controlnets: tuple[Any, ...] = ()
    """ControlNets for this request (engine.controlnets.ControlUse, loaded), in request order."""
    hires: tuple[int, int, float, int] | None = None
    """hiresFix: (width, height, strength, steps) of a second img2img pass over each image upscaled (engine.inference)."""
    prompt_weighting: str | None = None
    """``compel`` or ``sdEmbeds`` (engine.prompt_weighting); None: the prompt is encoded as diffusers does."""
    refiner_start: float | None = None
    """With a refiner: the share of the schedule this model runs before the refiner takes over its latents."""
    on_step: Callable[[int, int, Any], None] | None = field(default=None, compare=False)
    """Called on the worker thread after each denoising step with (step, steps, latents): progress items."""
    step_latents: bool = field(default=False, compare=False)
    """Whether ``on_step`` needs the latents (live previews); without, it is given None."""

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
    """A loaded SD-1.x model and its derived task pipelines.

    The family-specific parts are the class attributes and the two hooks
    below; :class:`engine.pipelines.stable_diffusion_xl.StableDiffusionXLModel`
    overrides them and inherits everything else (variants, scheduler swap,
    seeds, LoRA sets, stopping), so both families run one code path.
    """

    PIPELINES: ClassVar[dict[str, str]] = {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    }
    """The diffusers pipeline class of each task (by name: diffusers is imported lazily)."""
    CONTROLNET_PIPELINES: ClassVar[dict[str, str]] = {
        "txt2img": "StableDiffusionControlNetPipeline",
        "img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionControlNetInpaintPipeline",
    }
    """The same with ControlNets (engine.controlnets): made per request with ``from_pipe``, sharing every weight."""
    XL: ClassVar[bool] = False
    """Two text encoders and pooled conditioning (SDXL): how prompt weighting encodes."""
    LOAD_KWARGS: ClassVar[dict[str, Any]] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    """Extra ``from_pretrained``/``from_single_file`` arguments: wisp runs no safety checker."""

    def __init__(self, base: Any, device: str, lora_cache: LoraCache | None = None) -> None:
        """``lora_cache``: the engine's adapter cache (None: one of this model's own)."""
        self.base = base
        self.device = device
        self.lock = threading.Lock()
        self._variants: dict[str, Any] = {"txt2img": base}
        self._scheduler_config = base.scheduler.config
        self._default_scheduler = base.scheduler
        self.loras = LoraAdapters(base, self._lora_loading_context(base), cache=lora_cache)

    # family hooks
    @classmethod
    def pipeline_class(cls, mode: str = "txt2img") -> Any:
        import diffusers

        return getattr(diffusers, cls.PIPELINES[mode])

    @staticmethod
    def _adapt(pipe: Any) -> None:
        """Fix-ups on a freshly loaded base pipeline: SD-1.x needs the clip_skip alias."""
        _alias_text_model(pipe.text_encoder)

    @staticmethod
    def _lora_loading_context(base: Any) -> Callable[[], AbstractContextManager[None]]:
        """What wraps each LoRA load: SD-1.x hides the alias.  Holds ``base``, never ``self``:
        a model → adapters → model cycle would keep dropped models alive until a full GC."""
        return lambda: hidden_text_model_alias(base.text_encoder)

    @staticmethod
    def training_conditioning(pipe: Any, caption: str, n: int, size: tuple[int, int]) -> tuple[Any, dict[str, Any] | None]:
        """The text conditioning of ``caption`` for ``n`` training images of ``size`` (height, width), encoders frozen.

        Returns the prompt embeddings (one row) and the UNet's added conditioning
        (``added_cond_kwargs``, one row per image; None: the family has none).
        Used by :func:`engine.training.loop.encode`, under ``torch.no_grad``.
        """
        embeds, _ = pipe.encode_prompt(caption, device=pipe.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return embeds, None

    # 1. load
    @classmethod
    def from_pipeline(cls, pipe: Any, device: str, lora_cache: LoraCache | None = None) -> Self:
        """Wrap a freshly loaded base pipeline (from a folder or a single file)."""
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        cls._adapt(pipe)
        return cls(pipe, device, lora_cache)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu", dtype: Any = None, lora_cache: LoraCache | None = None) -> Self:
        """Load a diffusers-format folder (the built-in models)."""
        import torch

        pipe = cls.pipeline_class().from_pretrained(
            str(folder), local_files_only=True, dtype=dtype or torch.float32, **cls.LOAD_KWARGS
        )
        return cls.from_pipeline(pipe, device, lora_cache)

    def _variant(self, mode: str) -> Any:
        pipe = self._variants.get(mode)
        if pipe is None:
            pipe = self.pipeline_class(mode).from_pipe(self.base)
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
        if spec.prompt_weighting is not None:
            from engine.prompt_weighting import weighted_embeddings

            for name in ("prompt", "negative_prompt", "clip_skip"):
                del kwargs[name]
            kwargs.update(weighted_embeddings(self.base, spec.prompt_weighting, spec.prompt, spec.negative_prompt, spec.clip_skip,
                                              xl=self.XL))
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
    def run(self, spec: GenerationSpec, should_stop: Callable[[], bool] | None = None, refiner: Self | None = None) -> list[Image.Image]:
        """Generate one image per seed, in seed order, with exactly ``spec.loras`` applied.

        LoRAs are loaded and switched outside inference mode: adapter
        parameters created inside it would be inference tensors, and PEFT's
        ``set_adapter`` later fails setting ``requires_grad`` on them.

        ``refiner`` (with ``spec.refiner_start``): this model denoises the first
        part of the schedule and hands its latents to ``refiner``, which finishes
        them (diffusers' ``denoising_end`` / ``denoising_start``, SDXL's
        ensemble-of-experts split); the refiner runs without the request's LoRAs.
        """
        import torch

        with self.lock:
            self.loras.activate(spec.loras, [f"lora[{i}].model" for i in range(len(spec.loras))])
            with vae_override(lambda: self._variants.values(), self.base, spec.vae), textual_inversions(self.base, spec) as spec:
                with torch.inference_mode():
                    if refiner is None or spec.refiner_start is None:
                        return self._generate(spec, should_stop)
                    latents = torch.stack(self._generate(spec, should_stop, denoising_end=spec.refiner_start))
        return refiner.refine(spec, latents, should_stop)

    def refine(self, spec: GenerationSpec, latents: Any, should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        """Finish another model's partly denoised ``latents`` from ``spec.refiner_start`` (the refiner's half of :meth:`run`)."""
        import torch
        from dataclasses import replace

        with self.lock:
            self.loras.activate((), [])
            with torch.inference_mode():
                pipe = self._variant("img2img")
                scheduler = make_scheduler(spec.scheduler, self._scheduler_config)
                _set_scheduler(pipe, scheduler if scheduler is not None else self._default_scheduler)
                quiet = replace(spec, on_step=None)  # the steps were reported by the base
                kwargs = self._call_kwargs(replace(quiet, init_image=None, mask_image=None))
                kwargs.pop("width", None)
                kwargs.pop("height", None)
                kwargs.update(image=latents, denoising_start=spec.refiner_start)
                return self._call(pipe, quiet, kwargs, should_stop)

    def _controlled(self, spec: GenerationSpec, kwargs: dict[str, Any]) -> Any:
        """The ControlNet pipeline for ``spec``'s mode with its ControlNets, and their call arguments added to ``kwargs``.

        Made per request with ``from_pipe`` (the ControlNets are the request's,
        pinned in the model cache only while it runs); it shares the loaded
        model's components, VAE override and textual inversions included.
        """
        import diffusers
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        uses = spec.controlnets
        modules = [use.module for use in uses]
        controlnet = modules[0] if len(modules) == 1 else MultiControlNetModel(modules)
        variant = f"controlnet-{spec.mode}"
        pipe = self._variants.get(variant)
        if pipe is None:  # made once per mode (``from_pipe`` costs ~10 ms); a variant, so VAE overrides reach it too
            pipe = getattr(diffusers, self.CONTROLNET_PIPELINES[spec.mode]).from_pipe(self._variant(spec.mode), controlnet=controlnet)
            pipe.set_progress_bar_config(disable=True)
            self._variants[variant] = pipe
        else:
            pipe.controlnet = controlnet  # this request's; released after the call (see _generate)
        one = len(uses) == 1
        guides = [use.image for use in uses]
        kwargs[("image" if spec.mode == "txt2img" else "control_image")] = guides[0] if one else guides
        kwargs["controlnet_conditioning_scale"] = uses[0].scale if one else [use.scale for use in uses]
        kwargs["control_guidance_start"] = uses[0].start if one else [use.start for use in uses]
        kwargs["control_guidance_end"] = uses[0].end if one else [use.end for use in uses]
        kwargs["guess_mode"] = any(use.guess_mode for use in uses)
        return pipe

    def _generate(
        self, spec: GenerationSpec, should_stop: Callable[[], bool] | None = None, denoising_end: float | None = None,
    ) -> list[Any]:
        """The diffusers call itself (caller holds the lock); with ``denoising_end``, the latents at that point."""
        pipe = self._variant(spec.mode)
        scheduler = make_scheduler(spec.scheduler, self._scheduler_config)
        _set_scheduler(pipe, scheduler if scheduler is not None else self._default_scheduler)
        kwargs = self._call_kwargs(spec)
        if denoising_end is not None:
            kwargs.update(denoising_end=denoising_end, output_type="latent")
        if spec.controlnets:
            pipe = self._controlled(spec, kwargs)
            _set_scheduler(pipe, scheduler if scheduler is not None else self._default_scheduler)
            try:
                return self._call(pipe, spec, kwargs, should_stop)
            finally:
                # The ControlNets are pinned in the model cache only for this run: the pipeline must not keep one alive.
                pipe.controlnet = None
        return self._call(pipe, spec, kwargs, should_stop)

    @staticmethod
    def _call(pipe: Any, spec: GenerationSpec, kwargs: dict[str, Any], should_stop: Callable[[], bool] | None) -> list[Image.Image]:
        callback = _step_callback([spec], should_stop)
        if callback is not None:
            kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=_step_inputs([spec]))
        output = pipe(**kwargs)
        return list(output.images)

    # dynamic batching
    def _prompt_embeds(self, spec: GenerationSpec) -> dict[str, Any]:
        """One request's text conditioning, computed as the pipeline computes it for that request alone."""
        pipe = self.base
        do_cfg = spec.cfg_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        positive, negative = pipe.encode_prompt(
            spec.prompt, pipe._execution_device, 1, do_cfg, spec.negative_prompt, clip_skip=spec.clip_skip or None
        )
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    def run_batch(self, specs: list[GenerationSpec], should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        """Several one-image txt2img requests in one pipeline call; one image per spec, in order.

        The specs share everything but prompts and seed (the caller groups them
        by :func:`batch_key`).  Each request's prompt is encoded on its own and
        its latents come from its own seeded generator, as in a lone run; the
        denoising runs batched with the batch-size-sensitive layers split per
        request and the VAE decodes image by image
        (:mod:`engine.pipelines.batch_invariance`), so each image is
        bit-for-bit its lone run.
        """
        import torch

        first = specs[0]
        with self.lock:
            self.loras.activate(first.loras, [f"lora[{i}].model" for i in range(len(first.loras))])
            with torch.inference_mode():
                pipe = self._variant("txt2img")
                scheduler = make_scheduler(first.scheduler, self._scheduler_config)
                _set_scheduler(pipe, scheduler if scheduler is not None else self._default_scheduler)
                embeds = [self._prompt_embeds(spec) for spec in specs]
                kwargs: dict[str, Any] = {
                    name: None if embeds[0][name] is None else torch.cat([e[name] for e in embeds]) for name in embeds[0]
                }
                kwargs.update(
                    num_inference_steps=first.steps, guidance_scale=first.cfg_scale, width=first.width, height=first.height,
                    num_images_per_prompt=1, output_type="pil",
                    generator=[torch.Generator(device="cpu").manual_seed(spec.seeds[0]) for spec in specs],
                )
                callback = _step_callback(specs, should_stop)
                if callback is not None:
                    kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=_step_inputs(specs))
                with per_request_kernels(pipe.unet, len(specs)), decode_image_by_image(pipe.vae):
                    return list(pipe(**kwargs).images)


def batch_key(spec: GenerationSpec) -> tuple[Any, ...] | None:
    """What must be equal for requests to share a batch; None: this request always runs alone.

    Only one-image txt2img requests batch (img2img/inpaint carry per-request
    images and strengths; several images per request already share a call).
    """
    if (spec.mode != "txt2img" or len(spec.seeds) != 1 or spec.hires is not None or spec.prompt_weighting
            or spec.refiner_start is not None):
        return None
    if spec.embeddings or spec.vae is not None or spec.controlnets:  # applied per request in ``run``
        return None
    loras = tuple((lora.key, lora.weight) for lora in spec.loras)
    return (spec.width, spec.height, spec.steps, spec.scheduler, spec.cfg_scale, spec.clip_skip, loras)


def _step_callback(
    specs: list[GenerationSpec], should_stop: Callable[[], bool] | None
) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None:
    """diffusers' ``callback_on_step_end``: stop checks, and each spec's progress with its own latents."""
    reporters = [(i, spec.on_step) for i, spec in enumerate(specs) if spec.on_step is not None]
    if should_stop is None and not reporters:
        return None
    per_spec = len(specs[0].seeds)
    total: list[int] = []
    """The run's step count, read from the pipeline at the first step (img2img runs fewer than ``steps``)."""

    def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # Between denoising steps: the only safe point to abandon a run (server shutdown).
        if should_stop is not None and should_stop():
            raise GenerationStopped("generation stopped: the server is shutting down")
        if not reporters:
            return tensors
        latents = tensors.get("latents")
        if not total:
            total.append(int(getattr(pipe, "num_timesteps", 0) or specs[0].steps))
        steps = total[0]
        for i, on_step in reporters:
            rows = latents[i * per_spec : (i + 1) * per_spec] if latents is not None and len(specs) > 1 else latents
            on_step(step + 1, steps, rows)  # type: ignore[misc]
        return tensors

    return check


def _step_inputs(specs: list[GenerationSpec]) -> list[str]:
    """diffusers' ``callback_on_step_end_tensor_inputs``: the latents only when a spec's ``on_step`` makes previews.

    diffusers gathers each named tensor with ``locals()[name]``, a copy of its
    whole call frame on every step; the latents are only needed for previews.
    """
    return ["latents"] if any(spec.on_step is not None and spec.step_latents for spec in specs) else []


def _set_scheduler(pipe: Any, scheduler: Any) -> None:
    """Give ``pipe`` this scheduler, unless it already has it: assigning a pipeline component goes through
    diffusers' ``register_to_config`` (~0.07 ms each), and most requests keep the model's default scheduler."""
    if pipe.scheduler is not scheduler:
        pipe.scheduler = scheduler
