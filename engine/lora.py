"""LoRA adapters on a loaded diffusers pipeline: read, validate, load once, activate per request.

A request names a *set* of LoRAs with weights.  Every adapter a model has
seen stays loaded (diffusers/PEFT wraps the targeted layers once; each
adapter adds its own small ``lora_A``/``lora_B`` pair), and each run
activates exactly its set with ``set_adapters`` — or, for a request without
LoRAs, switches adapters off with ``disable_lora`` so the layers compute
``base_layer(x)`` and nothing else.  That makes the base output bit-identical
to a model that never had an adapter, and keeps requests isolated from each
other whatever order they come in.

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

A LoRA whose layers do not all exist in the model (a LoRA for another
architecture) is refused too: diffusers/PEFT only raises when *no* layer
matches, and silently skips the rest when some do.

Caching (issue 4, "LoRA at scale"): parsed files live in a host-RAM,
byte-budgeted LRU shared by every model (:mod:`engine.lora_cache`), so a
file is read once while its adapter stays cached.  On a model, at most
``max_resident`` adapters stay loaded (least recently used ones are deleted
beyond that); switching between resident adapters is only ``set_adapters``
(a few ms), and bringing a cached but non-resident one back is a PEFT
injection from RAM (no file read).  diffusers' in-place ``hotswap`` is not
used: it cannot swap text-encoder adapters, needs every adapter to target
the same layers (and rank padding set up before the first load), copies
into the slot's tensors in place (which here alias the cache's), and its
gain — no ``torch.compile`` recompilation — does not apply to wisp, which
does not compile.

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

import hashlib
import logging
import re
import warnings
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from engine.errors import EngineError
from protocol.errors import ErrorCode

if TYPE_CHECKING:
    from engine.lora_cache import LoraCache

log = logging.getLogger("wisp.engine.lora")

DEFAULT_MAX_RESIDENT = 16
"""Adapters kept loaded on one model; beyond that the least recently used is deleted (it stays in the RAM cache)."""

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


def adapter_name(key: str) -> str:
    """The PEFT adapter name for ``key``.

    PEFT stores adapters in ``ModuleDict``s, whose keys may not contain ``.``
    and end up inside parameter names; hashing keeps any key (an AIR, a
    path) safe and fixed-length.
    """
    return "wisp" + hashlib.sha256(key.encode()).hexdigest()[:24]


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


def _adapted_layers(model: Any, name: str) -> int:
    """How many layers of ``model`` carry adapter ``name``."""
    from peft.tuners.lora import LoraLayer

    if model is None:
        return 0
    return sum(
        1
        for module in model.modules()
        if isinstance(module, LoraLayer) and (name in module.lora_A or name in getattr(module, "lora_embedding_A", {}))
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class LoraAdapters:
    """The adapters loaded into one pipeline, and which are active.

    Not thread-safe: the owning model calls it under its per-model lock.
    Adapters live on the pipeline's UNet and text encoder modules, so every
    pipeline derived from it with ``from_pipe`` (img2img, inpaint) sees them.

    ``loading_context`` wraps each load; the SD family uses it to hide its
    clip_skip shim from diffusers (see ``pipeline.hidden_text_model_alias``).
    ``cache`` is the host-RAM adapter cache the files are read through
    (default: the process-wide :func:`engine.lora_cache.default_cache`);
    ``max_resident`` bounds the adapters kept loaded on this model.
    """

    def __init__(
        self,
        pipe: Any,
        loading_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        cache: "LoraCache | None" = None,
        max_resident: int = DEFAULT_MAX_RESIDENT,
    ) -> None:
        if cache is None:
            from engine.lora_cache import default_cache

            cache = default_cache()
        self.pipe = pipe
        self.cache = cache
        self.max_resident = max(1, max_resident)
        self._loading_context = loading_context
        self._loaded: OrderedDict[str, str] = OrderedDict()  # key → adapter name, least recently used first
        self._active: tuple[tuple[str, float], ...] = ()
        self._enabled = False
        self._known = True  # whether _active/_enabled describe every adapted layer
        self._layers: list[Any] | None = None  # the PEFT tuner layers of every component (None: walk again)
        self.injections = 0
        """PEFT loads onto this model (a miss of the resident set, whether or not the RAM cache had the file)."""
        self.unloads = 0
        """Resident adapters deleted to respect ``max_resident`` (or forgotten)."""

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(self._loaded)

    def load(self, use: LoraUse, parameter: str | None = None) -> str:
        """Load ``use``'s adapter onto the model once (resident by key); returns its adapter name.

        The file is read through the RAM cache: a cached adapter is loaded
        from memory.  On any failure nothing of the adapter is left on the
        model (a failed text-encoder load would otherwise leave the UNet half
        adapted).
        """
        name = self._loaded.get(use.key)
        if name is not None:
            self._loaded.move_to_end(use.key)
            return name
        name = adapter_name(use.key)
        try:
            cached = self.cache.get(use.key, use.path)
        except LoraLoadError as exc:
            exc.parameter = parameter
            raise
        # Loading (or failing to) may change which adapters the layers use:
        # the next activate() must set every layer again.
        self._known, self._layers = False, None
        self.injections += 1
        try:
            with self._loading_context(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
                # A fresh dict: diffusers' conversion pops keys; the tensors are shared, never written.
                self.pipe.load_lora_weights(dict(cached.state), adapter_name=name)
        except Exception as exc:
            self._discard(name)
            log.debug("LoRA %s failed to load", use.key, exc_info=True)
            raise LoraLoadError(f"the LoRA does not fit this model: {_short(exc)}", parameter=parameter) from exc
        adapted = sum(_adapted_layers(getattr(self.pipe, c, None), name) for c in _COMPONENTS)
        if adapted < cached.layers:
            self._discard(name)
            what = "none" if adapted == 0 else f"only {adapted}"
            raise LoraLoadError(
                f"the LoRA targets {cached.layers} layers but {what} exist in this model; "
                "it was made for another architecture",
                parameter=parameter,
            )
        self._loaded[use.key] = name
        return name

    def activate(self, uses: Iterable[LoraUse], parameters: Iterable[str | None] | None = None) -> None:
        """Make exactly ``uses`` active (loading any not yet loaded).

        ``parameters`` (one per use, e.g. ``lora[0].model``) is put on the
        :class:`LoraLoadError` of a use that fails.  Weights of one file
        named twice add up; weight-0 uses are loaded (so a bad file still
        fails) but not activated; adapters are activated in a fixed order
        (by adapter name), so the same set gives the same bytes whatever
        order the request lists it in.  Resident adapters beyond
        ``max_resident`` that this set does not use are deleted, least
        recently used first.
        """
        uses = list(uses)
        params = list(parameters) if parameters is not None else [None] * len(uses)
        weights: dict[str, float] = {}
        for use, parameter in zip(uses, params):
            self.load(use, parameter)
            weights[use.key] = weights.get(use.key, 0.0) + float(use.weight)
        self._trim(keep=weights.keys())
        active = tuple(sorted((self._loaded[k], w) for k, w in weights.items() if w != 0.0))
        if not self._loaded:
            # No adapter on any layer (never loaded, or all failed/forgotten):
            # PEFT layers without adapters compute exactly base_layer(x).
            self._active, self._enabled, self._known = (), False, True
            return
        if not self._known:
            # After a load or a delete: diffusers' own calls, which walk every module.
            if not active:
                self.pipe.disable_lora()
            else:
                self.pipe.enable_lora()
                self.pipe.set_adapters([n for n, _ in active], adapter_weights=[w for _, w in active])
        elif active != self._active or bool(active) != self._enabled:
            self._switch(active)
        self._active, self._enabled, self._known = active, bool(active), True

    def _switch(self, active: tuple[tuple[str, float], ...]) -> None:
        """Switch between resident adapters: what ``enable_lora``/``disable_lora``/``set_adapters`` do, layer by layer.

        diffusers' calls walk every module of the UNet and text encoders and
        match each name against block-wise weight patterns (~15 ms on an
        SD-1.5 UNet); the same per-layer PEFT calls on the cached list of
        tuner layers cost a fraction of that.  ``set_scale`` computes the
        scale with the same expression, so the images are bit-identical
        (the tests compare switched images with freshly loaded ones).
        """
        layers = self._tuner_layers()
        if not active:
            for layer in layers:
                layer.enable_adapters(False)
            return
        names = [n for n, _ in active]
        enable = not self._enabled
        for layer in layers:
            if enable:
                layer.enable_adapters(True)
            layer.set_adapter(names, inference_mode=True)
            for name, weight in active:
                layer.set_scale(name, weight)

    def _tuner_layers(self) -> list[Any]:
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._layers = [
                module
                for component in _COMPONENTS
                if (model := getattr(self.pipe, component, None)) is not None
                for module in model.modules()
                if isinstance(module, BaseTunerLayer)
            ]
        return self._layers

    def forget(self, key: str) -> bool:
        """Unload one adapter (e.g. when its file is deleted); returns whether it was loaded.

        Drops it from the RAM cache too, so a replaced file is read again.
        """
        self.cache.forget(key)
        name = self._loaded.pop(key, None)
        if name is None:
            return False
        self._discard(name)
        self.unloads += 1
        self._known = False
        return True

    def _trim(self, keep: Iterable[str]) -> None:
        """Delete least-recently-used resident adapters not in ``keep`` while over ``max_resident``."""
        keep = set(keep)
        for key in list(self._loaded):
            if len(self._loaded) <= self.max_resident:
                break
            if key in keep:
                continue
            self._discard(self._loaded.pop(key))
            self.unloads += 1
            self._known = False

    def _discard(self, name: str) -> None:
        """Delete adapter ``name`` from every component that has it.

        Per component, because a failed load can leave the adapter on the
        UNet only, and the pipeline-level ``delete_adapters`` expects it on both.
        """
        from diffusers.utils.peft_utils import delete_adapter_layers

        self._layers = None
        for component in _COMPONENTS:
            model = getattr(self.pipe, component, None)
            config = getattr(model, "peft_config", None) or {}
            if name not in config:
                continue
            with warnings.catch_warnings():
                # "Adapter … was active which is now deleted": activate() resets every layer anyway.
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                if hasattr(model, "delete_adapters"):  # diffusers ModelMixin
                    model.delete_adapters([name])
                else:  # transformers model
                    delete_adapter_layers(model, name)
