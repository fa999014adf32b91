"""The config-only SD-1.5 folder and the choice of config folder per uploaded SD-1.x checkpoint.

No full-size weights are ever allocated here: the real-size modules are
built on the ``meta`` device, and the full-size checkpoint is a *sparse*
safetensors file (a real header, a data region made with ``truncate``), which
is all ``check_checkpoint`` and the folder choice read.  Actually loading a
full-size file takes ~7 GB of memory and ~40 s, so that test runs only with
``WISP_SLOW=1`` (it is not marked ``slow``: pytest.ini registers no such marker).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from math import prod
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.builtin.sd15_config import (
    CLIP_BPE_PATH,
    FIRST_CONV_KEY,
    SD15_FIRST_CONV,
    TINY_FIRST_CONV,
    clip_bpe,
    ensure_sd15_config,
)
from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.errors import InvalidInput
from engine.models import ModelLibrary
from engine.pipelines.stable_diffusion.loading import ModelLoadError, check_checkpoint
from engine.registry.db import Database
from engine.registry.models import ModelRegistry
from engine.upload.safetensors_check import DTYPE_SIZES, read_safetensors_info
from engine.upload.store import ModelStore
from tests.fixtures.checkpoints import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, clip_to_ldm, unet_to_ldm, vae_to_ldm, write_sd15_single_file

BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # OpenAI CLIP's published file

# Parameter counts of runwayml/stable-diffusion-v1-5's components (measured on the meta device).
UNET_PARAMS = 859_520_964
VAE_PARAMS = 83_653_863
TEXT_ENCODER_PARAMS = 123_060_480

Shapes = dict[str, tuple[tuple[int, ...], str]]  # name → (shape, safetensors dtype)


@pytest.fixture(scope="module")
def sd15(engine_data_dir: Path) -> Path:
    return ensure_sd15_config(engine_data_dir)


@pytest.fixture(scope="module")
def meta_models(sd15: Path) -> dict[str, Any]:
    """The three real-size components, built from the folder's configs on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(sd15 / "unet"))),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(sd15 / "vae"))),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(str(sd15 / "text_encoder"), local_files_only=True)),
        }


def original_layout(sd15: Path, meta_models: dict[str, Any]) -> Shapes:
    """Every tensor of a full SD-1.5 single-file checkpoint: original (LDM) name → shape, as F16.

    Mapped from the meta state dicts with the same inverse conversion the
    tiny fixtures use; a few tensors real files carry and loaders ignore
    (the CLIP position ids, the DDPM schedule buffers) are added.
    """
    unet_config = json.loads((sd15 / "unet" / "config.json").read_text())
    vae_config = json.loads((sd15 / "vae" / "config.json").read_text())
    state: dict[str, torch.Tensor] = {}
    state |= {UNET_PREFIX + k: v for k, v in unet_to_ldm(meta_models["unet"].state_dict(), unet_config).items()}
    state |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(meta_models["vae"].state_dict(), vae_config).items()}
    state |= clip_to_ldm(meta_models["text_encoder"].state_dict())
    shapes: Shapes = {k: (tuple(v.shape), "F16") for k, v in state.items()}
    shapes[CLIP_PREFIX + "embeddings.position_ids"] = ((1, 77), "I64")
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
        shapes[name] = ((1000,), "F32")
    return shapes


