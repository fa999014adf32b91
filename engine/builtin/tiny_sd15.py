"""``wisp:tiny-sd15@1``: a tiny model in real SD-1.x shape, built without any download.

Every component is the real diffusers/transformers class (UNet2DConditionModel,
AutoencoderKL with a ×8 latent scale, CLIPTextModel, CLIPTokenizer, PNDM
scheduler), so loading, schedulers, img2img and inpainting run the same code a
real checkpoint does.  The weights are random (seed 0): the model draws
structured noise, not pictures.

The tokenizer is byte-level CLIP BPE with no merges: every byte of the prompt
is one token, so prompts still change the output and truncate at 77 tokens.
"""

from __future__ import annotations

from pathlib import Path

from engine.builtin.build_once import build_once

BUILTIN_SD15_AIR = "wisp:tiny-sd15@1"
BUILD_VERSION = "1"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_level_vocab() -> dict[str, int]:
    """CLIP's vocabulary reduced to single bytes (with and without ``</w>``)."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build(target: Path) -> None:
    """Build the pipeline folder at ``target`` (which must not exist yet)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    vocab_size = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(target), safe_serialization=True)


def ensure_tiny_sd15(data_dir: Path) -> Path:
    """Return the built model's folder under ``data_dir/builtin``, building it once.

    The build goes to a temporary folder that is renamed into place, so a
    crash mid-build leaves nothing that looks finished.
    """
    return build_once(data_dir, f"tiny-sd15-v{BUILD_VERSION}", build)
