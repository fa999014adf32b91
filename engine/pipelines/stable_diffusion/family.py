"""The SD-1.x family's descriptor: everything wisp knows about SD-1.x-shaped models that SDXL does not share."""

from __future__ import annotations

from pathlib import Path

from engine.builtin.sd15_config import ensure_sd15_config, sd1_config_for
from engine.builtin import shapes, tiny_controlnet
from engine.builtin.tiny_sd15 import BUILD_VERSION, BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.pipelines.family import BuiltinModel, CheckpointComponent, ModelDefaults, ModelFamily, Sniffing
from engine.pipelines.stable_diffusion.pipeline import StableDiffusionModel

UNET = CheckpointComponent("unet", "UNet", "model.diffusion_model.")
VAE = CheckpointComponent("vae", "VAE", "first_stage_model.")


def config_folder(data_dir: Path, path: Path | None = None) -> Path:
    """SD 1.5's configuration, or the one matching ``path``'s header (SD 1.5 or the tiny built-in)."""
    return ensure_sd15_config(data_dir) if path is None else sd1_config_for(data_dir, path)


FAMILY = ModelFamily(
    name="sd1x",
    title="SD-1.x",
    architectures={
        "sd1x": ModelDefaults(steps=20, cfg_scale=7.0),
        "sdhyper": ModelDefaults(steps=8, cfg_scale=1.0, scheduler="TCD"),
        "sd1xlcm": ModelDefaults(steps=4, cfg_scale=1.5, scheduler="LCM"),
    },
    model_class=StableDiffusionModel,
    components=(UNET, VAE, CheckpointComponent("text_encoder", "text encoder", "cond_stage_model.transformer.")),
    config_folder=config_folder,
    builtin=BuiltinModel(
        air=BUILTIN_SD15_AIR, name="wisp tiny SD 1.x (random weights)", architecture="sd1x",
        version=BUILD_VERSION, build=ensure_tiny_sd15,
    ),  # fmt: skip
    extra_builtins=(
        BuiltinModel(
            air=shapes.SHAPES_AIR, name="wisp shapes SD 1.x (coloured shapes, 64 px)", architecture="sd1x",
            version=shapes.BUILD_VERSION, build=shapes.shapes_folder,
            defaults=ModelDefaults(steps=20, cfg_scale=shapes.DEFAULT_CFG, scheduler="Default"),
            comment="trained in this repo on drawn pictures: one coloured shape (circle, square, triangle, star) of a "
                    "colour, size and place on a plain background; nothing else",
        ),
    ),  # fmt: skip
    builtin_controlnet=BuiltinModel(
        air=tiny_controlnet.BUILTIN_CONTROLNET_SD15_AIR, name="wisp tiny ControlNet SD 1.x (random weights)", architecture="sd1x",
        version=tiny_controlnet.BUILD_VERSION, build=lambda data_dir: tiny_controlnet.ensure_tiny_controlnet(data_dir, "sd15", ensure_tiny_sd15),
    ),  # fmt: skip
    training_resolution=512,
    preview_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    lycoris_conv_projections=True,  # SD 1.x's transformer blocks project in/out with 1×1 convolutions
    default_scheduler_adds_a_step=True,  # SD 1.x checkpoints ship PNDM
    sniffing=Sniffing(
        context_widths=(768,),
        embedding_widths=(768,),
        tiny_embedding_widths=(32,),  # tiny_sd15's text encoder: hidden_size 32 (a test checks it)
        lora_names=(
            (r"[^:]+:te:", "a single text encoder (lora_te_)"),
            (r"[^:]+:unet:(down_blocks_0_attentions|input_blocks_[12]_1)_", "attention at the first U-Net level"),
        ),  # SD 1.x/2.x attend at the first U-Net level; SDXL does not
        checkpoint_keys=("cond_stage_model.transformer.",),
        checkpoint_keys_why="CLIP text encoder (cond_stage_model.transformer)",
        controlnet_zero_convs=12,
    ),
)
