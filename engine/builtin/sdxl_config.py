"""The configuration of full-size SDXL base 1.0, written locally, with no weights.

The SDXL counterpart of :mod:`engine.builtin.sd15_config`: an uploaded SDXL
single file (SGM layout) holds the weights of the UNet, the VAE and both text
encoders, but no configs and no tokenizers; diffusers' ``from_single_file``
takes those from a local diffusers folder.  Nothing may be downloaded, so
this module writes that folder from the values of
``stabilityai/stable-diffusion-xl-base-1.0`` (UNet 320/640/1280 with
transformer depths 1/2/10, CLIP ViT-L + OpenCLIP ViT-bigG text encoders,
Euler scheduler) and the CLIP BPE vocabulary vendored in ``clip_bpe/``; both
SDXL tokenizers share it, the second pads with ``!`` as SDXL's does.

:func:`sdxl_config_for` picks, from a checkpoint's header alone, the folder
that fits a file: this one for real SDXL (and its fine-tunes: Pony,
Illustrious, Turbo, Lightning, …), the built-in tiny SDXL for test files.

SDXL's *refiner* (``sd_xl_refiner_1.0.safetensors`` and its fine-tunes) is
another layout of the family: one text encoder (OpenCLIP bigG, stored as
``conditioner.embedders.0.model.*``), a UNet of 384/768/1536/1536 channels
attending to 1280-wide text and conditioned on an aesthetic score instead of
the crop.  Its folder (:func:`ensure_sdxl_refiner_config`) names
``StableDiffusionXLImg2ImgPipeline`` with ``requires_aesthetics_score``: a
refiner only finishes another model's denoising.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.builtin.build_once import build_once
from engine.builtin.sd15_config import (
    CLIP_VOCAB_SIZE,
    MAX_TOKENS,
    SCHEDULER_CONFIG as SD15_SCHEDULER_CONFIG,
    TEXT_ENCODER_CONFIG as CLIP_L_CONFIG,
    VAE_CONFIG as SD15_VAE_CONFIG,
    _write_json,
    _write_tokenizer,
    config_for_header,
)
from engine.builtin.tiny_sdxl import ensure_tiny_sdxl, ensure_tiny_sdxl_refiner
from engine.safetensors_header import read_header

CONFIG_VERSION = "1"
"""Bump when any value written here changes: a new folder is written beside the old one."""

SDXL_FIRST_CONV: tuple[int, ...] = (320, 4, 3, 3)
"""``conv_in`` of SDXL base (block_out_channels[0] = 320, 4 latent channels)."""
TINY_FIRST_CONV: tuple[int, ...] = (32, 4, 3, 3)
"""``conv_in`` of the built-in tiny SDXL (``tiny_sdxl.UNET_CONFIG``)."""

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.42.1",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 size/crop numbers × 256 + 1280 pooled
    "sample_size": 128,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

# SDXL's VAE has SD's shapes; only its latent scale and default size differ.
VAE_CONFIG: dict[str, Any] = {**SD15_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    # CLIP ViT-L/14's text tower, with the special-token ids SDXL's config carries.
    **CLIP_L_CONFIG,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    # OpenCLIP ViT-bigG/14's text tower with its pooled projection.
    "architectures": ["CLIPTextModelWithProjection"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": MAX_TOKENS,
    "model_type": "clip_text_model",
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "projection_dim": 1280,
    "vocab_size": CLIP_VOCAB_SIZE,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    **{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "_class_name"},
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "use_karras_sigmas": False,
}

TOKENIZER_2_PAD = "!"
"""SDXL's second tokenizer pads with ``!`` (id 0), not ``<|endoftext|>``: the padded positions feed the UNet."""


REFINER_FIRST_CONV: tuple[int, ...] = (384, 4, 3, 3)
"""``conv_in`` of the SDXL refiner 1.0 (block_out_channels[0] = 384)."""

REFINER_MODEL_INDEX: dict[str, Any] = {
    # SDXL's, finishing only: no first text encoder, the empty prompt encoded (not zeros), aesthetic-score conditioning.
    **MODEL_INDEX,
    "_class_name": "StableDiffusionXLImg2ImgPipeline",
    "force_zeros_for_empty_prompt": False,
    "requires_aesthetics_score": True,
    "text_encoder": [None, None],
    "tokenizer": [None, None],
}

