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

from engine.errors import EngineError, InvalidInput
from engine.pipelines import families
from protocol.errors import ErrorCode


class ControlNetNotRunnable(EngineError):
    """An uploaded ControlNet: stored and searchable, but this build runs only the built-in ones so far."""

    code = ErrorCode.UNSUPPORTED_PARAMETER

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


def load_controlnet(use: ControlUse, device: str, dtype: Any) -> Any:
    """Worker thread: a built-in ControlNet from its folder (uploaded ones are not loadable yet)."""
    import torch
    from diffusers import ControlNetModel

    if use.folder is None:
        raise ControlNetNotRunnable(f"{use.air}: uploaded ControlNets cannot run yet (built-in ones can)",
                                    parameter=f"{use.parameter}.model")
    model = ControlNetModel.from_pretrained(str(use.folder), local_files_only=True, dtype=dtype or torch.float32)
    return model.to(device).eval()


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
