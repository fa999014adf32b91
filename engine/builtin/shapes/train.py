"""Train ``wisp:shapes-sd15@1`` from nothing: ``python -m engine.builtin.shapes.train``.

Everything it learns from is drawn by :mod:`engine.builtin.shapes.scene`; no
data or weights are downloaded.  Two phases inside one time budget (default 57
minutes on a 2-core CPU):

1. the VAE, as an autoencoder of rendered scenes (MSE plus a small KL term),
   whose latent scale is then measured and written into its config (SD's
   ``scaling_factor``);
2. the UNet and the text encoder together, on a pool of pre-encoded scenes with
   fresh captions every step: SD's epsilon objective on SD-1.x's noise schedule,
   10 % of captions dropped (so classifier-free guidance works), weights kept as
   an exponential moving average, which is what is saved.

The result is an ordinary diffusers folder (``--out``, default the package's
``model/``), float16, loaded by wisp like any built-in.  The run is seeded, but
its phases are timed, so the step count (and the weights) depend on the machine.

``--resume FOLDER`` continues a saved model (no VAE phase) for ``--minutes``
more; ``--probe-weight`` adds an auxiliary loss that asks the text encoder, at
its end-of-text token, which colour, shape, place, size and background the
caption names (:class:`AttributeProbe`; it taught the model where shapes go
far faster than the denoising loss alone); ``--min-snr 5`` weights the loss
by Min-SNR-γ; ``--sides 64,128`` also trains on 128-px pictures.
``--decoder-only`` spends the minutes on the VAE's decoder alone
(:func:`train_decoder`).  That stage mattered most for the earlier weights: their VAE's posterior had a
standard deviation of ~1 (its KL weight is tiny), so the denoiser learnt to
make noisy posterior *samples*, while the decoder had only seen posterior
*means*; decoding samples cost 3× the error, and blurred orange into yellow
and dark green into black.  A decoder taught on samples lifted the metric
from 84 % to 91 % with the same UNet (bench/RESULTS.md).

``--posterior-spread 0.1`` (from nothing) trains the decoder on latents with noise of a tenth of their spread
and then fixes the encoder's posterior standard deviation at exactly that (:func:`fix_posterior_spread`), so
SD's recipe no longer teaches the denoiser half-noise latents.  ``--decoder-minutes M`` keeps the last M
minutes of the budget for :func:`train_decoder` after the denoiser.

The shipped weights: one hour on a 2-core CPU, in two commands (bench/RESULTS.md, "the one-hour recipe")::

    python -m engine.builtin.shapes.train --out /tmp/shapes50 --minutes 50 --vae-minutes 9 \
        --posterior-spread 0.1 --min-snr 5 --batch 48 --evaluate 0
    python -m engine.builtin.shapes.train --resume /tmp/shapes50 --decoder-only --minutes 7 \
        --decoder-noise 3 --batch 16

The first reached 75.8 % of the bench's 120 cases at CFG 1.5 (43 % at CFG 3); the decoder stage, taught on
latents three posterior standard deviations off (what a 20-step sampler hands it is not exact), lifted that to
90.8 % at CFG 2 (95.0 % and 95.8 % on two other case sets), hence the model's default CFG of 2.  The same
stages in one process: ``--minutes 57 --vae-minutes 9 --decoder-minutes 7 --decoder-noise 3 --posterior-spread
0.1 --min-snr 5 --batch 48``; one such run graded 97.5 % on the bench's cases at CFG 2 (not the shipped weights).
The previous weights took 193 CPU-minutes in six ``--resume`` stages (git history of this docstring).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.builtin.shapes import DEFAULT_CFG
from engine.builtin.shapes.architecture import NATIVE_SIDE, TRAIN_BETAS, build_parts
from engine.builtin.shapes.scene import caption, judge, metric_cases, render, sample_scene
from engine.builtin.shapes.tokenizer import build_tokenizer

DEFAULT_OUT = Path(__file__).resolve().parent / "model"


def _images(scenes: list, side: int) -> torch.Tensor:
    arrays = np.stack([np.asarray(render(s, side), dtype=np.float32) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(vae, rng: random.Random, seconds: float, batch: int, log, spread_noise: float = 0.0) -> None:
    """An autoencoder of drawn scenes.  ``spread_noise`` > 0: the decoder learns from the latent means plus Gaussian
    noise of that fraction of the batch's latent spread (what :func:`fix_posterior_spread` then makes the posterior's
    own standard deviation), so that what a denoiser makes need not be exact to decode to the right colours."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start, step = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        for group in optimiser.param_groups:  # cosine from 1e-3 to 1e-4 over the phase
            group["lr"] = 1e-3 * (0.55 + 0.45 * math.cos(math.pi * elapsed / seconds))
        x = _images([sample_scene(rng) for _ in range(batch)], NATIVE_SIDE)
        posterior = vae.encode(x).latent_dist
        # The posterior's mean, not a sample: a plain autoencoder learns in a fraction of the steps on this
        # CPU budget; the tiny KL term only keeps the latents bounded.
        latent = posterior.mean
        if spread_noise > 0:
            latent = latent + spread_noise * latent.detach().std() * torch.randn_like(latent)
        reconstruction = vae.decode(latent).sample
        loss = F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step}: mse {F.mse_loss(reconstruction, x).item():.4f}")


