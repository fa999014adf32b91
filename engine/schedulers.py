"""Scheduler names (Runware's and A1111's) mapped to diffusers schedulers.

Each entry is ``name → (diffusers class name, config overrides)``.  Names match
case-insensitively; ``Default`` keeps the model's own scheduler.  A scheduler
is always built from the model's scheduler config, so beta schedules and
timestep spacing stay the model's.
"""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidInput

_KARRAS = {"use_karras_sigmas": True}
_TRAILING = {"timestep_spacing": "trailing"}
"""Timesteps counted back from the last one: what few-step distilled models (Lightning, Turbo) are trained with."""

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Default": ("", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "EulerDiscreteScheduler": ("EulerDiscreteScheduler", {}),
    "Euler Karras": ("EulerDiscreteScheduler", _KARRAS),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler trailing": ("EulerDiscreteScheduler", _TRAILING),
    "Euler a trailing": ("EulerAncestralDiscreteScheduler", _TRAILING),
    "EulerAncestralDiscreteScheduler": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "HeunDiscreteScheduler": ("HeunDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPMSolverMultistepScheduler": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", _KARRAS),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **_KARRAS}),
    "DPM++ 1S": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ 1S Karras": ("DPMSolverSinglestepScheduler", _KARRAS),
    "DPMSolverSinglestepScheduler": ("DPMSolverSinglestepScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "KDPM2DiscreteScheduler": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "KDPM2AncestralDiscreteScheduler": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "DDIMScheduler": ("DDIMScheduler", {"clip_sample": False}),
    "DDPM": ("DDPMScheduler", {"clip_sample": False}),
    "DDPMScheduler": ("DDPMScheduler", {"clip_sample": False}),
    "PNDM": ("PNDMScheduler", {}),
    "PNDMScheduler": ("PNDMScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "DEISMultistepScheduler": ("DEISMultistepScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "UniPCMultistepScheduler": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "LCMScheduler": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
    "TCDScheduler": ("TCDScheduler", {}),
}

_BY_FOLDED = {name.casefold(): name for name in SCHEDULERS}


def canonical_scheduler(name: str | None) -> str:
    """The table's spelling of ``name``; raises :class:`InvalidInput` listing the known names."""
    if name is None:
        return "Default"
    found = _BY_FOLDED.get(name.strip().casefold())
    if found is None:
        raise InvalidInput(
            f"unknown scheduler {name[:80]!r}; known: {', '.join(SCHEDULERS)}",
            parameter="scheduler",
        )
    return found


def make_scheduler(name: str, base_config: Any) -> Any | None:
    """A fresh scheduler for ``name`` built from the model's config, or None for Default."""
    class_name, overrides = SCHEDULERS[canonical_scheduler(name)]
    if not class_name:
        return None
    import diffusers

    cls = getattr(diffusers, class_name)
    return cls.from_config(base_config, **overrides)
