"""Tell what a (validated) safetensors model file is from tensor names and shapes.

Users declare a ``category`` and ``architecture`` when they upload a model.
A wrong declaration is cheap to make and expensive to discover later (a
LoRA that silently does nothing, an SDXL LoRA that fails shape checks at
generation time, a checkpoint registered as a LoRA), so the upload sniffs the
file and refuses a mismatch up front, naming both what the file looks like
and what was declared.

Sniffing looks only at the header (:class:`SafetensorsInfo`): names follow a
handful of well-known conventions (LDM/A1111 single-file checkpoints, kohya
and diffusers/PEFT LoRAs, LyCORIS, textual-inversion embeddings, LDM and
diffusers ControlNets and VAEs), and a few widths are tell-tale: the U-Net's
cross-attention context is 768 wide for SD 1.x, 1024 for SD 2.x and 2048
(1280 for the refiner) for SDXL.  Shapes win over names when they are one of
those widths; names decide otherwise (so tiny test models sniff by name).
Where neither decides, the architecture is ``None``: unknown, so any
declaration is accepted rather than refusing a file that may well be right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from engine.pipelines import families
from engine.upload.safetensors_check import InvalidModelFile, SafetensorsInfo, TensorInfo

CATEGORIES = ("checkpoint", "lora", "lycoris", "controlnet", "vae", "embeddings", "upscaler")
"""Every upload category; an ``upscaler`` is never sniffed from names (engine.upscalers detects it with spandrel)."""

_FAMILIES = families.all()

UNRUN_ARCHITECTURES: dict[str, str] = {"sd2x": "sd2x"}
"""Architectures sniffing knows that no family of this build runs (so an upload of one can be told apart)."""

ARCHITECTURE_FAMILIES: dict[str, str] = {
    **{a: f.name for f in _FAMILIES for a in f.architectures},
    **UNRUN_ARCHITECTURES,
}
"""Declared Runware architecture → the weight layout it shares (fine-tunes and distillations keep the base's shapes)."""

CONTEXT_WIDTHS: dict[int, str] = {**{w: f.name for f in _FAMILIES for w in f.sniffing.context_widths}, 1024: "sd2x"}
"""U-Net cross-attention context width (``attn2.to_k`` input) → family (SD-1.x 768, SD-2.x 1024, SDXL 2048 and
1280 for the refiner)."""

TEXT_WIDTHS: dict[int, str] = {**{w: f.name for f in _FAMILIES for w in f.sniffing.embedding_widths}, 1024: "sd2x"}
"""Width of a single text encoder's hidden state (and of a textual-inversion vector)."""

TINY_TI_WIDTHS: dict[int, str] = {w: f.name for f in _FAMILIES for w in f.sniffing.tiny_embedding_widths}
"""Text-encoder width of wisp's tiny built-in SD-1.x (``tiny_sd15``: hidden_size 32); a test checks it."""

_TWO_ENCODERS = next(f for f in _FAMILIES if f.sniffing.embedding_parts)
"""The family whose textual inversions hold one part per text encoder (clip_l + clip_g: SDXL)."""
SDXL_TI_WIDTHS = dict(_TWO_ENCODERS.sniffing.embedding_parts or {})
TINY_SDXL_TI_WIDTHS = dict(_TWO_ENCODERS.sniffing.tiny_embedding_parts or {})
"""``tiny_sdxl.TEXT_WIDTHS``: the tiny built-in SDXL's two text encoders; a test checks it."""

ZERO_CONVS: dict[int, str] = {f.sniffing.controlnet_zero_convs: f.name for f in _FAMILIES if f.sniffing.controlnet_zero_convs}
"""ControlNet zero convolutions (one per U-Net input block) → family: 12 in SD 1.x/2.x, 9 in SDXL."""

_BY_SPECIFICITY = sorted(_FAMILIES, key=lambda f: -len(f.components))
"""The families, a layout with more components first (SDXL before SD-1.x): its name signatures are the more specific."""

_CHECKPOINT_KEYS: tuple[tuple[tuple[str, ...], str, str], ...] = tuple(
    (f.sniffing.checkpoint_keys, f.name, f.sniffing.checkpoint_keys_why) for f in _BY_SPECIFICITY if f.sniffing.checkpoint_keys
)
"""(name prefixes, family, why) of LDM single files, asked when no width decides (SDXL's conditioner
before SD-1.x's single text encoder); SD-2.x's OpenCLIP after them."""


@dataclass(frozen=True)
class Sniffed:
    """What the file looks like: a category, an architecture family (None = undecided) and why."""

    category: str
    architecture: str | None
    detail: str

    def describe(self) -> str:
        """``"a lora for sdxl"``, ``"embeddings for sd1x"``, ``"a vae"`` (architecture undecided)."""
        noun = self.category if self.category == "embeddings" else f"a {self.category}"
        return f"{noun} for {self.architecture}" if self.architecture else noun


def _unrecognised(info: SafetensorsInfo, why: str = "") -> InvalidModelFile:
    names = sorted(info.tensors)
    sample = ", ".join(repr(n[:80] + ("..." if len(n) > 80 else "")) for n in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    reason = f"; {why}" if why else " (an upscaler model, ESRGAN, SwinIR…, is uploaded as category upscaler)"
    return InvalidModelFile(
        f"could not tell what this file is: its tensor names ({sample}{more}) match no supported "
        f"SD 1.x/2.x/XL checkpoint, LoRA, LyCORIS, ControlNet, VAE or embedding layout{reason}"
    )


# --------------------------------------------------------------------------- LoRA / LyCORIS

_KOHYA_RE = re.compile(r"^lora_(unet|te[12]?)_([^.]+)\.(.+)$")
_KOHYA_LORA_SUFFIXES = frozenset(
    {"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"}
)
_LYCORIS_SUFFIXES = frozenset(
    {
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
        "oft_blocks", "oft_diag", "rescale", "diff", "diff_b", "w_norm", "b_norm",
    }
)  # fmt: skip
_LYCORIS_KINDS = {"hada": "LoHa", "lokr": "LoKr", "oft": "OFT", "diff": "full", "w": "norm", "b": "norm"}
_DOWN_PARTS = frozenset({"lora_down.weight", "lora_A", "down", "hada_w1_b"})
"""Parts whose second dimension is the adapted layer's input width (LoHa: W = (w1a·w1b) ⊙ (w2a·w2b))."""
_WEIGHT_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "lora_A", "lora_B", "down", "up"}) | _LYCORIS_SUFFIXES

