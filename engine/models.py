"""The models the engine can run, by AIR: built-in ones and the team's uploads.

``resolve`` is the one place that decides whether a team may use a model: a
private model of another team raises the same ``ModelNotFound`` as a missing
one.  Loaded pipelines live in the engine's :class:`~engine.cache.ModelCache`
(byte budgets per tier, LRU, pinning while a model runs), keyed by AIR *and*
content (the file's sha256), so a re-upload under the same AIR is a new key
and never serves the old weights.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from engine.cache import ModelCache
from engine.errors import InvalidInput, ModelNotFound
from engine.lora_cache import LoraCache
from engine.pipelines import families
from engine.pipelines.family import ModelDefaults as ModelDefaults  # re-exported: defined with the family descriptors
from engine.pipelines.family import BuiltinModel
from engine.registry.models import ModelRegistry, ModelRow
from engine.upload.sniff import ARCHITECTURE_FAMILIES
from engine.upload.store import ModelStore

LOAD_LOCK = threading.RLock()
"""One model load at a time in this process.

diffusers/accelerate load models inside context managers that monkeypatch
*global* state (``accelerate.init_empty_weights`` replaces
``nn.Module.register_parameter``, ``no_init_weights`` the ``torch.nn.init``
functions).  Two loads on two threads interleave their enter/exit and can
leave the patch installed for good: every later model is then built on the
meta device ("Cannot copy out of meta tensor").  The model cache runs
loaders of different keys concurrently, so the loaders take this lock.
"""



def spandrel_ready(parameter: str | None) -> None:
    """Worker thread: spandrel's architectures imported (once: under :data:`LOAD_LOCK`, never beside another thread's
    imports), or :class:`engine.upscalers.UpscalerUnavailable` at ``parameter``."""
    from engine import upscalers

    if not upscalers.imported():
        with LOAD_LOCK:
            upscalers.require(parameter)


def family(architecture: str) -> str:
    """The weight layout a declared architecture shares (``pony`` → ``sdxl``); one table, in sniff."""
    return ARCHITECTURE_FAMILIES.get(architecture, architecture)


LOADABLE_FAMILIES = families.names()
"""Checkpoint families this build loads and runs (registered in :mod:`engine.pipelines.families`);
every other architecture is refused (upload and inference)."""


ARCHITECTURE_DEFAULTS: dict[str, ModelDefaults] = {a: d for f in families.all() for a, d in f.architectures.items()}
"""What a request that omits steps/CFGScale/scheduler/strength gets, by declared architecture.

