"""``wisp:tiny-sdxl@1``: a tiny model in real SDXL shape, built without any download.

The same idea as :mod:`engine.builtin.tiny_sd15`, for the SDXL family: every
component is the class SDXL base 1.0 uses, configured the way SDXL configures
it, only narrow and shallow.

* two text encoders: ``CLIPTextModel`` (hidden 32, stands in for CLIP ViT-L)
  and ``CLIPTextModelWithProjection`` (hidden 64, stands in for OpenCLIP
  bigG, whose pooled projection conditions the UNet).  The widths differ on
  purpose: diffusers' single-file loader tells the two encoders of a file
  apart by their width, exactly as it does for 768 vs 1280;
* a ``UNet2DConditionModel`` with SDXL's ``addition_embed_type="text_time"``
  (pooled text + size/crop micro-conditioning), linear projections, deeper
  transformers at the lower level, two layers per block and no attention at
  the first level, cross-attention over both encoders' hidden states
  concatenated (32 + 64 = 96 wide);
* an ``AutoencoderKL`` with the ×8 latent scale and SDXL's scaling factor;
* SDXL's Euler scheduler, and two byte-level CLIP tokenizers (the second pads
  with ``!`` like SDXL's ``tokenizer_2``).

The weights are random (seed 0): it draws structured noise, not pictures.

:func:`ensure_tiny_sdxl_refiner` builds the same in the SDXL *refiner* layout
(one text encoder, the second one's; a UNet conditioned on an aesthetic score
instead of the crop): the configuration wisp loads tiny refiner-layout files
with (the tests make such files; it is not a listed model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.builtin.build_once import build_once
from engine.builtin.tiny_sd15 import byte_level_vocab

BUILTIN_SDXL_AIR = "wisp:tiny-sdxl@1"
BUILD_VERSION = "1"

TEXT_WIDTHS = (32, 64)
"""Hidden widths of ``text_encoder`` and ``text_encoder_2`` (SDXL: 768 and 1280)."""
POOLED_WIDTH = 32
"""``text_encoder_2``'s projection (SDXL: 1280)."""
TIME_EMBED_DIM = 8
"""Per-number width of the six size/crop conditions (SDXL: 256)."""

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_WIDTH,
    cross_attention_dim=sum(TEXT_WIDTHS),
    norm_num_groups=32,
)

REFINER_UNET_CONFIG: dict[str, Any] = dict(
    UNET_CONFIG,
    # The refiner attends to the second encoder alone and adds five numbers (size, crop, aesthetic score), not six.
    projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + POOLED_WIDTH,
    cross_attention_dim=TEXT_WIDTHS[1],
)

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    scaling_factor=0.13025,
    force_upcast=False,  # float32 throughout: upcasting would only log warnings
)

SCHEDULER_CONFIG: dict[str, Any] = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    interpolation_type="linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)


def _text_config(vocab_size: int, width: int, act: str, projection: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _shared_parts(vocab: dict[str, int]) -> dict[str, Any]:
    """What the tiny base and the tiny refiner share, built the same way (seed 0 each): the VAE, the second text
    encoder and its tokenizer (padding with ``!`` like SDXL's ``tokenizer_2``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(vocab), TEXT_WIDTHS[1], "gelu", POOLED_WIDTH))
    return {"vae": vae, "text_encoder_2": text_encoder_2, "scheduler": EulerDiscreteScheduler(**SCHEDULER_CONFIG),
            "tokenizer_2": CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="!")}


def build(target: Path) -> None:
    """Build the pipeline folder at ``target`` (which must not exist yet)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(len(vocab), TEXT_WIDTHS[0], "quick_gelu", TEXT_WIDTHS[0]))
    pipe = StableDiffusionXLPipeline(
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77),
        unet=unet,
        **_shared_parts(vocab),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(str(target), safe_serialization=True)


def build_refiner(target: Path) -> None:
    """Build the tiny refiner-layout pipeline folder at ``target`` (which must not exist yet)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    vocab = byte_level_vocab()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**REFINER_UNET_CONFIG)
    pipe = StableDiffusionXLImg2ImgPipeline(
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        **_shared_parts(vocab),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(str(target), safe_serialization=True)


def ensure_tiny_sdxl_refiner(data_dir: Path) -> Path:
    """The tiny refiner-layout folder under ``data_dir/builtin``, built once (atomically)."""
    return build_once(data_dir, f"tiny-sdxl-refiner-v{BUILD_VERSION}", build_refiner)


def ensure_tiny_sdxl(data_dir: Path) -> Path:
    """Return the built model's folder under ``data_dir/builtin``, building it once (atomically)."""
    return build_once(data_dir, f"tiny-sdxl-v{BUILD_VERSION}", build)
