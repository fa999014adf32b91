"""The LoRA file format: what a LoRA file may hold, read and checked before any model sees it.

This module knows files and tensors only: no model, no PEFT, no cache.  The
host-RAM cache of parsed files is :mod:`engine.lora_cache`; putting adapters
on a model and switching between them per request is
:mod:`engine.lora_adapters`.

Formats: kohya/A1111 (``lora_unet_…``/``lora_te_…`` with ``lora_down``,
``lora_up``, ``alpha``; diffusers converts these itself for SD 1.x) and
diffusers/PEFT (``unet.….lora_A.weight``/``lora_B.weight``,
``text_encoder.…``).  LyCORIS LoHa and LoKr files are converted to an
exactly equivalent kohya LoRA when uploaded (:mod:`engine.upload.lycoris`),
so the store never holds them; an unconverted one (stored before that
existed) is refused here.  LyCORIS OFT/BOFT, GLoRA, full diffs and
CP-decomposed LoCon need layer types that diffusers' SD loader never builds,
so they are refused with a clear :class:`LoraLoadError` instead of failing
deep inside diffusers; so is DoRA, which diffusers would silently apply as a
plain LoRA.

Kohya alphas that differ between layers are folded into ``lora_up`` before
diffusers sees the file: diffusers 0.42 builds PEFT's ``alpha_pattern`` for
SD-1.x kohya files from its intermediate key names
(``…processor.to_q_lora.down.weight``), which match no module, so a file
whose layers have different alphas (LoCon's ``conv_alpha`` ≠
``network_alpha``, or any hand-mixed file) would get the most common alpha on
every layer.  A file with one alpha throughout is left as it is (diffusers
gets that right, and folding would cost a float32 copy of every ``lora_up``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from engine.errors import EngineError
from protocol.errors import ErrorCode

# Key fragments of adapter types diffusers' SD loader cannot apply, by display name.
# LoHa and LoKr are converted at upload (CONVERTED_AT_UPLOAD); the rest are refused there too.
_UNSUPPORTED_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("LyCORIS LoHa", re.compile(r"\.hada_(?:w[12]_[ab]|t[12])$")),
    ("LyCORIS LoKr", re.compile(r"\.lokr_(?:w[12](?:_[ab])?|t[12])$")),
    ("LyCORIS LoCon with CP decomposition (lora_mid)", re.compile(r"\.lora_mid\.weight$")),
    ("LyCORIS OFT/BOFT", re.compile(r"\.(?:oft_blocks|oft_diag|boft_blocks)$")),
    ("LyCORIS full-weight diff", re.compile(r"\.(?:diff|diff_b)$")),
    ("LyCORIS GLoRA", re.compile(r"\.(?:a1|a2|b1|b2)\.weight$")),
    # diffusers drops ``dora_scale`` with a warning and applies the rest as a
    # plain LoRA, which is a different (wrong) update.
    ("DoRA", re.compile(r"\.dora_scale$|\.lora_magnitude_vector(?:\.weight)?$")),
)
CONVERTED_AT_UPLOAD = ("LyCORIS LoHa", "LyCORIS LoKr")
"""Kinds an upload rewrites as a plain LoRA (engine.upload.lycoris); a stored file of these predates that."""
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# One key per adapted layer: kohya ``lora_down``, PEFT ``lora_A``, old diffusers ``lora.down``.
_DOWN_KEY = re.compile(r"(?:lora_A|[._]down)\.weight$")


class LoraLoadError(EngineError):
    """A LoRA file cannot be applied to the model: unreadable, unsupported type, or for another architecture."""

    code = ErrorCode.LORA_LOAD_FAILED


@dataclass(frozen=True)
class LoraUse:
    """One LoRA of a request.

    ``key`` identifies the file's content (its sha256): adapters are cached by
    it, so the same file under two names is loaded once and a changed file
    under the same name is not mistaken for the old one.
    """

    key: str
    path: Path
    weight: float


def unsupported_kind(keys: Iterable[str], allow: Iterable[str] = ()) -> str | None:
    """The display name of the first adapter type among ``keys`` that cannot be applied, or None.

    ``allow``: display names to let through (the upload converts :data:`CONVERTED_AT_UPLOAD`).
    """
    keys, allowed = list(keys), set(allow)
    for name, pattern in _UNSUPPORTED_MARKERS:
        if name not in allowed and any(pattern.search(k) for k in keys):
            return name
    return None


def lora_format(keys: Iterable[str]) -> str:
    """``"kohya"`` or ``"diffusers"`` for a LoRA's tensor names; raises :class:`LoraLoadError` otherwise.

    Cheap (names only), so the library can also call it when a LoRA is uploaded.
    """
    keys = list(keys)
    if not keys:
        raise LoraLoadError("the LoRA file holds no tensors")
    name = unsupported_kind(keys)
    if name is not None:
        hint = "; upload the file again to have it converted" if name in CONVERTED_AT_UPLOAD else ""
        raise LoraLoadError(
            f"{name} adapters are not supported; only LoRA/LoCon "
            f"(lora_down/lora_up or lora_A/lora_B) can be applied{hint}"
        )
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        if not any(k.endswith("lora_down.weight") for k in keys):
            raise LoraLoadError("the kohya-style LoRA has no lora_down/lora_up weights")
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "lora_linear_layer" in k for k in keys):
        return "diffusers"
    raise LoraLoadError("the file is not a LoRA in kohya or diffusers/PEFT format")


def fold_kohya_alphas(state: dict[str, Any]) -> dict[str, Any]:
    """Scale each kohya ``lora_up`` by ``alpha / rank`` and drop the ``alpha`` entries.

    The update ``alpha / rank · up @ down`` is unchanged, and diffusers,
    seeing no alphas, gives every layer PEFT scale 1 (see the module
    docstring for the diffusers bug this avoids).  Like kohya's own loader,
    an alpha of 0 means "no scaling" (alpha = rank).
    """
    import torch

    out = dict(state)
    for key in [k for k in state if k.endswith(".alpha")]:
        stem = key[: -len(".alpha")]
        down, up = state.get(f"{stem}.lora_down.weight"), state.get(f"{stem}.lora_up.weight")
        alpha = float(out.pop(key))
        if down is None or up is None or alpha == 0.0:
            continue
        scale = alpha / down.shape[0]
        if scale != 1.0:
            # one new tensor (to() copies only when the dtype changes); same float32 values as ``up.float() * scale``
            out[f"{stem}.lora_up.weight"] = up * scale if up.dtype == torch.float32 else up.to(torch.float32).mul_(scale)
    return out


def read_lora_file(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` LoRA, format-checked, mixed kohya alphas folded.

    Only safetensors is read: pickled ``.pt``/``.ckpt`` files can run code when
    loaded.  The format check happens before any tensor touches a model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.registry.integrity import verify_stored_file

    verify_stored_file(path, LoraLoadError, None)  # a stored file's bytes still hash to its name (once per process)
    try:
        state = load_file(str(path))
    except FileNotFoundError as exc:
        raise LoraLoadError("the LoRA file is missing from the server's library") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraLoadError("the LoRA file is not a readable safetensors file") from exc
    if lora_format(state.keys()) == "kohya" and _mixed_alphas(state):
        state = fold_kohya_alphas(state)
    return state


def _mixed_alphas(state: Mapping[str, Any]) -> bool:
    """Whether the kohya file's layers have different alphas (or a 0 alpha): only then must they be folded.

    diffusers applies one alpha to every layer (see the module docstring), which
    is right when all are equal; folding then would only cost a float32 copy of
    every ``lora_up``.
    """
    alphas = {float(v) for k, v in state.items() if k.endswith(".alpha")}
    return len(alphas) > 1 or 0.0 in alphas


def count_adapted_layers(state: Mapping[str, Any]) -> int:
    """How many layers a LoRA state dict targets (one ``lora_down``/``lora_A`` key each)."""
    return sum(1 for k in state if _DOWN_KEY.search(k))
