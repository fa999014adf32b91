"""``wisp:tiny-controlnet-sd15@1`` and ``wisp:tiny-controlnet-sdxl@1``: ControlNets for the tiny built-in models.

Each is diffusers' own :class:`~diffusers.ControlNetModel`, made from its
family's tiny U-Net with ``from_unet`` (so its blocks match the U-Net it
steers), built offline on first use.  A freshly made ControlNet's output
convolutions are zero (it changes nothing until trained); here they get small
random weights (seed 1), so the built-in ControlNet visibly changes the image
and tests can tell a guide image, a weight and a step range apart.  Like the
built-in checkpoints it draws structured noise, not pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.builtin.build_once import build_once

BUILD_VERSION = "1"
BUILTIN_CONTROLNET_SD15_AIR = "wisp:tiny-controlnet-sd15@1"
BUILTIN_CONTROLNET_SDXL_AIR = "wisp:tiny-controlnet-sdxl@1"


def _builder(base_folder: Path) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        import torch
        from diffusers import ControlNetModel, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(base_folder / "unet"))
        torch.manual_seed(1)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))  # three ×2 steps: the VAE's ×8
        with torch.no_grad():
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:  # zero at birth
                conv.weight.normal_(0.0, 0.05)
                conv.bias.normal_(0.0, 0.05)
            # The guide's path (zero at its end, small elsewhere): weights that carry its pattern through, so two
            # guide images give two different images (2/sqrt(fan-in): neither fading nor blowing up over its 8 convs).
            for conv in controlnet.controlnet_cond_embedding.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.normal_(0.0, 2.0 / conv.weight[0].numel() ** 0.5)
                    conv.bias.zero_()
        controlnet.save_pretrained(str(target), safe_serialization=True)

    return build


def ensure_tiny_controlnet(data_dir: Path, name: str, base: Callable[[Path], Path]) -> Path:
    """The ControlNet folder for the built-in model ``base`` builds (``name``: ``sd15`` or ``sdxl``), built once."""
    folder = base(data_dir)  # built first, outside this build's lock
    return build_once(data_dir, f"tiny-controlnet-{name}-v{BUILD_VERSION}", _builder(folder), marker="config.json")