Gathered from the family descriptors (each family's ``architectures``, in
``engine/pipelines/<family>/family.py``); an upload's own ``defaultSteps``/
``defaultCFG``/``defaultScheduler``/``defaultStrength`` win field by field.  Distilled models
(LCM, Hyper-SD, Lightning, Turbo) are trained for a few steps without
classifier-free guidance (CFG ≤ 1 switches it off in diffusers) and with the
sampler their authors name (Lightning and Turbo with "trailing" timestep
spacing); Pony and Illustrious are SDXL fine-tunes whose authors recommend
Euler a at the CFG given and "clip skip 2" (one layer skipped).
"""


def architecture_defaults(architecture: str) -> ModelDefaults:
    """The defaults of ``architecture`` (its family's base when the tag has no row of its own)."""
    return ARCHITECTURE_DEFAULTS.get(architecture) or ARCHITECTURE_DEFAULTS.get(family(architecture)) or ModelDefaults()


def check_runnable(architecture: str, parameter: str = "model") -> None:
    """Refuse, clearly, a model whose architecture this build cannot run (e.g. ``sd3``, ``flux1d``)."""
    if family(architecture) not in LOADABLE_FAMILIES:
        supported = sorted(a for a in ARCHITECTURE_FAMILIES if family(a) in LOADABLE_FAMILIES)
        raise InvalidInput(
            f"models of architecture {architecture} cannot run on this build (supported: {', '.join(supported)})",
            parameter=parameter,
        )


@dataclass(frozen=True)
class ModelEntry:
    """A checkpoint the engine can load: the built-in folder or a stored single file."""

    air: str
    name: str
    category: str
    architecture: str
    defaults: ModelDefaults
    builtin: bool
    file: Path | None = None  # stored single-file checkpoint
    row: ModelRow | None = None
    sha256: str | None = None
    """The stored file's content hash (None for a built-in model): with the AIR, the cache key."""
    comment: str = ""
    """A built-in model's description (modelSearch's ``comment``)."""


@dataclass(frozen=True)
class LoraEntry:
    air: str
    sha256: str
    path: Path
    default_weight: float
    architecture: str


def _builtin(model: BuiltinModel) -> ModelEntry:
    return ModelEntry(
        air=model.air, name=model.name, category="checkpoint", architecture=model.architecture,
        defaults=model.defaults or architecture_defaults(model.architecture), builtin=True, comment=model.comment,
    )  # fmt: skip


_ALL_BUILTINS: tuple[BuiltinModel, ...] = tuple(m for f in families.all() for m in (f.builtin, *f.extra_builtins))

BUILTIN_MODELS: dict[str, ModelEntry] = {m.air: _builtin(m) for m in _ALL_BUILTINS}

_BUILTIN_FOLDERS: dict[str, tuple[Callable[[Path], Path], str]] = {m.air: (m.build, m.version) for m in _ALL_BUILTINS}
"""Built-in AIR → (builds its folder once, build version: part of the cache key)."""


def builtin_folder(air: str, data_dir: Path) -> Path:
    """The built-in model's diffusers folder, built on first use (under the load lock: a build imports diffusers)."""
    with LOAD_LOCK:
        return _BUILTIN_FOLDERS[air][0](data_dir)


def _defaults(row: ModelRow) -> ModelDefaults:
    """The upload's own defaults, field by field over its architecture's (``ARCHITECTURE_DEFAULTS``)."""
    meta, base = row.meta, architecture_defaults(row.architecture)
    return ModelDefaults(
        steps=meta.get("defaultSteps") or base.steps,
        cfg_scale=meta["defaultCFG"] if meta.get("defaultCFG") is not None else base.cfg_scale,
        scheduler=meta.get("defaultScheduler") or base.scheduler,
        strength=meta["defaultStrength"] if meta.get("defaultStrength") is not None else base.strength,
        clip_skip=base.clip_skip,
    )


class ModelLibrary:
    def __init__(
        self,
        data_dir: Path,
        device: str,
        registry: ModelRegistry,
        store: ModelStore,
        dtype: Any = None,
        cache: ModelCache | None = None,
        lora_cache: LoraCache | None = None,
    ) -> None:
        """``cache``: the engine's model cache; ``lora_cache``: its LoRA adapter cache, given to every model loaded
        (each None: one of this library's own)."""
        self.data_dir = data_dir
        self.device = device
        self.dtype = dtype
        self.registry = registry
        self.store = store
        self.cache = cache if cache is not None else ModelCache(device)
        self.lora_cache = lora_cache if lora_cache is not None else LoraCache()
        self._keys: dict[str, str] = {}  # AIR → cache key of the bytes it named last
        self._keys_lock = threading.Lock()

    def resolve(self, air: str, team: str, parameter: str = "model") -> ModelEntry:
        """The checkpoint ``air`` if ``team`` may use it; anything else looks missing or wrong-kind."""
        entry = BUILTIN_MODELS.get(air)
        if entry is not None:
            return entry
        row = self.registry.visible(air, team)
        if row is None:
            raise ModelNotFound(f"no model {air[:200]!r} is available", parameter=parameter)
        if row.category != "checkpoint":
            raise InvalidInput(f"{air} is a {row.category}, not a checkpoint", parameter=parameter)
        check_runnable(row.architecture, parameter)
        return ModelEntry(
            air=row.air, name=row.name, category=row.category, architecture=row.architecture,
            defaults=_defaults(row), builtin=False, file=self.store.path_for(row.sha256), row=row, sha256=row.sha256,
        )

    def resolve_lora(self, air: str, team: str, base: ModelEntry, parameter: str) -> LoraEntry:
        row = self.registry.visible(air, team)
        if row is None:
            raise ModelNotFound(f"no LoRA {air[:200]!r} is available", parameter=parameter)
        if row.category not in ("lora", "lycoris"):
            raise InvalidInput(f"{air} is a {row.category}, not a LoRA", parameter=parameter)
        if family(row.architecture) != family(base.architecture):
            raise InvalidInput(
                f"{air} is a LoRA for {row.architecture}; the model {base.air} is {base.architecture}", parameter=parameter
            )
        weight = row.meta.get("defaultWeight")
        return LoraEntry(row.air, row.sha256, self.store.path_for(row.sha256), 1.0 if weight is None else weight, row.architecture)

    def _visible_of(self, air: str, team: str, base: ModelEntry, category: str, noun: str, parameter: str) -> ModelRow:
        """The row of ``air`` if ``team`` may use it as a ``category`` on ``base`` (same family)."""
        row = self.registry.visible(air, team)
        if row is None:
            raise ModelNotFound(f"no {noun} {air[:200]!r} is available", parameter=parameter)
        a_noun = f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
        if row.category != category:
            raise InvalidInput(f"{air} is a {row.category}, not {a_noun}", parameter=parameter)
        if family(row.architecture) != family(base.architecture):
            raise InvalidInput(
                f"{air} is {a_noun} for {row.architecture}; the model {base.air} is {base.architecture}", parameter=parameter
            )
        return row

    def resolve_upscaler(self, air: str, team: str, parameter: str = "model") -> ModelRow:
        """The row of upscaler model ``air`` (category ``upscaler``) if ``team`` may use it (worker thread: a registry read).

        Missing and another team's private look alike (``ModelNotFound``); a
        model of another category is ``InvalidInput``, both naming ``parameter``.
        """
        from engine.controlnets import BUILTIN_CONTROLNETS
        from protocol.upscale import LANCZOS_UPSCALER

        if air in BUILTIN_MODELS:
            raise InvalidInput(f"{air} is a checkpoint, not an upscaler", parameter=parameter)
        if air in BUILTIN_CONTROLNETS:
            raise InvalidInput(f"{air} is a controlnet, not an upscaler", parameter=parameter)
        row = self.registry.visible(air, team)
        if row is None:
            raise ModelNotFound(f"no upscaler {air[:200]!r} is available; this server has {LANCZOS_UPSCALER} and the upscaler "
                                "models (category upscaler) your team can use", parameter=parameter)
        if row.category != "upscaler":
            raise InvalidInput(f"{air} is a {row.category}, not an upscaler", parameter=parameter)
        spandrel_ready(parameter)  # this server can run it at all
        return row

    def resolve_embedding(self, air: str, team: str, base: ModelEntry, parameter: str, weight: float | None = None) -> Any:
        """An :class:`engine.embeddings.EmbeddingUse` for ``air`` (category ``embeddings``) on ``base``."""
        from engine.embeddings import EmbeddingUse, trigger_word

        row = self._visible_of(air, team, base, "embeddings", "embedding", parameter)
        kind = "negative" if row.type == "negative" else "positive"
        return EmbeddingUse(
            key=row.sha256, path=self.store.path_for(row.sha256), trigger=trigger_word(row.air, row.meta, kind),
            kind=kind, weight=1.0 if weight is None else weight, parameter=parameter,
        )

    def resolve_vae(self, air: str, team: str, base: ModelEntry, parameter: str = "vae") -> Any:
        """An :class:`engine.vae.VaeUse` for ``air`` (category ``vae``) on ``base``; loaded by :meth:`use_vae`."""
        from engine.vae import VaeUse

        row = self._visible_of(air, team, base, "vae", "VAE", parameter)
        fam = family(row.architecture)
        return VaeUse(key=f"vae|{row.sha256}|{fam}", air=row.air, path=self.store.path_for(row.sha256), family=fam, parameter=parameter)

    def resolve_extras(self, task: Any, team: str, base: ModelEntry) -> dict[str, Any]:
        """An imageInference's ``embeddings`` and ``vae``, resolved: ``GenerationSpec`` fields (no I/O but the registry)."""
        embeddings = tuple(
            self.resolve_embedding(ref.model, team, base, f"embeddings[{i}].model", ref.weight) for i, ref in enumerate(task.embeddings)
        )
        vae = self.resolve_vae(task.vae, team, base) if task.vae else None
        return {"embeddings": embeddings, "vae": vae}

    def resolve_controlnet(self, air: str, team: str, base: ModelEntry, parameter: str) -> Any:
        """``air`` as a ControlNet usable on ``base``: a built-in one of its family, or an upload (category ``controlnet``).

        Returns what a job records of it (air, family, sha256: None for a
        built-in).
        """
        from engine.controlnets import BUILTIN_CONTROLNETS

        kind = BUILTIN_CONTROLNETS.get(air)
        if kind is not None:
            if kind.name != family(base.architecture):
                raise InvalidInput(f"{air} is a ControlNet for {kind.name}; the model {base.air} is {base.architecture}", parameter=parameter)
            return SimpleNamespace(air=air, family=kind.name, sha256=None)
        row = self._visible_of(air, team, base, "controlnet", "ControlNet", parameter)
        return SimpleNamespace(air=row.air, family=family(row.architecture), sha256=row.sha256)

    def control_use(self, ref: Any, width: int, height: int) -> Any:
        """A job's ControlRef as the generation uses it: the guide decoded and resized to the output (worker thread)."""
        from engine.controlnets import BUILTIN_CONTROLNETS, ControlUse
        from engine.images.codec import decode_image

        from PIL import Image

        guide = decode_image(ref.guide_bytes, f"{ref.parameter}.guideImage").convert("RGB")
        if guide.size != (width, height):
            guide = guide.resize((width, height), Image.Resampling.LANCZOS)
        if ref.preprocessor is not None:  # after the resize: edges at the output's scale
            from engine.preprocessors import apply

            guide = apply(ref.preprocessor, guide, ref.low_threshold, ref.high_threshold)
        kind = BUILTIN_CONTROLNETS.get(ref.air)
        if kind is None:
            folder = None
        else:
            with LOAD_LOCK:  # a first use builds it, which imports diffusers
                folder = kind.builtin_controlnet.build(self.data_dir)
        key = f"{ref.air}|builtin-v{kind.builtin_controlnet.version}" if kind is not None else f"{ref.air}|{ref.sha256}"
        return ControlUse(key=key, air=ref.air, family=ref.family, folder=folder,
                          path=None if ref.sha256 is None else self.store.path_for(ref.sha256), image=guide, scale=ref.scale,
                          start=ref.start, end=ref.end, guess_mode=ref.guess_mode, parameter=ref.parameter)

    @contextmanager
    def use_controlnets(self, spec: Any) -> Iterator[Any]:
        """``with library.use_controlnets(spec) as spec:`` — its ControlNets loaded (cached, pinned for the block)."""
        if not spec.controlnets:
            yield spec
            return
        from contextlib import ExitStack
        from dataclasses import replace

        from engine.controlnets import load_controlnet, size_of_folder

        with ExitStack() as stack:
            loaded = []
            for use in spec.controlnets:
                def load(use: Any = use) -> Any:
                    with LOAD_LOCK:
                        return load_controlnet(use, self.device, self.dtype, self.data_dir)

                def size(use: Any = use) -> int | None:
                    if use.folder is not None:
                        return size_of_folder(use.folder, self.dtype)
                    return 2 * use.path.stat().st_size  # stored at 16 bits or more; loaded at most at 32

                module = stack.enter_context(self.cache.use(use.key, load, size_hint=size))
                loaded.append(replace(use, module=module))
            yield replace(spec, controlnets=tuple(loaded))

    def config_folder(self, architecture: str, path: Path | None = None) -> Path:
        """Component configs and tokenizer(s) used to load a single-file checkpoint offline.

        Files of each family come in more than one size (the real model and
        wisp's tiny one), so the folder is chosen from the shapes in
        ``path``'s header; without a file, the real model's configuration.
        """
        descriptor = families.family_of(architecture)
        if descriptor is not None:
            return descriptor.config_folder(self.data_dir, path)
        raise InvalidInput(f"architecture {architecture} cannot be loaded by this build", parameter="model")

    def refines_only(self, entry: ModelEntry) -> bool:
        """Whether ``entry``'s file is in a refiner-only layout (SDXL's refiner): it can finish images, not start them
        or be trained on.  Reads the file's header (worker thread)."""
        if entry.builtin or entry.file is None or entry.category != "checkpoint":
            return False
        from engine.pipelines.stable_diffusion.loading import layout_of

        return layout_of(self.config_folder(entry.architecture, entry.file)).refines_only

    # ---- loaded models (the cache) ---------------------------------------------

    @staticmethod
    def cache_key(entry: ModelEntry) -> str:
        """AIR + content: a re-upload of the AIR with other bytes is another key."""
        if entry.builtin:
            return f"{entry.air}|builtin-v{_BUILTIN_FOLDERS[entry.air][1]}"
        content = entry.sha256 or (entry.row.sha256 if entry.row is not None else str(entry.file))
        return f"{entry.air}|{content}"

    def _key(self, entry: ModelEntry) -> str:
        key = self.cache_key(entry)
        with self._keys_lock:
            old = self._keys.get(entry.air)
            self._keys[entry.air] = key
        if old is not None and old != key:
            self.cache.forget(old)  # the AIR now points at other bytes (a re-upload): free the old ones now
        return key

    def forget(self, air: str) -> bool:
        """Drop ``air``'s loaded model (its file was replaced or deleted); returns whether one was loaded."""
        with self._keys_lock:
            key = self._keys.pop(air, None)
        return key is not None and self.cache.forget(key)

    def _loader(self, entry: ModelEntry) -> Callable[[], Any]:
        def load() -> Any:
            from engine.pipelines.stable_diffusion.loading import load_folder, load_single_file

            if entry.builtin:
                folder = builtin_folder(entry.air, self.data_dir)
                with LOAD_LOCK:
                    return load_folder(folder, self.device, self.dtype, self.lora_cache)
            assert entry.file is not None
            from engine.registry.integrity import verify_stored_file
            from engine.safetensors_header import ModelLoadError

            verify_stored_file(entry.file, ModelLoadError, "model")  # its bytes still hash to its name (once per process)
            config = self.config_folder(entry.architecture, entry.file)
            with LOAD_LOCK:
                return load_single_file(entry.file, config, self.device, self.dtype, self.lora_cache)

        return load

    def _size_hint(self, entry: ModelEntry) -> Callable[[], int | None]:
        """Bytes ``entry`` will take once loaded, from its safetensors headers (no weights read).

        Called by the cache only on a miss, to make room on the device before
        the load.  Counts the tensors the single-file loader keeps (an EMA
        copy in the file is not loaded) at the load dtype.
        """

        def estimate() -> int | None:
            import torch
            from safetensors import safe_open

            from engine.pipelines.stable_diffusion.loading import CHECKPOINT_PREFIXES

            if entry.builtin:
                files, prefixes = sorted(builtin_folder(entry.air, self.data_dir).glob("*/*.safetensors")), ("",)
            elif entry.file is not None:
                files, prefixes = [entry.file], CHECKPOINT_PREFIXES
            else:
                return None
            numel = 0
            for path in files:
                with safe_open(str(path), framework="pt") as f:
                    numel += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefixes))
            return numel * (self.dtype or torch.float32).itemsize

        return estimate

    def pipeline(self, entry: ModelEntry) -> Any:
        """The loaded pipeline of ``entry``, loading it on a miss (worker thread only); not pinned."""
        return self.cache.get(self._key(entry), self._loader(entry), size_hint=self._size_hint(entry))

    @contextmanager
    def use(self, entry: ModelEntry) -> Iterator[Any]:
        """``with library.use(entry) as model:`` — the loaded model, pinned in the cache for the block.

        A run that loads a LoRA adapter grows the model; its size is measured
        again before the pin is released, so the budgets see the adapters.
        """
        key = self._key(entry)
        with self.cache.use(key, self._loader(entry), size_hint=self._size_hint(entry)) as model:
            adapters = _adapters(model)
            try:
                yield model
            finally:
                if _adapters(model) != adapters:
                    self.cache.remeasure(key)

    @contextmanager
    def use_vae(self, spec: Any) -> Iterator[Any]:
        """``with library.use_vae(spec) as spec:`` — ``spec`` with its VAE override loaded (cached, pinned for the block)."""
        if spec.vae is None:
            yield spec
            return
        from dataclasses import replace

        vae = spec.vae

        def load() -> Any:
            from engine.vae import load_vae

            with LOAD_LOCK:
                return load_vae(vae.path, self.data_dir, vae.family, self.device, self.dtype, vae.parameter)

        with self.cache.use(vae.key, load, size_hint=lambda: 2 * vae.path.stat().st_size) as module:
            yield replace(spec, vae=replace(vae, module=module))

    @staticmethod
    def upscaler_key(sha256: str) -> str:
        """An upscaler model's cache key: its content alone (the network is whatever the bytes are)."""
        return f"upscaler|{sha256}"

    @contextmanager
    def use_upscaler(self, sha256: str) -> Iterator[Any]:
        """``with library.use_upscaler(sha256) as upscaler:`` — the stored upscaler model built on the device
        (:class:`engine.upscalers.LoadedUpscaler`), cached and pinned for the block (device worker)."""
        from engine import upscalers

        path = self.store.path_for(sha256)

        def load() -> Any:
            from engine.registry.integrity import verify_stored_file
            from engine.safetensors_header import ModelLoadError

            verify_stored_file(path, ModelLoadError, "model")  # its bytes still hash to its name (once per process)
            spandrel_ready("model")
            return upscalers.load(path, self.device, self.dtype)

        def size() -> int | None:
            try:
                return 2 * path.stat().st_size  # stored at 16 or 32 bits a weight, loaded at 32 at most
            except OSError:
                return None  # missing: the loader says so (ModelLoadError)

        with self.cache.use(self.upscaler_key(sha256), load, size_hint=size) as model:
            yield model

    def prove_checkpoint(self, path: Path, architecture: str) -> None:
        """Worker thread: load a checkpoint file once and drop it (upload's optimized phase)."""
        from engine.pipelines.stable_diffusion.loading import check_checkpoint, load_single_file

        folder = self.config_folder(architecture, path)
        check_checkpoint(path, folder)  # names and shapes from the header: clear errors, no weights read
        with LOAD_LOCK:
            load_single_file(path, folder, self.device, self.dtype, self.lora_cache)


def _adapters(model: Any) -> frozenset[str] | None:
    loras = getattr(model, "loras", None)
    return getattr(loras, "loaded", None)