_DIFFUSERS_PREFIX = r"(unet|text_encoder|text_encoder_2)\.(.+)"
_DIFFUSERS_RES = (
    re.compile(rf"^{_DIFFUSERS_PREFIX}\.(lora_A|lora_B)(?:\.default)?\.weight$"),
    re.compile(rf"^{_DIFFUSERS_PREFIX}\.lora(?:_linear_layer)?\.(down|up)\.weight$"),
    re.compile(rf"^{_DIFFUSERS_PREFIX}\.(alpha|lora_magnitude_vector)(?:\.weight)?$"),
)
# diffusers' first LoRA format: attention processors, U-Net only, no prefix.
_ATTN_PROCS_RE = re.compile(r"^(.+)\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")

_UNET_DIFFUSERS_NAMES = re.compile(r"^(down_blocks|up_blocks|mid_block)_")
_UNET_LDM_NAMES = re.compile(r"^(input_blocks|output_blocks|middle_block)_")
_UNET_OTHER_NAMES = re.compile(
    r"^(conv_in|conv_out|conv_norm_out|time_embedding|time_embed|add_embedding|label_emb|out)(_|$)"
)
_LORA_NAMES = tuple(
    (f.name, tuple((re.compile(pattern), why) for pattern, why in f.sniffing.lora_names),
     tuple((re.compile(pattern), why) for pattern, why in f.sniffing.lora_names_weak))
    for f in _BY_SPECIFICITY
)  # fmt: skip
"""Each family's LoRA name signatures (``Sniffing.lora_names``), compiled, the more specific layout first."""
_CROSS_ATTN_KV = re.compile(r"attn2_to_[kv]$")
_TE_QKV = re.compile(r"self_attn_[qkv]_proj$")


@dataclass(frozen=True)
class _LoraKey:
    style: str  # "kohya" | "diffusers"
    component: str  # "unet" | "te" (kohya, single) | "te1" | "te2" | "text_encoder" (diffusers, ambiguous)
    module: str  # dotted path with "." → "_", as kohya spells it
    part: str
    tensor: TensorInfo

    @property
    def lycoris(self) -> bool:
        return self.part in _LYCORIS_SUFFIXES


