"""The untrained parts of ``wisp:shapes-sd15@1``: real SD-1.x classes, sized for a toy world.

The same diffusers/transformers classes and folder layout as any SD-1.x
checkpoint (``UNet2DConditionModel``, ``AutoencoderKL`` with four blocks, i.e. a
×8 latent, ``CLIPTextModel``, ``CLIPTokenizer``), so LoRA, training, ControlNet,
schedulers and single-file export all run on it unchanged.  Small enough that
the weights stay under ~20 MB and a 64-pixel picture takes a few milliseconds a
step on one core.
"""

from __future__ import annotations

from typing import Any

NATIVE_SIDE = 64
"""The side the model was trained at (its default width and height)."""

TRAIN_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
"""SD-1.x's noise schedule: every scheduler wisp offers is configured from it."""


def build_parts(tokenizer: Any) -> tuple[Any, Any, Any]:
    """``(text_encoder, unet, vae)`` with fresh weights (seeded: the same on every machine)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = len(tokenizer)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=NATIVE_SIDE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=NATIVE_SIDE,
    )
    return text_encoder, unet, vae
