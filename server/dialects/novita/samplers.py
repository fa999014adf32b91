"""Novita's sampler names (A1111's) → wisp scheduler names (``engine/schedulers.py``).

Exact where diffusers has the same sampler.  Two are the nearest diffusers
offers, as diffusers' own A1111 table suggests: "DPM++ 2S a" (and its Karras
variant) run DPM-Solver++ single-step (``DPM++ 1S`` / ``DPM++ 1S Karras``:
the same solver order and sigmas, without ancestral noise), and "PLMS" runs PNDM (PLMS steps
with the PRK warm-up skipped by SD configs).  Novita names with no diffusers
counterpart in wisp (LMS (needs scipy), DPM++ SDE, DPM fast/adaptive, 3M SDE, Restart, the
Exponential and Heun-SDE variants, Karras DPM2) are refused with the list of
names that work, never silently swapped.
"""

from __future__ import annotations

from server.dialects.errors import DialectError

SAMPLERS: dict[str, str] = {
    "Euler a": "Euler a",
    "Euler": "Euler",
    "Heun": "Heun",
    "DPM2": "DPM2",
    "DPM2 a": "DPM2 a",
    "DPM++ 2M": "DPM++ 2M",
    "DPM++ 2M Karras": "DPM++ 2M Karras",
    "DPM++ 2M SDE": "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras": "DPM++ 2M SDE Karras",
    "DPM++ 2S a": "DPM++ 1S",
    "DPM++ 2S a Karras": "DPM++ 1S Karras",

    "DDIM": "DDIM",
    "PLMS": "PNDM",
    "UniPC": "UniPC",
}
_FOLDED = {name.casefold(): name for name in SAMPLERS}


def scheduler_for(sampler_name: str | None) -> str | None:
    """The wisp scheduler for a Novita ``sampler_name`` (None: the model's default)."""
    if sampler_name is None or not sampler_name.strip():
        return None
    found = _FOLDED.get(sampler_name.strip().casefold())
    if found is None:
        raise DialectError(
            "invalidParameter",
            f"sampler_name {sampler_name[:80]!r} is not available on this server; use one of: {', '.join(SAMPLERS)}",
            parameter="sampler_name",
        )
    return SAMPLERS[found]