@torch.no_grad()
def fix_posterior_spread(vae, rng: random.Random, fraction: float) -> float:
    """Make the encoder's posterior standard deviation a constant ``fraction`` of the latent means' spread (the
    log-variance half of ``quant_conv`` set to a constant), so that a posterior sample is exactly what the decoder
    was trained on.  Left alone, an encoder trained on means keeps the initial standard deviation of ~1 against
    means of spread ~1.5: SD's recipe then teaches the denoiser to make latents that are half noise (the first
    weights' flaw, bench/RESULTS.md).  Returns the spread."""
    means = torch.cat([vae.encode(_images([sample_scene(rng) for _ in range(64)], NATIVE_SIDE)).latent_dist.mean
                       for _ in range(4)])  # fmt: skip
    spread = float(means.std())
    half = vae.quant_conv.out_channels // 2
    vae.quant_conv.weight[half:] = 0.0
    vae.quant_conv.bias[half:] = 2.0 * math.log(fraction * spread)
    return spread


def train_decoder(vae, rng: random.Random, seconds: float, batch: int, log, lr: float = 5e-4, noise: float = 1.0) -> None:
    """Fine-tune the VAE's decoder alone (the encoder, hence the latent space the UNet learnt, stays as it is): the
    decoder is what turns a latent into the colours the metric reads, and 10 minutes of joint training left it
    mixing orange with yellow and dark green with black (a round trip of drawn scenes passed the metric 90 %)."""
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    for p in vae.quant_conv.parameters():
        p.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, step, running = time.monotonic(), 0, None
    while (elapsed := time.monotonic() - start) < seconds:
        for group in optimiser.param_groups:
            group["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * elapsed / seconds))
        x = _images([sample_scene(rng) for _ in range(batch)], NATIVE_SIDE)
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            # what a denoiser hands over is not exact: the posterior's spread (``noise`` 1: a posterior sample)
            latent = posterior.mean + noise * posterior.std * torch.randn_like(posterior.mean)
        loss = F.mse_loss(vae.decode(latent).sample, x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"decoder step {step} ({elapsed / 60:.1f} min): mse {running:.4f}")
    for p in vae.parameters():
        p.requires_grad_(True)


@torch.no_grad()
def encode_pool(vae, rng: random.Random, count: int, side: int = NATIVE_SIDE) -> tuple[list, torch.Tensor, torch.Tensor]:
    """``count`` scenes drawn ``side`` px square, with their latent means and standard deviations (sampled afresh
    at each use)."""
    scenes, means, stds = [], [], []
    for offset in range(0, count, 256):
        chunk = [sample_scene(rng) for _ in range(min(256, count - offset))]
        posterior = vae.encode(_images(chunk, side)).latent_dist
        scenes += chunk
        means.append(posterior.mean)
        stds.append(posterior.std)
    return scenes, torch.cat(means), torch.cat(stds)


class AttributeProbe(torch.nn.Module):
    """Linear heads that read, from the text encoder's state at the end-of-text token, what the caption names.

    An auxiliary loss while training (``--probe-weight``): it asks the text encoder to gather
    "which colour goes with the shape, which with the background, where, how big" at one token
    from the first steps, which the denoiser alone teaches it only slowly.  The heads are not saved.
    """

    KEYS = ("colour", "shape", "position", "size", "background")

    def __init__(self, width: int, eos_token_id: int) -> None:
        from engine.builtin.shapes.scene import COLOURS, POSITIONS, SHAPES, SIZES

        super().__init__()
        self.eos = eos_token_id
        self.classes = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS), "size": list(SIZES),
                        "background": list(COLOURS)}  # fmt: skip
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, len(v) + 1) for k, v in self.classes.items()})

    def loss(self, hidden: torch.Tensor, ids: torch.Tensor, texts: list[str]) -> torch.Tensor:
        from engine.builtin.shapes.scene import parse_prompt

        at = (ids == self.eos).int().argmax(1)
        state = hidden[torch.arange(len(texts)), at]
        named = [parse_prompt(text) for text in texts]
        total = hidden.new_zeros(())
        for key, head in self.heads.items():
            options = self.classes[key]
            target = torch.tensor([options.index(n[key]) if key in n else len(options) for n in named])
            total = total + F.cross_entropy(head(state), target)
        return total / len(self.heads)


