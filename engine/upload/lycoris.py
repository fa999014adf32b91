"""LyCORIS LoHa/LoKr files, rewritten at upload as an exactly equivalent kohya LoRA.

diffusers' SD/SDXL LoRA loaders apply only ``lora_down``/``lora_up`` (kohya)
and ``lora_A``/``lora_B`` (PEFT), so a LoHa or LoKr file is converted once,
when it is uploaded, and the LoRA is what the store keeps (and what the
registry's sha256 names).  Every layer's update is the one LyCORIS defines:

* LoHa: ``ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha / r1``; with Tucker cores
  (``hada_t1``/``hada_t2``, conv layers) each factor is
  ``einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)``.
* LoKr: ``ΔW = kron(w1, w2) · scale`` with ``w1 = lokr_w1`` or
  ``lokr_w1_a @ lokr_w1_b``, ``w2 = lokr_w2``, ``lokr_w2_a @ lokr_w2_b`` or the
  Tucker form of ``lokr_t2``; ``scale = alpha / r`` when a low-rank factor
  is present, 1 otherwise (as LyCORIS, ComfyUI and peft's ``LoKrLayer``).

An alpha of 0 or none means scale 1 (LyCORIS's own convention).  ΔW has rank
at most ``r1·r2`` (LoHa) or ``rank(w1)·rank(w2)`` (LoKr), and it is factored
exactly at that rank without forming it: a Hadamard product of ``A1 B1`` and
``A2 B2`` is ``(A1 • A2)(B1 * B2)`` (row-wise and column-wise Kronecker
products), and ``kron(U1 D1, U2 D2) = kron(U1, U2) kron(D1, D2)``.  Only when
that rank exceeds ``min(out, in·kh·kw)`` is ΔW formed and factored by SVD at
full rank.  Everything is computed in float64 and each component is balanced
by a power of two (exact), so the float32 factors reproduce ΔW to float32
precision; the upload's storage-dtype pass then casts them like any LoRA.

Conv layers (LoCon-style) become kohya conv LoRAs: ``lora_down`` shaped
``(r, in, kh, kw)``, ``lora_up`` ``(out, r, 1, 1)``.  A LoHa/LoKr without a
Tucker core stores a conv factor flattened to ``in·kh·kw`` columns, so the
kernel comes from the layer's name (``conv1``/``in_layers_2`` … are 3×3,
``conv_shortcut``/``skip_connection`` 1×1; ``proj_in``/``proj_out`` are 1×1
convs in SD 1.x and linear elsewhere).  Plain ``lora_down``/``lora_up``
layers in the same file are copied as they are.  The file is read and
written layer by layer, so memory holds one layer at a time.

Refused with :class:`InvalidModelFile` (naming the kind): OFT/BOFT, GLoRA,
full-weight diffs, DoRA, CP-decomposed LoCon, names that are not kohya's,
and layers whose factor shapes do not fit together or fit no layer kind.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from engine.lora import CONVERTED_AT_UPLOAD, unsupported_kind
from engine.pipelines import families
from engine.upload.optimize import ITEMSIZE, header_bytes
from engine.upload.safetensors_check import InvalidModelFile, SafetensorsInfo, TensorInfo

if TYPE_CHECKING:
    import torch

_KOHYA_STEM = re.compile(r"^(lora_unet|lora_te[12]?)_([^.]+)$")
_LOHA = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
_LOHA_TUCKER = frozenset({"hada_t1", "hada_t2"})
_LOKR = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
_LORA = frozenset({"lora_down.weight", "lora_up.weight"})

# U-Net conv layers by kohya module name (diffusers layout for SD 1.x, the original layout kohya uses for SDXL).
_CONV3X3 = re.compile(r"(?:^|_)(?:conv1|conv2|conv_in|conv_out|conv|op|in_layers_2|out_layers_3)$|^input_blocks_0_0$|^out_2$")
_CONV1X1 = re.compile(r"(?:^|_)(?:conv_shortcut|skip_connection)$")
_PROJECTION = re.compile(r"_proj_(?:in|out)$")


def lycoris_kinds(names: Iterable[str]) -> list[str]:
    """``["LoHa"]``, ``["LoKr"]``, both or none: the convertible LyCORIS kinds among tensor names."""
    parts = {name.rsplit(".", 1)[-1] for name in names}
    return [kind for kind, known in (("LoHa", _LOHA | _LOHA_TUCKER), ("LoKr", _LOKR)) if parts & known]


@dataclass
class _Layer:
    stem: str
    kind: str  # "LoHa" | "LoKr" | "LoRA" (copied)
    parts: dict[str, TensorInfo] = field(default_factory=dict)
    out: int = 0
    flat_in: int = 0  # in · kh · kw
    kernel: tuple[int, int] | None = None  # None: a linear layer
    rank: int = 0  # of the written factors
    exact_rank: int = 0  # of the algebraic factorization (> rank: SVD)

    def refuse(self, why: str) -> InvalidModelFile:
        return InvalidModelFile(f"LyCORIS {self.kind} layer {self.stem[:100]!r} {why}")


def to_kohya_lora(info: SafetensorsInfo, dest: Path, family: str) -> str | None:
    """Write the kohya LoRA equivalent to ``info``'s LoHa/LoKr file at ``dest``.

    Returns what was converted (``"LyCORIS LoHa"``, ``"LyCORIS LoKr"`` or
    ``"LyCORIS LoHa/LoKr"``), or None, writing nothing, when the file has no
    LoHa/LoKr layer.  ``family`` (``sd1x``, ``sdxl`` …) decides whether
    ``proj_in``/``proj_out`` are convolutions (its descriptor's
    ``lycoris_conv_projections``; linear for a family this build does not run).  Raises
    :class:`InvalidModelFile` for what cannot be converted exactly.
    """
    kinds = lycoris_kinds(info.tensors)
    if not kinds:
        return None
    other = unsupported_kind(info.tensors, allow=CONVERTED_AT_UPLOAD)
    if other is not None:
        raise InvalidModelFile(f"{other} adapters are not supported; of LyCORIS, only LoHa and LoKr (converted to LoRA) are")
    descriptor = families.family_of(family)
    layers = _plan(info, conv_projections=descriptor is not None and descriptor.lycoris_conv_projections)
    _write(info, layers, dest)
    return "LyCORIS " + "/".join(kinds)


# --------------------------------------------------------------------------- plan (header only)


def _plan(info: SafetensorsInfo, conv_projections: bool) -> list[_Layer]:
    layers: dict[str, _Layer] = {}
    for name, tensor in info.tensors.items():
        stem, _, part = name.partition(".")
        if not _KOHYA_STEM.match(stem):
            raise InvalidModelFile(
                f"LyCORIS tensor {name[:100]!r} is not named the kohya way (lora_unet_…, lora_te_…, lora_te1_…, lora_te2_…)"
            )
        kind = "LoHa" if part in _LOHA | _LOHA_TUCKER else "LoKr" if part in _LOKR else "LoRA" if part in _LORA else None
        if kind is None and part != "alpha":
            raise InvalidModelFile(f"LyCORIS tensor {name[:100]!r} is of no layer kind this server converts (LoHa, LoKr, LoRA)")
        layer = layers.setdefault(stem, _Layer(stem, kind or "LoRA"))
        if kind is not None and layer.parts.keys() - {"alpha"} and layer.kind != kind:
            raise layer.refuse(f"mixes {layer.kind} and {kind} tensors")
        if kind is not None:
            layer.kind = kind
        layer.parts[part] = tensor
    for layer in layers.values():
        if "alpha" in layer.parts and layer.parts["alpha"].numel != 1:
            raise layer.refuse("has an alpha that is not a scalar")
        if layer.kind == "LoHa":
            _plan_loha(layer)
        elif layer.kind == "LoKr":
            _plan_lokr(layer)
        else:
            if layer.parts.keys() - {"alpha"} != _LORA:
                raise layer.refuse("lacks lora_down/lora_up")
            continue
        expected = _named_kernel(layer.stem, conv_projections)
        if layer.kernel is None and expected not in (None, (1, 1)):
            kk = expected[0] * expected[1]
            if layer.flat_in % kk:
                raise layer.refuse(f"has {layer.flat_in} input columns, which fit no {expected[0]}×{expected[1]} convolution")
            layer.kernel = expected
        elif layer.kernel is None:
            layer.kernel = expected
        elif layer.kernel != expected:
            raise layer.refuse(f"has a {layer.kernel[0]}×{layer.kernel[1]} kernel, but that layer is not such a convolution")
        layer.rank = min(layer.exact_rank, layer.out, layer.flat_in)
    return list(layers.values())


def _shape(layer: _Layer, part: str, ndim: int | tuple[int, ...]) -> tuple[int, ...]:
    t = layer.parts.get(part)
    if t is None:
        raise layer.refuse(f"lacks {part}")
    if len(t.shape) not in ((ndim,) if isinstance(ndim, int) else ndim) or 0 in t.shape:
        raise layer.refuse(f"has {part} of shape {list(t.shape)}")
    return t.shape


def _plan_loha(layer: _Layer) -> None:
    tucker = _LOHA_TUCKER & layer.parts.keys()
    if tucker and tucker != _LOHA_TUCKER:
        raise layer.refuse("has only one of hada_t1/hada_t2")
    dims = []
    for i in (1, 2):
        a, b = _shape(layer, f"hada_w{i}_a", 2), _shape(layer, f"hada_w{i}_b", 2)
        if tucker:  # a: (r, out), b: (r, in), t: (r, r, kh, kw)
            t = _shape(layer, f"hada_t{i}", 4)
            if not (a[0] == t[0] and b[0] == t[1]):
                raise layer.refuse(f"has hada_t{i} {list(t)} that does not fit hada_w{i}_a {list(a)} / hada_w{i}_b {list(b)}")
            dims.append((a[1], b[1] * t[2] * t[3], t[0], (t[2], t[3])))
        else:  # a: (out, r), b: (r, in·kh·kw)
            if a[1] != b[0]:
                raise layer.refuse(f"has hada_w{i}_a {list(a)} and hada_w{i}_b {list(b)} of different ranks")
            dims.append((a[0], b[1], b[0], None))
    (out1, in1, r1, k1), (out2, in2, r2, k2) = dims
    if (out1, in1, k1) != (out2, in2, k2):
        raise layer.refuse(f"has factors of different shapes ({out1}×{in1} and {out2}×{in2})")
    layer.out, layer.flat_in, layer.kernel, layer.exact_rank = out1, in1, k1, r1 * r2


def _plan_lokr(layer: _Layer) -> None:
    parts = layer.parts.keys()
    if "lokr_w1" in parts:
        if parts & {"lokr_w1_a", "lokr_w1_b"}:
            raise layer.refuse("has both lokr_w1 and lokr_w1_a/b")
        a, c = _shape(layer, "lokr_w1", 2)
        r1 = min(a, c)
    else:
        (a, r1), (rb, c) = _shape(layer, "lokr_w1_a", 2), _shape(layer, "lokr_w1_b", 2)
        if r1 != rb:
            raise layer.refuse("has lokr_w1_a/lokr_w1_b of different ranks")
    kernel = None
    if "lokr_w2" in parts:
        if parts & {"lokr_w2_a", "lokr_w2_b", "lokr_t2"}:
            raise layer.refuse("has both lokr_w2 and lokr_w2_a/b")
        w2 = _shape(layer, "lokr_w2", (2, 4))
        b, flat = w2[0], math.prod(w2[1:])
        kernel = (w2[2], w2[3]) if len(w2) == 4 else None
        r2 = min(b, flat)
    elif "lokr_t2" in parts:  # a: (r, b), b: (r, d), t: (r, r, kh, kw)
        t, wa, wb = _shape(layer, "lokr_t2", 4), _shape(layer, "lokr_w2_a", 2), _shape(layer, "lokr_w2_b", 2)
        if not (wa[0] == t[0] and wb[0] == t[1]):
            raise layer.refuse(f"has lokr_t2 {list(t)} that does not fit lokr_w2_a {list(wa)} / lokr_w2_b {list(wb)}")
        b, flat, r2, kernel = wa[1], wb[1] * t[2] * t[3], t[0], (t[2], t[3])
    else:
        (b, r2), (rb, flat) = _shape(layer, "lokr_w2_a", 2), _shape(layer, "lokr_w2_b", 2)
        if r2 != rb:
            raise layer.refuse("has lokr_w2_a/lokr_w2_b of different ranks")
    layer.out, layer.flat_in, layer.kernel, layer.exact_rank = a * b, c * flat, kernel, r1 * r2


def _named_kernel(stem: str, conv_projections: bool) -> tuple[int, int] | None:
    """The kernel of a U-Net conv layer by its kohya name; None for a linear layer."""
    m = _KOHYA_STEM.match(stem)
    assert m is not None
    if m[1] != "lora_unet":
        return None
    module = m[2]
    if _CONV3X3.search(module):
        return (3, 3)
    if _CONV1X1.search(module) or (conv_projections and _PROJECTION.search(module)):
        return (1, 1)
    return None


# --------------------------------------------------------------------------- compute (one layer at a time)


def _factors(layer: _Layer, get: Any) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``(up, down)`` in float64 with ``up @ down == ΔW`` (flattened to ``in·kh·kw`` columns), ``layer.rank`` wide."""
    import torch

    def t(part: str) -> torch.Tensor:
        return get(f"{layer.stem}.{part}").to(torch.float64)

    alpha = float(t("alpha")) if "alpha" in layer.parts else 0.0
    if layer.kind == "LoHa":
        pairs = []
        for i in (1, 2):
            a, b = t(f"hada_w{i}_a"), t(f"hada_w{i}_b")
            if f"hada_t{i}" in layer.parts:
                core = t(f"hada_t{i}")
                a, b = a.T, torch.einsum("i j k l, j r -> i r k l", core, b).reshape(core.shape[0], -1)
            pairs.append((a, b))
        (a1, b1), (a2, b2) = pairs
        up = (a1[:, :, None] * a2[:, None, :]).reshape(layer.out, -1)
        down = (b1[:, None, :] * b2[None, :, :]).reshape(-1, layer.flat_in)
        scale = alpha / b1.shape[0] if alpha else 1.0
    else:
        low_rank = None
        if "lokr_w1" in layer.parts:
            u1, d1 = _split_full(t("lokr_w1"))
        else:
            u1, d1 = t("lokr_w1_a"), t("lokr_w1_b")
            low_rank = d1.shape[0]
        if "lokr_w2" in layer.parts:
            w2 = t("lokr_w2")
            u2, d2 = _split_full(w2.reshape(w2.shape[0], -1))
        elif "lokr_t2" in layer.parts:
            core, wb = t("lokr_t2"), t("lokr_w2_b")
            u2, d2 = t("lokr_w2_a").T, torch.einsum("i j k l, j r -> i r k l", core, wb).reshape(core.shape[0], -1)
            low_rank = wb.shape[0]
        else:
            u2, d2 = t("lokr_w2_a"), t("lokr_w2_b")
            low_rank = d2.shape[0]
        up, down = torch.kron(u1.contiguous(), u2.contiguous()), torch.kron(d1.contiguous(), d2.contiguous())
        scale = alpha / low_rank if alpha and low_rank else 1.0
    up = up * scale
    if layer.exact_rank > layer.rank:
        # more factors than ΔW has rows or columns: factor ΔW itself, at full rank (nothing is dropped)
        u, s, vh = torch.linalg.svd(up @ down, full_matrices=False)
        root = s.sqrt()
        return u * root[None, :], root[:, None] * vh
    # balance each component by a power of two (exact): keeps both factors in float16's range when stored
    nu, nd = up.norm(dim=0), down.norm(dim=1)
    ok = (nu > 0) & (nd > 0)
    shift = torch.zeros_like(nu)
    shift[ok] = torch.round(0.5 * torch.log2(nd[ok] / nu[ok]))
    return up * torch.exp2(shift)[None, :], down * torch.exp2(-shift)[:, None]


