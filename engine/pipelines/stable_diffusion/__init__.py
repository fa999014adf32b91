"""The SD-1.x family: txt2img, img2img and inpainting from one loaded copy of the weights."""

from engine.pipelines.stable_diffusion.loading import ModelLoadError, check_checkpoint, load_single_file
from engine.pipelines.stable_diffusion.pipeline import GenerationSpec, StableDiffusionModel

__all__ = ["GenerationSpec", "ModelLoadError", "StableDiffusionModel", "check_checkpoint", "load_single_file"]
