"""The SDXL family: txt2img, img2img and inpainting from one loaded copy of the weights."""

from engine.pipelines.stable_diffusion_xl.pipeline import StableDiffusionXLModel

__all__ = ["StableDiffusionXLModel"]