def _split_full(w: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """``w`` as ``u @ d`` with the identity on its shorter side (rank bound ``min(w.shape)``)."""
    import torch

    rows, cols = w.shape
    if rows <= cols:
        return torch.eye(rows, dtype=w.dtype), w
    return w, torch.eye(cols, dtype=w.dtype)


def _lora_tensors(layer: _Layer, get: Any) -> dict[str, "torch.Tensor"]:
    """The kohya ``lora_down``/``lora_up``/``alpha`` (float32, scale 1) of one converted layer."""
    import torch

    up, down = _factors(layer, get)
    r = layer.rank
    if layer.kernel is None:
        down_t, up_t = down.reshape(r, layer.flat_in), up.reshape(layer.out, r)
    else:
        kh, kw = layer.kernel
        down_t, up_t = down.reshape(r, layer.flat_in // (kh * kw), kh, kw), up.reshape(layer.out, r, 1, 1)
    return {
        f"{layer.stem}.lora_down.weight": down_t.to(torch.float32).contiguous(),
        f"{layer.stem}.lora_up.weight": up_t.to(torch.float32).contiguous(),
        f"{layer.stem}.alpha": torch.tensor(float(r), dtype=torch.float32),
    }


# --------------------------------------------------------------------------- write (streamed)



def _write(info: SafetensorsInfo, layers: list[_Layer], dest: Path) -> None:
    import torch
    from safetensors import safe_open

    entries: list[tuple[str, str, tuple[int, ...]]] = []
    for layer in layers:
        if layer.kind == "LoRA":
            entries += [(f"{layer.stem}.{p}", t.dtype, t.shape) for p, t in sorted(layer.parts.items())]
            continue
        down = (layer.rank, layer.flat_in) if layer.kernel is None else (
            layer.rank, layer.flat_in // (layer.kernel[0] * layer.kernel[1]), *layer.kernel
        )
        up = (layer.out, layer.rank) if layer.kernel is None else (layer.out, layer.rank, 1, 1)
        entries += [
            (f"{layer.stem}.alpha", "F32", ()),
            (f"{layer.stem}.lora_down.weight", "F32", down),
            (f"{layer.stem}.lora_up.weight", "F32", up),
        ]
    for name, dtype, _ in entries:
        if dtype not in ITEMSIZE:
            raise InvalidModelFile(f"tensor {name[:100]!r} has dtype {dtype}; a LoRA's weights are floats")
    sized = [(name, dtype, shape, math.prod(shape) * ITEMSIZE[dtype]) for name, dtype, shape in entries]
    header = header_bytes(sized, {**info.metadata, "wisp_converted_from": "LyCORIS"})
    with safe_open(str(info.path), framework="pt") as src, open(dest, "wb") as out:
        out.write(header)
        written = 0
        for layer in layers:
            if layer.kind == "LoRA":
                tensors = {f"{layer.stem}.{p}": src.get_tensor(f"{layer.stem}.{p}") for p in layer.parts}
            else:
                tensors = _lora_tensors(layer, src.get_tensor)
            for name in sorted(tensors):
                data = tensors[name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                out.write(data)
                written += len(data)
        assert written == sum(size for *_, size in sized), "the converted LoRA's data does not match its header"
        out.flush()
        os.fsync(out.fileno())
