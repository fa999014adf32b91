"""The SDXL family's descriptor: everything wisp knows about SDXL-shaped models that SD-1.x does not share."""

from __future__ import annotations

from pathlib import Path

from engine.builtin.sdxl_config import ensure_sdxl_config, sdxl_config_for
from engine.builtin import tiny_controlnet
from engine.builtin.tiny_sdxl import BUILD_VERSION, BUILTIN_SDXL_AIR, ensure_tiny_sdxl
from engine.builtin.sdxl_config import REFINER_TEXT_PREFIX
from engine.pipelines.family import BuiltinModel, CheckpointComponent, ModelDefaults, ModelFamily, RefinerLayout, Sniffing
from engine.pipelines.stable_diffusion.family import UNET, VAE
from engine.pipelines.stable_diffusion_xl.pipeline import StableDiffusionXLModel, StableDiffusionXLRefinerModel


def config_folder(data_dir: Path, path: Path | None = None) -> Path:
    """SDXL base 1.0's configuration, or the one matching ``path``'s header (SDXL or the tiny built-in)."""
    return ensure_sdxl_config(data_dir) if path is None else sdxl_config_for(data_dir, path)


FAMILY = ModelFamily(
    name="sdxl",
    title="SDXL",
    architectures={
        "sdxl": ModelDefaults(steps=25, cfg_scale=7.0),
        "sdxldistilled": ModelDefaults(steps=25, cfg_scale=7.0),
        "sdxllcm": ModelDefaults(steps=4, cfg_scale=1.5, scheduler="LCM"),
        "sdxlhyper": ModelDefaults(steps=8, cfg_scale=1.0, scheduler="TCD"),
        "sdxllightning": ModelDefaults(steps=4, cfg_scale=1.0, scheduler="Euler trailing"),
        "sdxlturbo": ModelDefaults(steps=4, cfg_scale=1.0, scheduler="Euler a trailing", strength=0.5),
        "pony": ModelDefaults(steps=25, cfg_scale=7.0, scheduler="Euler a", clip_skip=1),
        "illustrious": ModelDefaults(steps=28, cfg_scale=6.0, scheduler="Euler a", clip_skip=1),
    },
    model_class=StableDiffusionXLModel,
    components=(
        UNET, VAE,
        CheckpointComponent("text_encoder", "text encoder (CLIP ViT-L)", "conditioner.embedders.0.transformer."),
        CheckpointComponent("text_encoder_2", "second text encoder (OpenCLIP)", "conditioner.embedders.1.model."),
    ),  # fmt: skip
    config_folder=config_folder,
    builtin=BuiltinModel(
        air=BUILTIN_SDXL_AIR, name="wisp tiny SDXL (random weights)", architecture="sdxl",
        version=BUILD_VERSION, build=ensure_tiny_sdxl,
    ),  # fmt: skip
    builtin_controlnet=BuiltinModel(
        air=tiny_controlnet.BUILTIN_CONTROLNET_SDXL_AIR, name="wisp tiny ControlNet SDXL (random weights)", architecture="sdxl",
        version=tiny_controlnet.BUILD_VERSION, build=lambda data_dir: tiny_controlnet.ensure_tiny_controlnet(data_dir, "sdxl", ensure_tiny_sdxl),
    ),  # fmt: skip
    training_resolution=1024,
    refines=True,
    refiner_layout=RefinerLayout(
        title="SDXL refiner", pipeline="StableDiffusionXLImg2ImgPipeline",
        components=(UNET, VAE, CheckpointComponent("text_encoder_2", "text encoder (OpenCLIP)", REFINER_TEXT_PREFIX)),
        model_class=StableDiffusionXLRefinerModel,
    ),  # fmt: skip
    preview_factors=(
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
    lycoris_conv_projections=False,  # SDXL's transformer blocks project in/out with linear layers
    sniffing=Sniffing(
        context_widths=(2048, 1280),  # 1280: the refiner
        embedding_parts={"clip_l": 768, "clip_g": 1280},
        tiny_embedding_parts={"clip_l": 32, "clip_g": 64},  # tiny_sdxl.TEXT_WIDTHS (a test checks it)
        lora_names=(
            (r"[^:]+:te2:", "a second text encoder"),
            (r"kohya:te1:", "lora_te1_ keys"),
            # SD 1.x/2.x transformers are one block deep; SDXL's are 2 or 10.
            (r"[^:]+:unet:.*transformer_blocks_([1-9]\d*)_", "transformers deeper than one block"),
        ),
        lora_names_weak=(
            (
                r"kohya:unet:(input_blocks|output_blocks|middle_block)_",
                "kohya U-Net names in LDM layout (input_blocks/output_blocks), as kohya writes for SDXL",
            ),
        ),
        checkpoint_keys=("conditioner.embedders.", "model.diffusion_model.label_emb."),
        checkpoint_keys_why="SDXL conditioner/label_emb keys",
        controlnet_keys=("label_emb.", "add_embedding."),  # the class/size embedding
        controlnet_zero_convs=9,
    ),
)
