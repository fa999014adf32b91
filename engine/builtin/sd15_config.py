"""The configuration of full-size Stable Diffusion 1.5, written locally, with no weights.

Uploaded SD-1.x checkpoints are single original-layout files: they hold the
weights but not the component configs nor the tokenizer, which diffusers'
``from_single_file`` takes from a local diffusers folder (``config=``,
``local_files_only=True``).  The built-in tiny model's folder only fits
files of its own tiny shapes, so a real SD-1.5 checkpoint (UNet
320/640/1280/1280, CLIP ViT-L/14 text encoder, 49408-token BPE) needs a
folder of the real shapes.  Nothing may be downloaded at run time, so this
module writes that folder from values known here: the configs of
``runwayml/stable-diffusion-v1-5`` and the CLIP BPE vocabulary vendored in
``clip_bpe/`` (OpenAI CLIP, MIT; see its README and LICENSE).

The folder is config-only: a few kilobytes of JSON plus the tokenizer.  The
weights always come from the uploaded file.

:func:`sd1_config_for` picks, from a checkpoint's header alone, which of the
folders wisp ships fits a file, so a tiny test checkpoint and a real one can
both be uploaded as ``sd1x``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable

from engine.builtin.build_once import build_once
from engine.builtin.tiny_sd15 import _bytes_to_unicode, ensure_tiny_sd15
from engine.errors import InvalidInput
from engine.safetensors_header import read_header

CONFIG_VERSION = "1"
"""Bump when any value written here changes: a new folder is written beside the old one."""

CLIP_BPE_PATH = Path(__file__).with_name("clip_bpe") / "bpe_simple_vocab_16e6.txt.gz"
"""OpenAI CLIP's BPE merges, as shipped in the ``clip`` and ``open_clip`` packages."""

CLIP_VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77

FIRST_CONV_KEY = "model.diffusion_model.input_blocks.0.0.weight"
"""The UNet's ``conv_in`` in original (LDM) layout: its shape tells the configurations apart."""

SD15_FIRST_CONV: tuple[int, ...] = (320, 4, 3, 3)
"""``conv_in`` of SD 1.x (block_out_channels[0] = 320, 4 latent channels, 3×3)."""

TINY_FIRST_CONV: tuple[int, ...] = (32, 4, 3, 3)
"""``conv_in`` of the built-in tiny model (``tiny_sd15.build``: block_out_channels[0] = 32)."""

TEXT_WIDTH_KEY = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
SHAPES_TEXT_WIDTH = 64
"""``wisp:shapes-sd15@1``'s text encoder width (engine.builtin.shapes.architecture): its UNet's first conv is the tiny one's."""


MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    # Not shipped: wisp runs no safety checker, so none is configured (as in the tiny model).
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.42.1",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
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
    "sample_size": 64,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}

VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.42.1",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    # CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), which SD 1.x conditions on.
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": MAX_TOKENS,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": CLIP_VOCAB_SIZE,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.42.1",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, built from the vendored file exactly as OpenAI's ``SimpleTokenizer`` does.

    The file's first line is a version header; the next 49152 − 256 − 2
    lines are the merges CLIP was trained with (the file holds more, which
    CLIP never used).  The vocabulary is the 256 byte characters, the same
    with ``</w>``, one token per merge, then the two specials: 49408 ids,
    identical to ``openai/clip-vit-large-patch14``'s ``vocab.json``.
    """
    lines = gzip.decompress(CLIP_BPE_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{CLIP_BPE_PATH.name} is not a CLIP BPE merges file")
    pairs: list[tuple[str, str]] = [(a, b) for a, b in merges]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(p) for p in pairs] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{CLIP_BPE_PATH.name} gave {len(vocab)} tokens, not {CLIP_VOCAB_SIZE}")
    return vocab, pairs


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(folder: Path) -> None:
    """CLIP's tokenizer in both forms: ``tokenizer.json`` (fast load) and ``vocab.json`` + ``merges.txt``.

    transformers 5 saves only ``tokenizer.json``; the classic files are
    written as well so any CLIP tokenizer implementation (older
    transformers, the slow class, other tools) can read the folder.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    _write_json(folder / "special_tokens_map.json", specials)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(specials, model_max_length=MAX_TOKENS, do_lower_case=True, errors="replace", tokenizer_class="CLIPTokenizer")
    _write_json(config_path, config)