def _parse_lora_key(t: TensorInfo) -> _LoraKey | None:
    m = _KOHYA_RE.match(t.name)
    if m:
        component, module, part = m.groups()
        if part not in _KOHYA_LORA_SUFFIXES and part not in _LYCORIS_SUFFIXES:
            return None
        return _LoraKey("kohya", component, module, part, t)
    for regex in _DIFFUSERS_RES:
        m = regex.match(t.name)
        if m:
            prefix, module, part = m.groups()
            component = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "te2"}[prefix]
            return _LoraKey("diffusers", component, module.replace(".", "_"), part, t)
    m = _ATTN_PROCS_RE.match(t.name)
    if m:
        module, proj, part = m.groups()
        return _LoraKey("diffusers", "unet", f"{module}.{proj}".replace(".", "_"), part, t)
    return None


def _input_width(key: _LoraKey) -> int | None:
    shape = key.tensor.shape
    return shape[1] if key.part in _DOWN_PARTS and len(shape) == 2 else None


def _lora_architecture(info: SafetensorsInfo, keys: list[_LoraKey]) -> tuple[str | None, str]:
    """Decide the family of a LoRA/LyCORIS: context width, then text-encoder width, then names."""
    unet = [k for k in keys if k.component == "unet"]
    for k in unet:
        if not (
            _UNET_DIFFUSERS_NAMES.match(k.module) or _UNET_LDM_NAMES.match(k.module) or _UNET_OTHER_NAMES.match(k.module)
        ):
            raise _unrecognised(
                info, f"LoRA module {k.module[:80]!r} is not part of an SD 1.x/2.x/XL U-Net (Flux/SD3 are not supported)"
            )

    context = {
        w for k in unet if _CROSS_ATTN_KV.search(k.module) and (w := _input_width(k)) in CONTEXT_WIDTHS
    }
    archs = {CONTEXT_WIDTHS[w] for w in context}
    if len(archs) == 1:
        return archs.pop(), f"cross-attention context width {'/'.join(map(str, sorted(context)))}"
    if len(archs) > 1:
        return None, f"conflicting cross-attention widths {sorted(context)}"

    te_widths = {
        _input_width(k) for k in keys if k.component in ("te", "text_encoder") and _TE_QKV.search(k.module)
    }
    if 1024 in te_widths:
        return "sd2x", "text encoder width 1024"

    spelled = [f"{k.style}:{k.component}:{k.module}" for k in keys]
    strong = [
        (family, whys)
        for family, names, _ in _LORA_NAMES
        if (whys := [why for pattern, why in names if any(pattern.match(n) for n in spelled)])
    ]
    if len(strong) > 1:
        return None, f"conflicting names: {' but '.join(', '.join(whys) for _, whys in strong)}"
    if strong:
        family, whys = strong[0]
        return family, ", ".join(whys)
    for family, _, weak in _LORA_NAMES:
        for pattern, why in weak:
            if any(pattern.match(n) for n in spelled):
                return family, why
    return None, "names and widths fit more than one architecture"


def _sniff_lora(info: SafetensorsInfo) -> Sniffed | None:
    keys: list[_LoraKey] = []
    for t in info.tensors.values():
        key = _parse_lora_key(t)
        if key is None:
            return None
        keys.append(key)
    if not any(k.part in _WEIGHT_PARTS for k in keys):
        return None
    architecture, why = _lora_architecture(info, keys)
    style = "kohya" if all(k.style == "kohya" for k in keys) else "diffusers"
    if any(k.lycoris for k in keys):
        kinds = sorted({_LYCORIS_KINDS.get(k.part.split("_")[0], "other") for k in keys if k.lycoris})
        return Sniffed("lycoris", architecture, f"LyCORIS ({'/'.join(kinds)}) weights; {why}")
    return Sniffed("lora", architecture, f"{style} LoRA; {why}")


# --------------------------------------------------------------------------- embeddings


def _vector_width(t: TensorInfo) -> int | None:
    return t.shape[-1] if 1 <= len(t.shape) <= 2 else None