def train_denoiser(text_encoder, unet, tokenizer, pools, scale: float, rng: random.Random, seconds: float, batch: int, log,
                   lr: float = 1e-3, probe_weight: float = 0.0, min_snr: float = 0.0, sample_latents: bool = True):
    """Returns the EMA copies of ``(text_encoder, unet)``.  ``pools``: one per picture size, taken in turn (a pool of
    pictures with 4× the pixels gets a quarter of the batch, so every step costs about the same)."""
    alphas = torch.cumprod(1 - torch.linspace(TRAIN_BETAS["beta_start"] ** 0.5, TRAIN_BETAS["beta_end"] ** 0.5, 1000) ** 2, 0)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    probe = AttributeProbe(text_encoder.config.hidden_size, tokenizer.eos_token_id) if probe_weight > 0 else None
    optimiser = torch.optim.AdamW(params + (list(probe.parameters()) if probe is not None else []), lr=lr, weight_decay=1e-4)
    smallest = min(pool[1].shape[-1] for pool in pools)
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    start, step, running = time.monotonic(), 0, None
    while (elapsed := time.monotonic() - start) < seconds:
        for group in optimiser.param_groups:  # warm-up, then cosine to a tenth over the budget
            group["lr"] = lr * min(1.0, (step + 1) / 200) * (0.55 + 0.45 * math.cos(math.pi * elapsed / seconds))
        scenes, means, stds = pools[step % len(pools)]
        size = max(1, batch * smallest**2 // means.shape[-1] ** 2)
        index = torch.randint(0, len(scenes), (size,), generator=generator)
        latents = means[index] * scale
        if sample_latents:  # SD's recipe; the shipped VAE's posterior std is ~1 (tiny KL weight): its samples are noisy
            latents = latents + stds[index] * torch.randn(means[index].shape, generator=generator) * scale
        texts = ["" if rng.random() < 0.1 else caption(scenes[i], rng) for i in index.tolist()]
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        hidden = text_encoder(ids)[0]
        prediction = unet(noisy, t, hidden).sample
        if min_snr > 0:  # Min-SNR-γ (Hang et al. 2023): less weight on nearly clean steps, where the picture is decided
            snr = a.view(-1) / (1 - a.view(-1))
            weight = torch.clamp(snr, max=min_snr) / snr
            loss = (weight * F.mse_loss(prediction, noise, reduction="none").mean((1, 2, 3))).mean()
        else:
            loss = F.mse_loss(prediction, noise)
        if probe is not None:
            loss = loss + probe_weight * probe.loss(hidden, ids, texts)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1 - decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0:
            log(f"denoiser step {step} ({elapsed / 60:.1f} min): loss {running:.4f} (with the probe's share)")
    return ema_te, ema_unet


def save(out: Path, text_encoder, unet, vae, tokenizer) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**TRAIN_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(str(staging), safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def evaluate(out: Path, count: int, log) -> float:
    """The metric over ``count`` prompt × seed pairs at the model's defaults; the share that passes."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    passed = 0
    for case in metric_cases(count):  # bench/shapes.py's cases, at the model's defaults (20 PNDM steps, CFG 3)
        image = pipe(case.prompt, num_inference_steps=20, guidance_scale=DEFAULT_CFG,
                     generator=torch.Generator().manual_seed(case.seed)).images[0]  # fmt: skip
        scene = case.scene
        passed += judge(image, scene.colour, scene.background, scene.position, scene.size).ok
    log(f"metric: {passed}/{count} pass")
    return passed / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--minutes", type=float, default=57.0, help="whole budget, both phases")
    parser.add_argument("--vae-minutes", type=float, default=10.0, help="of the budget, for the VAE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of the scenes drawn and the noise (a resumed stage may take another)")
    parser.add_argument("--pool", type=int, default=20000, help="pre-encoded scenes for the denoiser")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--evaluate", type=int, default=100, help="prompt × seed pairs graded at the end (0: none)")
    parser.add_argument("--probe-weight", type=float, default=0.3,
                        help="weight of the auxiliary loss that asks the text encoder what the caption names (0: off)")
    parser.add_argument("--sides", default="64", help="picture sizes the denoiser learns from, e.g. 64,128")
    parser.add_argument("--posterior-spread", type=float, default=0.0,
                        help="from nothing: fix the VAE posterior's standard deviation at this fraction of its means' "
                             "spread, the decoder learning with that noise (0: leave the posterior as trained)")
    parser.add_argument("--min-snr", type=float, default=0.0,
                        help="Min-SNR-γ loss weighting, γ (0: plain epsilon MSE)")
    parser.add_argument("--lr", type=float, default=1e-3, help="the denoiser's peak learning rate")
    parser.add_argument("--latents", choices=("sample", "mean"), default="sample",
                        help="what the denoiser learns to make: posterior samples (SD's recipe) or the posterior means")
    parser.add_argument("--decoder-only", action="store_true",
                        help="with --resume: spend --minutes fine-tuning the VAE decoder alone (UNet, text encoder kept)")
    parser.add_argument("--decoder-noise", type=float, default=1.0,
                        help="with --decoder-only or --decoder-minutes: the latents' noise, in posterior standard deviations "
                             "(1: samples)")
    parser.add_argument("--decoder-minutes", type=float, default=0.0,
                        help="of the budget, kept for fine-tuning the VAE decoder alone after the denoiser (0: none)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue from this model folder (its VAE is kept: no VAE phase)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{(time.monotonic() - began) / 60:5.1f} min] {message}", flush=True)

    budget = args.minutes * 60
    sides = [int(side) for side in args.sides.split(",")]
    if args.resume is None:
        tokenizer = build_tokenizer()
        text_encoder, unet, vae = build_parts(tokenizer)
        train_vae(vae, rng, args.vae_minutes * 60, 8, log, spread_noise=args.posterior_spread)
        vae.eval()
        if args.posterior_spread > 0:
            spread = fix_posterior_spread(vae, rng, args.posterior_spread)
            log(f"posterior standard deviation fixed at {args.posterior_spread} × the means' spread {spread:.3f}")
        pools = [encode_pool(vae, rng, args.pool, side) for side in sides]
        scale = float(1.0 / pools[0][1].std())
        vae.register_to_config(scaling_factor=scale)
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(args.resume / "tokenizer"))
        text_encoder = CLIPTextModel.from_pretrained(str(args.resume / "text_encoder"), dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(str(args.resume / "unet"), dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(str(args.resume / "vae"), dtype=torch.float32).eval()
        if args.decoder_only:
            vae.train()
            train_decoder(vae, rng, budget - (time.monotonic() - began), args.batch, log, noise=args.decoder_noise)
            save(args.out, text_encoder, unet, vae.eval(), tokenizer)
            log(f"saved to {args.out}")
            if args.evaluate:
                evaluate(args.out, args.evaluate, log)
            return
        text_encoder.train()
        unet.train()
        pools = [encode_pool(vae, rng, args.pool, side) for side in sides]
        scale = float(vae.config.scaling_factor)
    log(f"vae ready; latent scale {scale:.4f}; pools of {args.pool} encoded at {sides} px")
    decoder_s = args.decoder_minutes * 60
    ema_te, ema_unet = train_denoiser(text_encoder, unet, tokenizer, pools, scale, rng,
                                      budget - decoder_s - (time.monotonic() - began), args.batch, log, lr=args.lr,
                                      probe_weight=args.probe_weight, min_snr=args.min_snr,
                                      sample_latents=args.latents == "sample")  # fmt: skip
    if decoder_s > 0:
        del pools
        vae.train()
        train_decoder(vae, rng, budget - (time.monotonic() - began), 16, log, noise=args.decoder_noise)
        vae.eval()
    save(args.out, ema_te, ema_unet, vae, tokenizer)
    log(f"saved to {args.out}")
    if args.evaluate:
        evaluate(args.out, args.evaluate, log)


if __name__ == "__main__":
    main()