def write_sparse_safetensors(out: Path, tensors: Shapes) -> Path:
    """A valid safetensors file whose data region is a hole: the header is real, no tensor bytes are written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        shape, dtype = tensors[name]
        size = prod(shape) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # as safetensors' own writer pads
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return out


@pytest.fixture(scope="module")
def full_size_file(sd15: Path, meta_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sparse_safetensors(tmp_path_factory.mktemp("sd15-ckpt") / "sd15-full.safetensors", original_layout(sd15, meta_models))


@pytest.fixture
def library(engine_data_dir: Path, tmp_path: Path) -> ModelLibrary:
    return ModelLibrary(engine_data_dir, "cpu", ModelRegistry(Database(tmp_path / "wisp.db")), ModelStore(tmp_path / "store"))


# ---- the vendored vocabulary and the tokenizer --------------------------------------


def test_vendored_bpe_file_is_openai_clips():
    data = CLIP_BPE_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == BPE_SHA256
    assert len(data) == 1_356_917
    assert gzip.decompress(data).startswith(b'"bpe_simple_vocab_16e6.txt#version: 0.2\n')
    licence = (CLIP_BPE_PATH.parent / "LICENSE").read_text()
    assert "Copyright (c) 2021 OpenAI" in licence and "MIT License" in licence


def test_vocabulary_is_built_like_simple_tokenizer():
    vocab, merges = clip_bpe()
    assert len(vocab) == 49408 and len(merges) == 49152 - 256 - 2
    assert list(vocab.values()) == list(range(49408))
    # Landmarks of openai/clip-vit-large-patch14's vocab.json.
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["a</w>"] == 320 and vocab["cat</w>"] == 2368
    assert vocab["".join(merges[0])] == 512 and merges[0] == ("i", "n")
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_tokenizer_folder_encodes_like_clip(sd15: Path):
    from transformers import CLIPTokenizer

    folder = sd15 / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("A  Photo of a CAT").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # lower-cased, spaces folded
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer.model_max_length == 77
    padded = tokenizer("cat " * 200, padding="max_length", truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[0] == 49406 and padded[-1] == 49407
    # The classic files, for any other CLIP tokenizer implementation.
    vocab, merges = clip_bpe()
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and [tuple(line.split(" ")) for line in lines[1:]] == merges
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 77


# ---- the component configs -------------------------------------------------------------


def test_configs_hold_sd15_values(sd15: Path):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    index = json.loads((sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"] and index["safety_checker"] == [None, None]
    assert not list(sd15.rglob("*.safetensors")) and not list(sd15.rglob("*.bin"))  # config only

    unet = UNet2DConditionModel.load_config(str(sd15 / "unet"))
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["layers_per_block"] == 2
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert (unet["sample_size"], unet["in_channels"], unet["out_channels"]) == (64, 4, 4)
    assert (unet["attention_head_dim"], unet["cross_attention_dim"], unet["norm_num_groups"]) == (8, 768, 32)

    vae = AutoencoderKL.load_config(str(sd15 / "vae"))
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["layers_per_block"] == 2
    assert (vae["latent_channels"], vae["sample_size"], vae["scaling_factor"]) == (4, 512, 0.18215)

    text = CLIPTextConfig.from_pretrained(str(sd15 / "text_encoder"), local_files_only=True)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (768, 3072, 12, 12)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_act, text.projection_dim) == (77, 49408, "quick_gelu", 768)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (49406, 49407, 1)

    scheduler = PNDMScheduler.from_pretrained(str(sd15 / "scheduler"), local_files_only=True).config
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert scheduler.skip_prk_steps and not scheduler.set_alpha_to_one and scheduler.steps_offset == 1
    assert scheduler.num_train_timesteps == 1000 and scheduler.prediction_type == "epsilon"
    assert json.loads((sd15 / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False


def test_real_size_modules_have_sd15_parameter_counts(meta_models: dict[str, Any]):
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in meta_models.items()}
    assert counts["unet"] == pytest.approx(UNET_PARAMS, rel=1e-3)
    assert counts["vae"] == pytest.approx(VAE_PARAMS, rel=1e-3)
    assert counts["text_encoder"] == pytest.approx(TEXT_ENCODER_PARAMS, rel=1e-3)
    assert all(p.device.type == "meta" for model in meta_models.values() for p in model.parameters())


def test_folder_is_written_once_and_atomically(sd15: Path, engine_data_dir: Path):
    stamp = (sd15 / "model_index.json").stat().st_mtime_ns
    assert ensure_sd15_config(engine_data_dir) == sd15
    assert (sd15 / "model_index.json").stat().st_mtime_ns == stamp
    assert sd15.name == "sd15-config-v1"
    assert not list((engine_data_dir / "builtin").glob(".building-*"))


# ---- a full-size checkpoint and the choice of folder ------------------------------------


def test_sparse_full_size_checkpoint_matches_the_sd15_folder(full_size_file: Path, sd15: Path, engine_data_dir: Path):
    info = read_safetensors_info(full_size_file)  # a well-formed file by wisp's own strict reader
    assert info.file_size > 2_000_000_000  # ~2.1 GB of F16 …
    assert full_size_file.stat().st_blocks * 512 < 16 * 1024 * 1024  # … none of it written
    assert info.tensors[FIRST_CONV_KEY].shape == SD15_FIRST_CONV
    check_checkpoint(full_size_file, sd15)  # every tensor at the right shape
    with pytest.raises(ModelLoadError, match="UNet tensor"):
        check_checkpoint(full_size_file, ensure_tiny_sd15(engine_data_dir))  # what every real upload hit before


def test_library_picks_the_folder_that_fits(library: ModelLibrary, full_size_file: Path, sd15: Path,
                                            engine_data_dir: Path, tmp_path: Path):
    assert library.config_folder("sd1x", full_size_file) == sd15
    assert library.config_folder("sdhyper", full_size_file) == sd15  # the whole SD-1.x family
    tiny = ensure_tiny_sd15(engine_data_dir)
    tiny_file = write_sd15_single_file(tiny, tmp_path / "tiny.safetensors", torch.float16)
    assert read_safetensors_info(tiny_file).tensors[FIRST_CONV_KEY].shape == TINY_FIRST_CONV
    assert library.config_folder("sd1x", tiny_file) == tiny
    check_checkpoint(tiny_file, library.config_folder("sd1x", tiny_file))
    assert library.config_folder("sd1x") == sd15  # no file: the real architecture


def test_file_without_a_first_conv_is_left_to_the_header_check(library: ModelLibrary, sd15: Path, tmp_path: Path):
    headless = write_sparse_safetensors(tmp_path / "no-unet.safetensors", {"first_stage_model.encoder.conv_in.weight": ((128, 3, 3, 3), "F16")})
    assert library.config_folder("sd1x", headless) == sd15
    with pytest.raises(ModelLoadError, match="no UNet weights"):
        check_checkpoint(headless, sd15)


@pytest.mark.parametrize(
    "shape, hint",
    [((64, 4, 3, 3), None), ((320, 9, 3, 3), "9 input channels"), ((320, 4, 1, 1), None)],
    ids=["other-width", "inpainting", "other-kernel"],
)
def test_unknown_unet_gets_a_clear_invalid_input(library: ModelLibrary, tmp_path: Path, shape: tuple[int, ...], hint: str | None):
    path = write_sparse_safetensors(tmp_path / "odd.safetensors", {FIRST_CONV_KEY: (shape, "F16")})
    for call in (lambda: library.config_folder("sd1x", path), lambda: library.prove_checkpoint(path, "sd1x")):
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.parameter == "model" and info.value.code == "invalidParameter"
        message = info.value.message
        assert f"first conv {list(shape)}" in message and "matches no configuration wisp ships" in message
        assert "[320, 4, 3, 3]" in message and "[32, 4, 3, 3]" in message
        assert str(tmp_path) not in message
        if hint:
            assert hint in message


def test_other_architectures_are_still_refused(library: ModelLibrary, full_size_file: Path):
    with pytest.raises(InvalidInput, match="architecture sd2x cannot be loaded") as info:
        library.config_folder("sd2x", full_size_file)  # SDXL loads now (tests/engine/test_sdxl.py)
    assert info.value.parameter == "model"


def test_unreadable_file_fails_like_the_loader(library: ModelLibrary, tmp_path: Path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        library.config_folder("sd1x", garbage)


# ---- slow: a real full-size load (WISP_SLOW=1) -------------------------------------------


@pytest.mark.skipif(os.environ.get("WISP_SLOW") != "1", reason="writes a 2 GB checkpoint, ~7 GB RAM, ~40 s; set WISP_SLOW=1")
def test_random_full_size_checkpoint_loads_and_runs(library: ModelLibrary, sd15: Path, meta_models: dict[str, Any], tmp_path: Path):
    from engine.pipelines.stable_diffusion.loading import load_single_file
    from engine.pipelines.stable_diffusion.pipeline import GenerationSpec

    shapes = original_layout(sd15, meta_models)
    path = write_sparse_safetensors(tmp_path / "sd15-random.safetensors", shapes)
    info = read_safetensors_info(path)
    gen = torch.Generator().manual_seed(0)
    with open(path, "r+b") as f:  # fill the hole tensor by tensor: never more than one tensor in memory
        for name, tensor in info.tensors.items():
            if tensor.dtype == "I64":
                values = torch.arange(prod(tensor.shape), dtype=torch.int64)
            elif tensor.dtype == "F32":
                values = torch.rand(prod(tensor.shape), generator=gen)
            else:
                values = (torch.randn(prod(tensor.shape), generator=gen) * 0.02).to(torch.float16)
            f.seek(info.data_start + tensor.begin)
            f.write(values.numpy().tobytes())

    assert library.config_folder("sd1x", path) == sd15
    model = load_single_file(path, sd15)
    pipe = model.base
    assert len(pipe.tokenizer) == 49408
    assert list(pipe.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert sum(p.numel() for p in pipe.unet.parameters()) == UNET_PARAMS
    images = model.run(GenerationSpec(prompt="a photo of a cat", negative_prompt=None, width=64, height=64, steps=1,
                                      cfg_scale=7.0, scheduler="Default", seeds=(1,)))
    assert [image.size for image in images] == [(64, 64)]