def _embedding_family(info: SafetensorsInfo, width: int | None, source: str) -> Sniffed:
    widths = {**TEXT_WIDTHS, **TINY_TI_WIDTHS}
    if width not in widths:
        raise InvalidModelFile(
            f"textual-inversion embedding ({source}) has vectors {width} wide; SD 1.x uses 768 and SD 2.x 1024"
        )
    return Sniffed("embeddings", widths[width], f"textual inversion ({source}), vectors {width} wide")


def _sniff_embeddings(info: SafetensorsInfo) -> Sniffed | None:
    tensors = info.tensors
    names = set(tensors)
    if names & {"clip_l", "clip_g"}:
        if names != {"clip_l", "clip_g"}:
            raise InvalidModelFile(
                "SDXL textual-inversion embedding must hold exactly clip_l and clip_g, "
                f"got {', '.join(repr(n[:40]) for n in sorted(names)[:4])}"
            )
        widths = {n: _vector_width(tensors[n]) for n in ("clip_l", "clip_g")}
        if widths not in (SDXL_TI_WIDTHS, TINY_SDXL_TI_WIDTHS):
            raise InvalidModelFile(
                f"SDXL textual-inversion embedding has clip_l/clip_g vectors {widths['clip_l']}/{widths['clip_g']} "
                "wide; SDXL's text encoders need 768/1280"
            )
        return Sniffed("embeddings", _TWO_ENCODERS.name, "textual inversion for two text encoders (clip_l + clip_g)")
    if names == {"emb_params"}:
        return _embedding_family(info, _vector_width(tensors["emb_params"]), "emb_params")
    params = [n for n in names if n.startswith("string_to_param.")]
    if params and len(params) == len(names):
        widths = {_vector_width(tensors[n]) for n in params}
        return _embedding_family(info, widths.pop() if len(widths) == 1 else None, "string_to_param")
    # diffusers' textual_inversion script: {"<token>": vector}; weights of
    # real layers always have dotted names, tokens do not.
    if len(names) <= 16 and all("." not in n for n in names):
        widths = {_vector_width(t) for t in tensors.values()}
        if len(widths) == 1 and (width := widths.pop()) in {**TEXT_WIDTHS, **TINY_TI_WIDTHS}:
            return _embedding_family(info, width, "token → vector")
    return None


# --------------------------------------------------------------------------- ControlNet / checkpoint / VAE


def _context_width(tensors: Iterable[TensorInfo]) -> tuple[str | None, str]:
    """Family from full-weight ``attn2.to_k``/``to_v`` shapes ([out, context])."""
    widths = {
        t.shape[1]
        for t in tensors
        if re.search(r"\.attn2\.to_[kv]\.weight$", t.name) and len(t.shape) == 2 and t.shape[1] in CONTEXT_WIDTHS
    }
    archs = {CONTEXT_WIDTHS[w] for w in widths}
    if len(archs) == 1:
        return archs.pop(), f"cross-attention context width {'/'.join(map(str, sorted(widths)))}"
    if len(archs) > 1:
        return None, f"conflicting cross-attention widths {sorted(widths)}"
    return None, ""


def _max_index(names: Iterable[str], pattern: str) -> int | None:
    found = [int(m.group(1)) for n in names if (m := re.match(pattern, n))]
    return max(found) if found else None


def _sniff_controlnet(info: SafetensorsInfo) -> Sniffed | None:
    names = list(info.tensors)
    ldm_prefixed = any(n.startswith("control_model.") for n in names)
    ldm_bare = any(n.startswith("input_hint_block.") for n in names)
    diffusers = any(n.startswith("controlnet_cond_embedding.") for n in names)
    if not (ldm_prefixed or ldm_bare or diffusers):
        return None
    layout = "diffusers" if diffusers else "LDM"
    arch, why = _context_width(info.tensors.values())
    if arch is None and not why:
        bare = [n.removeprefix("control_model.") for n in names]
        keyed = next(
            (f for f in _FAMILIES if f.sniffing.controlnet_keys and any(n.startswith(f.sniffing.controlnet_keys) for n in bare)),
            None,
        )
        if keyed is not None:
            arch, why = keyed.name, "class/size embedding (label_emb/add_embedding)"
        else:
            # One zero-conv per U-Net input block (ZERO_CONVS).
            last = _max_index(bare, r"^(?:zero_convs|controlnet_down_blocks)\.(\d+)\.")
            if last is not None and last + 1 in ZERO_CONVS:
                arch, why = ZERO_CONVS[last + 1], f"{last + 1} zero convolutions"
            else:
                why = "no width or block count to go by"
    return Sniffed("controlnet", arch, f"{layout} ControlNet; {why}")


