"""One code path for CPU and CUDA: only the device and the weights' dtype differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.builtin.tiny_sdxl import ensure_tiny_sdxl
from engine.core import inference_dtype
from engine.embeddings import EmbeddingUse
from engine.images.previews import preview_data_uris
from engine.lora import LoraUse
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.loading import load_folder
from engine.vae import VaeUse, load_vae
from tests.fixtures.embeddings import write_a1111_embedding, write_ldm_vae
from tests.fixtures.loras import write_lora
from tests.fixtures.generation import png, spec as generation_spec


def test_auto_is_half_on_cuda_and_float32_on_cpu():
    assert inference_dtype("cuda") is torch.float16 and inference_dtype("cuda:1") is torch.float16
    assert inference_dtype("cpu") is None  # float32, the loaders' default


def test_explicit_dtypes():
    assert inference_dtype("cuda", "bfloat16") is torch.bfloat16
    assert inference_dtype("cpu", "bfloat16") is torch.bfloat16
    assert inference_dtype("cuda", "float32") is None
    with pytest.raises(ValueError):
        inference_dtype("cpu", "float16")
    with pytest.raises(ValueError):
        inference_dtype("cpu", "float64")


# ---- the reduced-precision path ------------------------------------------------------------
# CUDA runs float16 by default; this machine has no GPU, so the same code path is run in
# bfloat16 on the CPU: every place that must follow the weights' dtype (LoRA files, textual
# inversions and VAE files stored in float32, latents for previews, batching) is exercised.



def spec(**fields) -> GenerationSpec:
    return generation_spec(**{"scheduler": "Euler a", **fields})


def test_bfloat16_weights_run_every_feature(engine_data_dir: Path, tmp_path: Path):
    folder = ensure_tiny_sd15(engine_data_dir)
    model = load_folder(folder, dtype=torch.bfloat16)
    assert model.base.unet.dtype is torch.bfloat16 and model.base.vae.dtype is torch.bfloat16
    base = png(model.run(spec()))
    assert png(model.run(spec())) == base  # deterministic in reduced precision too

    lora_file = write_lora(folder, tmp_path / "lora.safetensors", fmt="kohya", seed=1, scale=1.0)  # float32 file
    lora = LoraUse(key="sha-lora", path=lora_file, weight=1.0)
    assert png(model.run(spec(loras=(lora,)))) != base
    assert png(model.run(spec(loras=(LoraUse(key="sha-lora", path=lora_file, weight=0.0),)))) == base

    embedding = write_a1111_embedding(tmp_path / "emb.safetensors", vectors=2, seed=1)
    use = EmbeddingUse(key="emb", path=embedding, trigger="foxy", kind="positive", weight=1.0, parameter="embeddings[0].model")
    assert png(model.run(spec(prompt="a foxy fox", embeddings=(use,)))) != png(model.run(spec(prompt="a foxy fox")))

    vae_file = write_ldm_vae(folder, tmp_path / "vae.safetensors", seed=1)
    vae = VaeUse(key="vae", air="t:vae@1", path=vae_file, family="sd1x", module=load_vae(vae_file, engine_data_dir, "sd1x"))
    assert png(model.run(spec(vae=vae))) != base
    assert png(model.run(spec())) == base  # the override is gone again

    seen: list[tuple[int, list[str]]] = []
    model.run(spec(on_step=lambda step, steps, latents: seen.append((step, preview_data_uris(latents, "sd1x"))), step_latents=True))
    assert [step for step, _ in seen] == [1, 2] and all(len(p) == 1 and p[0].startswith("data:image/png") for _, p in seen)
    counted: list[tuple[int, int, object]] = []
    model.run(spec(on_step=lambda step, steps, latents: counted.append((step, steps, latents))))
    assert counted == [(1, 2, None), (2, 2, None)]  # every step reported; without previews no latents are asked of diffusers

    specs = [spec(prompt=f"a red fox {i}", seeds=(30 + i,)) for i in range(3)]
    assert [png([image]) for image in model.run_batch(specs)] == [png(model.run(s)) for s in specs]

    xl = load_folder(ensure_tiny_sdxl(engine_data_dir), dtype=torch.bfloat16)
    assert xl.base.unet.dtype is torch.bfloat16
    assert png(xl.run(spec(cfg_scale=5.0))) == png(xl.run(spec(cfg_scale=5.0)))
