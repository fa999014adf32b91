"""``vae`` overrides: another autoencoder decodes (and, for img2img/inpaint, encodes) one request.

An uploaded VAE (category ``vae``) is a single safetensors file in the
LDM/A1111 layout (``encoder.down.*``, ``decoder.up.*``, ``quant_conv``,
``post_quant_conv``, optionally under ``first_stage_model.``) or in the
diffusers layout (``encoder.down_blocks.*``, …).  SD-1.x and SDXL VAEs have
the same shapes, so the file cannot tell its family: the upload's declared
architecture does, and a VAE of one family is refused on a model of the
other (their latents are scaled differently: 0.18215 vs 0.13025).

The configuration comes from the family and the file's size class, read from
its header (``decoder.conv_in`` is 512 channels wide in the real VAEs, 32 in
wisp's tiny built-ins): the config of SD 1.5's or SDXL's VAE, or that of the
tiny built-in of the family.  A loaded VAE lives in the engine's model cache
(key ``vae|<sha256>|<family>``, so repeated requests do not reload it) and
is pinned while a run uses it.

The swap itself (the model's pipelines get the override for one run, and
their own VAE back afterwards) is :func:`engine.pipelines.vae_swap.vae_override`,
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidInput
from engine.pipelines import families
from engine.pipelines.vae_swap import vae_override
from engine.safetensors_header import ModelLoadError, read_header

__all__ = ["VaeUse", "config_folder", "load_vae", "size_class", "vae_override"]

FULL_DECODER_WIDTH = 512
"""``decoder.conv_in`` output channels of SD 1.x/SDXL VAEs (block_out_channels[-1])."""
TINY_DECODER_WIDTH = 32
"""The same in wisp's tiny built-ins (``tiny_sd15``/``tiny_sdxl``: block_out_channels (32, 32, 32, 32))."""


@dataclass(frozen=True)
class VaeUse:
    """The VAE of a request, resolved (:meth:`engine.models.ModelLibrary.resolve_vae`); ``module`` once loaded."""

    key: str  # cache key: ``vae|<sha256>|<family>``
    air: str
    path: Path
    family: str  # a registered family's name (engine.pipelines.families)
    module: Any = None
    parameter: str = "vae"


def _strip(name: str) -> str:
    return name.removeprefix("first_stage_model.").removeprefix("vae.")


def size_class(shapes: dict[str, tuple[int, ...]], parameter: str = "vae") -> str:
    """``"full"`` or ``"tiny"`` from a VAE file's header (name → shape); anything else is refused."""
    conv_in = next((s for k, s in shapes.items() if _strip(k) == "decoder.conv_in.weight"), None)
    if conv_in is None or len(conv_in) != 4:
        raise InvalidInput("the VAE file has no decoder.conv_in weight: it is not a complete VAE", parameter=parameter)
    if conv_in[1] != 4:
        raise InvalidInput(f"the VAE has {conv_in[1]} latent channels; SD 1.x/SDXL VAEs have 4", parameter=parameter)
    if conv_in[0] == FULL_DECODER_WIDTH:
        return "full"
    if conv_in[0] == TINY_DECODER_WIDTH:
        return "tiny"
    raise InvalidInput(
        f"the VAE's decoder is {conv_in[0]} channels wide; known are {FULL_DECODER_WIDTH} (SD 1.x/SDXL) "
        f"and {TINY_DECODER_WIDTH} (wisp's tiny models)", parameter=parameter,
    )


def config_folder(data_dir: Path, family: str, size: str) -> Path:
    """The folder holding the ``config.json`` of a VAE of ``family`` and size class ``size``.

    ``full``: the real model's configuration; ``tiny``: the family's tiny built-in.
    """
    descriptor = families.get(family)
    return (descriptor.config_folder(data_dir, None) if size == "full" else descriptor.builtin.build(data_dir)) / "vae"


def load_vae(path: Path, data_dir: Path, family: str, device: str = "cpu", dtype: Any = None, parameter: str = "vae") -> Any:
    """An ``AutoencoderKL`` with the weights of ``path`` (LDM or diffusers layout), ready to run."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = size_class(read_header(path), parameter)
    config = AutoencoderKL.load_config(str(config_folder(data_dir, family, size)))
    from engine.registry.integrity import verify_stored_file

    verify_stored_file(path, ModelLoadError, parameter)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file", parameter=parameter) from exc
    if any(_strip(k).startswith("encoder.down.") for k in weights):
        weights = convert_ldm_vae_checkpoint(weights, config)
    else:
        weights = {_strip(k): v for k, v in weights.items()}
    vae = AutoencoderKL.from_config(config)
    expected = vae.state_dict()
    missing = sorted(k for k in expected if k not in weights)
    wrong = sorted(k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        bad = missing or wrong
        raise ModelLoadError(
            f"{path.name} does not fit the {family} VAE configuration: {len(bad)} tensor(s) "
            f"{'missing' if missing else 'of the wrong shape'}: {', '.join(bad[:5])}", parameter=parameter,
        )
    vae.load_state_dict({k: weights[k] for k in expected}, strict=True)
    return vae.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
