"""ControlNets of an imageInference: which ones, loaded how, and how a request's fields map onto diffusers.

A ``controlNet`` item names a ControlNet (a built-in one, or an upload of
category ``controlnet`` of the base model's family), a guide image, a weight
and a step range.  The request runs on the family's diffusers ControlNet
pipeline for its mode (txt2img, img2img, inpaint), made with ``from_pipe`` from
the loaded model so every weight is shared; the ControlNets themselves go
through the model cache like any model (bytes counted, pinned while a run
uses them, shared across requests).

Field mapping: ``weight`` → ``controlnet_conditioning_scale`` (0 leaves the
image bit for bit as without it); ``startStep``/``endStep`` (or their
percentages) → ``control_guidance_start``/``_end`` as fractions of the steps;
``controlMode`` ``controlnet`` → diffusers' guess mode (the guide matters more
than the prompt), ``prompt`` → the weight halved, ``balanced`` → as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InvalidInput
from engine.pipelines import families



BUILTIN_CONTROLNETS: dict[str, Any] = {
    f.builtin_controlnet.air: f for f in families.all() if f.builtin_controlnet is not None
}
"""Built-in ControlNet AIR → its family descriptor."""


@dataclass(frozen=True)
class ControlUse:
    """One ControlNet as a generation uses it (GenerationSpec.controlnets)."""

    key: str
    """Its model-cache key (AIR + build version, or the stored file's hash)."""
    air: str
    family: str
    folder: Path | None
    """A built-in ControlNet's diffusers folder (None: an upload, ``path``)."""
    path: Path | None
    image: Any
    """The guide image, RGB, at the output size."""
    scale: float
    start: float
    end: float
    guess_mode: bool
    parameter: str
    module: Any = field(default=None, compare=False)
    """The loaded ``ControlNetModel`` once the cache has it (``ModelLibrary.use_controlnets``)."""


def step_range(steps: int, start_step: int | None, end_step: int | None, start_pct: float | None, end_pct: float | None,
               parameter: str) -> tuple[float, float]:
    """The item's step range as fractions of ``steps`` (diffusers' ``control_guidance_start``/``_end``)."""
    start = start_step / steps if start_step is not None else (start_pct / 100 if start_pct is not None else 0.0)
    end = end_step / steps if end_step is not None else (end_pct / 100 if end_pct is not None else 1.0)
    start, end = min(max(start, 0.0), 1.0), min(max(end, 0.0), 1.0)
    if start >= end:
        raise InvalidInput(f"the ControlNet's range is empty at {steps} steps (start {start:.2f}, end {end:.2f})",
                           parameter=f"{parameter}.endStep")
    return start, end


def scale_and_mode(weight: float | None, mode: str | None) -> tuple[float, bool]:
    """(conditioning scale, guess mode) of an item's ``weight`` and ``controlMode``."""
    scale = 1.0 if weight is None else float(weight)
    if mode == "prompt":
        return scale / 2, False
    return scale, mode == "controlnet"


FULL_SIZE_CONDITIONING = (16, 32, 96, 256)
"""The guide-image encoder of every published SD-1.x/SDXL ControlNet (lllyasviel's layout)."""


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _full_size_config(family_name: str, data_dir: Path) -> Path:
    """A folder holding the config.json of the family's full-size ControlNet, derived from its U-Net's config (offline)."""
    import json

    from engine.builtin.build_once import build_once

    descriptor = families.get(family_name)

    def build(target: Path) -> None:
        from diffusers import ControlNetModel

        unet = json.loads((descriptor.config_folder(data_dir, None) / "unet" / "config.json").read_text())
        init, _ = ControlNetModel.extract_init_dict(unet)[:2]
        config = {"_class_name": "ControlNetModel", **init, "conditioning_embedding_out_channels": list(FULL_SIZE_CONDITIONING)}
        target.mkdir(parents=True)
        (target / "config.json").write_text(json.dumps(config, indent=1, default=list))

    return build_once(data_dir, f"controlnet-config-{family_name}-v1", build, marker="config.json")


def config_folder_for(shapes: dict[str, tuple[int, ...]], family_name: str, data_dir: Path) -> Path:
    """The config folder an uploaded ControlNet fits, judged from its header's ``shapes``: the built-in tiny one's
    (same tensor names and shapes), else the family's full size."""
    tiny = families.get(family_name).builtin_controlnet
    if tiny is not None:
        folder = tiny.build(data_dir)
        if shapes == _shapes(folder / "diffusion_pytorch_model.safetensors"):
            return folder
    return _full_size_config(family_name, data_dir)


def load_controlnet(use: ControlUse, device: str, dtype: Any, data_dir: Path) -> Any:
    """Worker thread: a built-in ControlNet from its folder, or an uploaded one from its stored file.

    An upload in the diffusers layout is built from its config and loaded
    strictly (every tensor named and shaped as the config says); one in the
    original (LDM) layout goes through diffusers' single-file conversion with
    the same offline config.  Either way a file that does not fit is
    ``modelLoadFailed``, naming the item.
    """
    import torch
    from diffusers import ControlNetModel

    dtype = dtype or torch.float32
    if use.folder is not None:
        return ControlNetModel.from_pretrained(str(use.folder), local_files_only=True, dtype=dtype).to(device).eval()
    from engine.registry.integrity import verify_stored_file
    from engine.safetensors_header import ModelLoadError

    assert use.path is not None
    where = f"{use.parameter}.model"
    verify_stored_file(use.path, ModelLoadError, where)
    shapes = _shapes(use.path)  # the header, read once: which config, and which layout
    folder = config_folder_for(shapes, use.family, data_dir)
    try:
        if any(name.startswith("controlnet_cond_embedding.") for name in shapes):
            from safetensors.torch import load_file

            model = ControlNetModel.from_config(ControlNetModel.load_config(str(folder)))
            model.load_state_dict(load_file(str(use.path)), strict=True)
        else:
            model = ControlNetModel.from_single_file(str(use.path), config=str(folder), local_files_only=True, torch_dtype=dtype)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"{use.air} cannot be loaded as a {use.family} ControlNet ({type(exc).__name__}: {str(exc)[:200]})",
                             parameter=where) from None
    return model.to(device=device, dtype=dtype).eval()


def size_of_folder(folder: Path, dtype: Any) -> int:
    """Bytes a ControlNet folder takes once loaded (from its safetensors headers)."""
    import math

    import torch
    from safetensors import safe_open

    numel = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            numel += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return numel * (dtype or torch.float32).itemsize