REFINER_UNET_CONFIG: dict[str, Any] = {
    # stabilityai/stable-diffusion-xl-refiner-1.0 (what diffusers derives from sgm's sd_xl_refiner.yaml: model_channels
    # 384, channel_mult 1/2/4/4, attention at the middle two levels, transformer depth 4, 64-wide heads, adm 2560).
    **UNET_CONFIG,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "projection_class_embeddings_input_dim": 2560,  # 5 size/crop/aesthetic numbers × 256 + 1280 pooled
    "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."
"""Where a refiner file keeps its one text encoder (a base file has CLIP-L there, as ``…0.transformer.``)."""


def is_refiner_layout(header: dict[str, tuple[int, ...]]) -> bool:
    """Whether a checkpoint's header is SDXL's refiner layout: OpenCLIP as the first and only embedder."""
    return any(k.startswith(REFINER_TEXT_PREFIX) for k in header) and not any(
        k.startswith("conditioner.embedders.1.") for k in header
    )


def _write_text_encoder(folder: Path, config: dict[str, Any]) -> None:
    # Through CLIPTextConfig so the file carries what this transformers version writes.
    from transformers import CLIPTextConfig

    CLIPTextConfig(**{k: v for k, v in config.items() if k != "model_type"}).save_pretrained(str(folder))
    if config["architectures"] != ["CLIPTextModel"]:
        saved = json.loads((folder / "config.json").read_text())
        _write_json(folder / "config.json", {**saved, "architectures": config["architectures"]})


def _write_tokenizer_2(folder: Path) -> None:
    """The CLIP tokenizer again, padding with ``!``."""
    _write_tokenizer(folder)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        _write_json(path, {**json.loads(path.read_text(encoding="utf-8")), "pad_token": TOKENIZER_2_PAD})


def _write_folder(target: Path, unet: dict[str, Any], model_index: dict[str, Any], first_encoder: bool) -> None:
    """A config-only SDXL-family folder at ``target`` (which must not exist yet); ``first_encoder``: with CLIP-L."""
    target.mkdir(parents=True)
    _write_json(target / "unet" / "config.json", unet)
    _write_json(target / "vae" / "config.json", VAE_CONFIG)
    _write_json(target / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    if first_encoder:
        _write_text_encoder(target / "text_encoder", TEXT_ENCODER_CONFIG)
        _write_tokenizer(target / "tokenizer")
    _write_text_encoder(target / "text_encoder_2", TEXT_ENCODER_2_CONFIG)
    _write_tokenizer_2(target / "tokenizer_2")
    _write_json(target / "model_index.json", model_index)  # last: its presence means "complete"


def build(target: Path) -> None:
    """Write the config-only SDXL folder at ``target`` (which must not exist yet)."""
    _write_folder(target, UNET_CONFIG, MODEL_INDEX, first_encoder=True)


def build_refiner(target: Path) -> None:
    """Write the config-only SDXL refiner folder at ``target`` (which must not exist yet)."""
    _write_folder(target, REFINER_UNET_CONFIG, REFINER_MODEL_INDEX, first_encoder=False)


def ensure_sdxl_refiner_config(data_dir: Path) -> Path:
    """Return ``data_dir/builtin/sdxl-refiner-config-v1``, writing it once (atomically)."""
    return build_once(data_dir, f"sdxl-refiner-config-v{CONFIG_VERSION}", build_refiner)


def ensure_sdxl_config(data_dir: Path) -> Path:
    """Return ``data_dir/builtin/sdxl-config-v1``, writing it once (atomically)."""
    return build_once(data_dir, f"sdxl-config-v{CONFIG_VERSION}", build)


def sdxl_config_for(data_dir: Path, path: Path) -> Path:
    """The config folder whose shapes fit the SDXL checkpoint at ``path``, judged from its header.

    Like :func:`engine.builtin.sd15_config.sd1_config_for`: the UNet's first
    conv tells SDXL base from wisp's tiny SDXL; a file without one gets the
    real folder (the loader's header check then says what is missing); any
    other shape is refused up front (a 9-channel inpainting UNet, say).
    A refiner-layout file gets a refiner folder, real or tiny by the same test.
    """
    header = read_header(Path(path))
    if is_refiner_layout(header):
        return config_for_header(
            header, {REFINER_FIRST_CONV: (lambda: ensure_sdxl_refiner_config(data_dir), "the SDXL refiner 1.0 and its fine-tunes"),
                     TINY_FIRST_CONV: (lambda: ensure_tiny_sdxl_refiner(data_dir), "wisp's tiny SDXL refiner")},
            family="SDXL refiner",
        )  # fmt: skip
    return config_for_header(
        header, {SDXL_FIRST_CONV: (lambda: ensure_sdxl_config(data_dir), "SDXL base 1.0 and its fine-tunes"),
               TINY_FIRST_CONV: (lambda: ensure_tiny_sdxl(data_dir), "wisp's tiny SDXL")},
        family="SDXL",
    )  # fmt: skip
