"""LoRA adapters on a loaded diffusers pipeline: load once through PEFT, activate a request's set, switch.

A request names a *set* of LoRAs with weights.  Every adapter a model has
seen stays loaded (diffusers/PEFT wraps the targeted layers once; each
adapter adds its own small ``lora_A``/``lora_B`` pair), and each run
activates exactly its set with ``set_adapters`` — or, for a request without
LoRAs, switches adapters off with ``disable_lora`` so the layers compute
``base_layer(x)`` and nothing else.  That makes the base output bit-identical
to a model that never had an adapter, and keeps requests isolated from each
other whatever order they come in.

A LoRA whose layers do not all exist in the model (a LoRA for another
architecture) is refused: diffusers/PEFT only raises when *no* layer
matches, and silently skips the rest when some do.

Caching (issue 4, "LoRA at scale"): files are read (format-checked by
:mod:`engine.lora`) through a host-RAM, byte-budgeted LRU
(:class:`engine.lora_cache.LoraCache`) that the engine creates once and
hands to every model, so a file is read once while its adapter stays
cached.  On a model, at most ``max_resident`` adapters stay loaded (least
recently used ones are deleted beyond that); switching between resident
adapters is only ``set_adapters`` (a few ms), and bringing a cached but
non-resident one back is a PEFT injection from RAM (no file read).
diffusers' in-place ``hotswap`` is not used: it cannot swap text-encoder
adapters, needs every adapter to target the same layers (and rank padding
set up before the first load), copies into the slot's tensors in place
(which here alias the cache's), and its gain — no ``torch.compile``
recompilation — does not apply to wisp, which does not compile.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Iterable

from engine.lora import LoraLoadError, LoraUse
from engine.lora_cache import LoraCache

log = logging.getLogger("wisp.engine.lora")

DEFAULT_MAX_RESIDENT = 16
"""Adapters kept loaded on one model; beyond that the least recently used is deleted (it stays in the RAM cache)."""


def adapter_name(key: str) -> str:
    """The PEFT adapter name for ``key``.

    PEFT stores adapters in ``ModuleDict``s, whose keys may not contain ``.``
    and end up inside parameter names; hashing keeps any key (an AIR, a
    path) safe and fixed-length.
    """
    return "wisp" + hashlib.sha256(key.encode()).hexdigest()[:24]


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
    ``cache`` is the host-RAM adapter cache the files are read through,
    shared by every model of an engine (:class:`engine.lora_cache.LoraCache`;
    None: a cache of this model's own, as for a model loaded outside an
    engine); ``max_resident`` bounds the adapters kept loaded on this model.
    """

    def __init__(
        self,
        pipe: Any,
        loading_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        cache: LoraCache | None = None,
        max_resident: int = DEFAULT_MAX_RESIDENT,
    ) -> None:
        self.pipe = pipe
        self.cache = cache if cache is not None else LoraCache()
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
            model: Any = getattr(self.pipe, component, None)
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
