"""The LoRA training loop itself: peft adapters on a frozen diffusers UNet.

Textbook DreamBooth-LoRA: the VAE latents of the (already cropped) images and
the text embeddings of their captions are computed once (both encoders stay
frozen), then every step draws a batch, noises it at random timesteps with
the base model's own noise schedule, and minimises the MSE between the UNet's
prediction and the scheduler's target (the noise, or the velocity for
v-prediction models).  With a class prompt, the same loss on class images
drawn by the base model is added (prior preservation).

Everything random comes from one ``torch.Generator`` seeded by the request,
so a seeded run on the same machine reproduces the same adapter.

``lora_type="lycoris"`` trains peft's LoHa instead of LoRA.  The result is
exported as an ordinary LoRA whose update is the LoHa update itself (a
Hadamard product of two rank-r factors has rank ≤ r², so a rank-r² SVD is
exact to float precision): the inference path applies it like any LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from engine.pipelines import families
from engine.pipelines.family import ModelFamily

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
"""The attention projections of every transformer block: the usual DreamBooth-LoRA targets."""


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    learning_rate: float = 1e-4
    rank: int = 4
    alpha: float = 4.0
    seed: int = 0
    lora_type: str = "lora"
    batch_size: int = 1
    prior_loss_weight: float = 1.0


class Stopped(Exception):
    """The caller asked the loop to stop (cancel)."""


@dataclass
class Batchable:
    """Latents and the conditioning that goes with them, one row per image."""

    latents: Any
    embeds: Any
    added: dict[str, Any] | None = None

    def rows(self, index: Any) -> tuple[Any, Any, dict[str, Any] | None]:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        return self.latents[index], self.embeds[index], added


def _family(pipe: Any) -> ModelFamily:
    """The family of a loaded diffusers pipeline, by its class (``StableDiffusionXLPipeline`` → SDXL)."""
    found = families.by_pipeline(type(pipe).__name__)
    if found is None:
        raise TypeError(f"{type(pipe).__name__} is not the pipeline of a model family this build trains")
    return found


def encode(pipe: Any, images: list[Any], caption: str, generator: Any) -> Batchable:
    """VAE latents of ``images`` and the text conditioning of ``caption`` (frozen encoders; the family's own)."""
    import numpy as np
    import torch

    device = pipe.unet.device
    dtype = pipe.unet.dtype
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        latents = []
        for row in pixels.to(device, dtype=pipe.vae.dtype):
            dist = pipe.vae.encode(row[None]).latent_dist
            latents.append(dist.sample(generator=generator))
        latents_t = torch.cat(latents).to(dtype) * pipe.vae.config.scaling_factor
        n = len(images)
        embeds, added = _family(pipe).model_class.training_conditioning(pipe, caption, n, (images[0].height, images[0].width))
    return Batchable(latents_t, embeds.repeat(n, 1, 1).to(dtype), added)


def add_adapter(unet: Any, config: LoopConfig) -> None:
    """Wrap the UNet's attention projections with a trainable peft adapter; everything else frozen."""
    import torch

    unet.requires_grad_(False)
    if config.lora_type == "lycoris":
        from peft import LoHaConfig

        adapter = LoHaConfig(r=config.rank, alpha=config.alpha, target_modules=TARGET_MODULES, init_weights=True)
    else:
        from peft import LoraConfig

        adapter = LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    torch.manual_seed(config.seed)  # peft initialises the new layers from torch's global generator
    unet.add_adapter(adapter)


def train(
    pipe: Any,
    instance: Batchable,
    config: LoopConfig,
    *,
    prior: Batchable | None = None,
    generator: Any = None,
    on_step: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Run ``config.steps`` optimisation steps on ``pipe.unet`` (which has an adapter); returns the last loss."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet = pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    generator = generator or torch.Generator().manual_seed(config.seed)
    unet.train()
    n = instance.latents.shape[0]
    order: list[int] = []
    loss_value = math.nan

    def loss_on(batch: Batchable, index: Any) -> Any:
        latents, embeds, added = batch.rows(index)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred = unet(noisy, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        return F.mse_loss(pred.float(), target.float())

    for step in range(1, config.steps + 1):
        if should_stop is not None and should_stop():
            raise Stopped()
        if len(order) < config.batch_size:
            order.extend(torch.randperm(n, generator=generator).tolist() * max(1, math.ceil(config.batch_size / n)))
        index = torch.tensor(order[: config.batch_size])
        del order[: config.batch_size]
        loss = loss_on(instance, index)
        if prior is not None:
            prior_index = torch.randint(0, prior.latents.shape[0], (config.batch_size,), generator=generator)
            loss = loss + config.prior_loss_weight * loss_on(prior, prior_index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    unet.eval()
    return loss_value


def lora_state_dict(unet: Any, config: LoopConfig, max_rank: int = 256) -> dict[str, Any]:
    """The trained adapter as a diffusers-format LoRA (``unet.<module>.lora_A/B.weight``), scale folded in.

    diffusers gives a file without alphas PEFT scale 1, so ``alpha / r`` is
    multiplied into ``lora_B``.  A LoHa adapter is exported through the SVD of
    its exact update (see the module docstring).
    """
    import torch

    out: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if config.lora_type == "lycoris":
            if not hasattr(module, "hada_w1_a") or "default" not in getattr(module, "hada_w1_a", {}):
                continue
            with torch.no_grad():
                delta = module.get_delta_weight("default").float()
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                keep = int((s > s[0] * 1e-6).sum()) if s.numel() and s[0] > 0 else 1
                keep = max(1, min(keep, max_rank, config.rank * config.rank))
                root = s[:keep].sqrt()
                down = (root[:, None] * vh[:keep]).contiguous()
                up = (u[:, :keep] * root[None, :]).contiguous()
        else:
            lora_a = getattr(module, "lora_A", None)
            if lora_a is None or "default" not in lora_a:
                continue
            with torch.no_grad():
                scale = module.scaling["default"]
                down = lora_a["default"].weight.detach().float().clone()
                up = (module.lora_B["default"].weight.detach().float() * scale).contiguous()
        out[f"unet.{name}.lora_A.weight"] = down.cpu()
        out[f"unet.{name}.lora_B.weight"] = up.cpu()
    if not out:
        raise RuntimeError("the adapter has no layers")
    return out
