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

The swap: the model's pipelines (the base and its ``from_pipe`` variants,
which share components) get the override as their ``vae`` for the run, and
the model's own VAE object back afterwards, whatever happened — including on
a variant created during the run from the swapped base.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.errors import InvalidInput
from engine.safetensors_header import ModelLoadError, read_header

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
    family: str  # "sd1x" | "sdxl"
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
    """The folder holding the ``config.json`` of a VAE of ``family`` and size class ``size``."""
    if family == "sdxl":
        from engine.builtin.sdxl_config import ensure_sdxl_config
        from engine.builtin.tiny_sdxl import ensure_tiny_sdxl

        return (ensure_sdxl_config if size == "full" else ensure_tiny_sdxl)(data_dir) / "vae"
    from engine.builtin.sd15_config import ensure_sd15_config
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15

    return (ensure_sd15_config if size == "full" else ensure_tiny_sd15)(data_dir) / "vae"


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


@contextmanager
def vae_override(pipes: Callable[[], Any], base: Any, vae: VaeUse | None) -> Iterator[None]:
    """``with vae_override(lambda: model._variants.values(), model.base, spec.vae):`` — the override for the block.

    ``pipes`` returns the model's pipelines *now* (a variant may be created
    inside the block); each gets the override and, on exit, the base's own VAE.
    """
    if vae is None or vae.module is None:
        yield
        return
    own = base.vae
    module = vae.module.to(device=own.device, dtype=own.dtype)
    try:
        for pipe in list(pipes()):
            pipe.vae = module
        yield
    finally:
        for pipe in list(pipes()):
            pipe.vae = own