def _sniff_checkpoint(info: SafetensorsInfo) -> Sniffed | None:
    names = list(info.tensors)
    if not any(n.startswith("model.diffusion_model.") for n in names):
        return None
    if not any(n.startswith("model.diffusion_model.input_blocks.") for n in names):
        raise _unrecognised(info, "its diffusion model is not an SD 1.x/2.x/XL U-Net (Flux/SD3 are not supported)")
    arch, why = _context_width(info.tensors.values())
    if arch is None and not why:
        known = (*_CHECKPOINT_KEYS, (("cond_stage_model.model.",), "sd2x", "OpenCLIP text encoder (cond_stage_model.model)"))
        for prefixes, family, reason in known:
            if any(n.startswith(prefixes) for n in names):
                arch, why = family, reason
                break
        else:
            why = "U-Net only, no width to go by"
    return Sniffed("checkpoint", arch, f"LDM single-file checkpoint; {why}")


_LDM_VAE = (("encoder.down.", "encoder.conv_in."), ("decoder.up.", "decoder.conv_in."))
_DIFFUSERS_VAE = (("encoder.down_blocks.",), ("decoder.up_blocks.",))


def _sniff_vae(info: SafetensorsInfo) -> Sniffed | None:
    names = list(info.tensors)
    prefix = "first_stage_model."
    if names and all(n.startswith(prefix) for n in names):
        names = [n[len(prefix):] for n in names]
    has = lambda *starts: any(n.startswith(starts) for n in names)  # noqa: E731
    if has("model.diffusion_model.", "cond_stage_model.", "conditioner."):
        return None
    if has("encoder.down.") and has("decoder.up."):
        layout = "LDM"
    elif has("encoder.down_blocks.") and has("decoder.up_blocks."):
        layout = "diffusers"
    else:
        return None
    conv_in = info.tensors.get("decoder.conv_in.weight") or info.tensors.get(f"{prefix}decoder.conv_in.weight")
    if conv_in is not None and len(conv_in.shape) == 4 and conv_in.shape[1] != 4:
        raise InvalidModelFile(
            f"VAE has {conv_in.shape[1]} latent channels; SD 1.x/2.x/XL VAEs have 4 (SD3/Flux VAEs are not supported)"
        )
    # SD 1.x/2.x and SDXL VAEs have identical shapes: no decision possible.
    return Sniffed("vae", None, f"{layout} VAE (SD 1.x/2.x and SDXL VAEs share one shape)")


def sniff_model(info: SafetensorsInfo) -> Sniffed:
    """Category and architecture family of a validated file, from names and shapes only.

    Raises :class:`InvalidModelFile` when the layout is not one this server
    can use.  The order matters: adapters and embeddings are recognised by
    every key, ControlNets before checkpoints (some bundle a U-Net), VAEs last
    since checkpoints contain one.
    """
    for sniff in (_sniff_lora, _sniff_embeddings, _sniff_controlnet, _sniff_checkpoint, _sniff_vae):
        found = sniff(info)
        if found is not None:
            return found
    raise _unrecognised(info)


def check_declared(sniffed: Sniffed, category: str, architecture: str) -> None:
    """Refuse an upload declared as something other than what the file looks like.

    A file with LoRA-only keys may be declared ``lycoris`` (LyCORIS loaders
    read plain LoRA), but LyCORIS-only keys (LoHa, LoKr, …) declared ``lora``
    are refused: a plain LoRA loader would skip them.  An undecided
    (``None``) architecture accepts any declaration; a declared architecture
    outside the SD families never matches a decided one.
    """
    declared = f"{category} for {architecture}"
    category_ok = sniffed.category == category or (sniffed.category == "lora" and category == "lycoris")
    if not category_ok:
        raise InvalidModelFile(
            f"file looks like {sniffed.describe()}, but was declared {declared} ({sniffed.detail})",
            parameter="category",
        )
    if sniffed.architecture is not None and ARCHITECTURE_FAMILIES.get(architecture) != sniffed.architecture:
        raise InvalidModelFile(
            f"file looks like {sniffed.describe()}, but was declared {declared} ({sniffed.detail})",
            parameter="architecture",
        )