def build(target: Path) -> None:
    """Write the config-only SD-1.5 folder at ``target`` (which must not exist yet)."""
    from transformers import CLIPTextConfig

    target.mkdir(parents=True)
    _write_json(target / "unet" / "config.json", UNET_CONFIG)
    _write_json(target / "vae" / "config.json", VAE_CONFIG)
    _write_json(target / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    # Through CLIPTextConfig so the file carries what this transformers version writes.
    CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER_CONFIG.items() if k != "model_type"}).save_pretrained(
        str(target / "text_encoder")
    )
    _write_tokenizer(target / "tokenizer")
    _write_json(target / "model_index.json", MODEL_INDEX)  # last: its presence means "complete"


def ensure_sd15_config(data_dir: Path) -> Path:
    """Return ``data_dir/builtin/sd15-config-v1``, writing it once.

    Written to a temporary folder that is renamed into place, so a crash
    mid-build leaves nothing that looks finished, and two processes racing
    both end with the same complete folder.
    """
    return build_once(data_dir, f"sd15-config-v{CONFIG_VERSION}", build)


def sd1_config_for(data_dir: Path, path: Path) -> Path:
    """The config folder whose shapes fit the SD-1.x checkpoint at ``path``, judged from its header.

    The UNet's first conv tells the shipped configurations apart, but for
    the two small built-ins that share it: a text encoder 64 wide is
    ``wisp:shapes-sd15@1``'s (a single-file export of it loads with its own
    folder), 32 wide the tiny test model's.  A file without one gets the SD-1.5 folder, so the loader's
    header check (which runs next) reports what is missing in its own
    words; an unreadable file raises
    :class:`~engine.safetensors_header.ModelLoadError`.  A
    first conv of any other shape raises :class:`InvalidInput`: loading it
    with a wrong config could only fail later with a less clear error.
    """
    header = read_header(Path(path))
    if tuple(header.get(FIRST_CONV_KEY) or ()) == TINY_FIRST_CONV and tuple(header.get(TEXT_WIDTH_KEY) or ()) == (SHAPES_TEXT_WIDTH,):
        from engine.builtin.shapes import shapes_folder

        return shapes_folder(data_dir)
    return config_for_header(
        header, {SD15_FIRST_CONV: (lambda: ensure_sd15_config(data_dir), "Stable Diffusion 1.x"),
               TINY_FIRST_CONV: (lambda: ensure_tiny_sd15(data_dir), "wisp's tiny test model")},
        family="SD-1.x",
    )  # fmt: skip


def config_for_header(
    header: dict[str, tuple[int, ...]], known: dict[tuple[int, ...], tuple[Callable[[], Path], str]], family: str,
) -> Path:
    """Shared by both families: the folder ``known`` gives for the UNet's first-conv shape in a checkpoint's
    ``header`` (:func:`~engine.safetensors_header.read_header`).

    ``known`` maps shape → (makes the folder, label for messages); the first
    entry is the real model, also used for a file without that tensor.
    """
    shape = header.get(FIRST_CONV_KEY)
    full = next(iter(known))
    if shape is None:
        return known[full][0]()
    if tuple(shape) in known:
        return known[tuple(shape)][0]()
    hint = ""
    if len(shape) == 4 and shape[0] == full[0] and shape[1] != full[1]:
        hint = f" ({shape[1]} input channels: an inpainting or other conditioned UNet, which this build cannot load)"
    listed = " and ".join(f"{list(k)} ({label})" for k, (_, label) in known.items())
    raise InvalidInput(
        f"this {family} checkpoint's UNet (first conv {list(shape)}{hint}) matches no configuration wisp ships: known are {listed}",
        parameter="model",
    )
