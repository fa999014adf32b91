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
from typing import Any, Callable, Iterator

from engine.builtin.tiny_sd15 import BUILD_VERSION as TINY_SD15_VERSION
from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.cache import ModelCache
from engine.errors import InvalidInput, ModelNotFound
from engine.registry.models import ModelRegistry, ModelRow
from engine.upload.sniff import ARCHITECTURE_FAMILIES
from engine.upload.store import ModelStore

LOAD_LOCK = threading.Lock()
"""One model load at a time in this process.

diffusers/accelerate load models inside context managers that monkeypatch
*global* state (``accelerate.init_empty_weights`` replaces
``nn.Module.register_parameter``, ``no_init_weights`` the ``torch.nn.init``
functions).  Two loads on two threads interleave their enter/exit and can
leave the patch installed for good: every later model is then built on the
meta device ("Cannot copy out of meta tensor").  The model cache runs
loaders of different keys concurrently, so the loaders take this lock.
"""



def family(architecture: str) -> str:
    """The weight layout a declared architecture shares (``pony`` → ``sdxl``); one table, in sniff."""
    return ARCHITECTURE_FAMILIES.get(architecture, architecture)


@dataclass(frozen=True)
class ModelDefaults:
    steps: int = 20
    cfg_scale: float = 7.0
    scheduler: str = "Default"
    strength: float = 0.8


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


@dataclass(frozen=True)
class LoraEntry:
    air: str
    sha256: str
    path: Path
    default_weight: float
    architecture: str


BUILTIN_MODELS: dict[str, ModelEntry] = {
    BUILTIN_SD15_AIR: ModelEntry(
        air=BUILTIN_SD15_AIR,
        name="wisp tiny SD 1.x (random weights)",
        category="checkpoint",
        architecture="sd1x",
        defaults=ModelDefaults(steps=20, cfg_scale=7.0),
        builtin=True,
    )
}


def _defaults(row: ModelRow) -> ModelDefaults:
    meta = row.meta
    return ModelDefaults(
        steps=meta.get("defaultSteps") or 20,
        cfg_scale=meta["defaultCFG"] if meta.get("defaultCFG") is not None else 7.0,
        scheduler=meta.get("defaultScheduler") or "Default",
        strength=meta["defaultStrength"] if meta.get("defaultStrength") is not None else 0.8,
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
    ) -> None:
        self.data_dir = data_dir
        self.device = device
        self.dtype = dtype
        self.registry = registry
        self.store = store
        self.cache = cache if cache is not None else ModelCache(device)
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
        return ModelEntry(
            air=row.air, name=row.name, category=row.category, architecture=row.architecture,
            defaults=_defaults(row), builtin=False, file=self.store.path_for(row.sha256), row=row,
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

    def config_folder(self, architecture: str, path: Path | None = None) -> Path:
        """Component configs and tokenizer used to load a single-file checkpoint offline.

        SD-1.x files come in more than one size (real SD 1.5 and the built-in
        tiny model's), so the folder is chosen from the shapes in ``path``'s
        header; without a file, the real SD-1.5 configuration.
        """
        if family(architecture) == "sd1x":
            from engine.builtin.sd15_config import ensure_sd15_config, sd1_config_for

            return ensure_sd15_config(self.data_dir) if path is None else sd1_config_for(self.data_dir, path)
        raise InvalidInput(f"architecture {architecture} cannot be loaded by this build", parameter="model")

    # ---- loaded models (the cache) ---------------------------------------------

    @staticmethod
    def cache_key(entry: ModelEntry) -> str:
        """AIR + content: a re-upload of the AIR with other bytes is another key."""
        if entry.builtin:
            return f"{entry.air}|builtin-v{TINY_SD15_VERSION}"
        content = entry.row.sha256 if entry.row is not None else str(entry.file)
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
            from engine.pipelines.stable_diffusion import StableDiffusionModel
            from engine.pipelines.stable_diffusion.loading import load_single_file

            if entry.builtin:
                folder = ensure_tiny_sd15(self.data_dir)
                with LOAD_LOCK:
                    return StableDiffusionModel.load(folder, self.device, self.dtype)
            assert entry.file is not None
            config = self.config_folder(entry.architecture, entry.file)
            with LOAD_LOCK:
                return load_single_file(entry.file, config, self.device, self.dtype)

        return load

    def _size_hint(self, entry: ModelEntry) -> Callable[[], int | None]:
        """Bytes ``entry`` will take once loaded, from its safetensors headers (no weights read).

        Called by the cache only on a miss, to make room on the device before
        the load.  Counts the tensors the SD-1.x loader keeps (an EMA copy in
        the file is not loaded) at the load dtype.
        """

        def estimate() -> int | None:
            import torch
            from safetensors import safe_open

            from engine.pipelines.stable_diffusion.loading import _PREFIXES

            if entry.builtin:
                files, prefixes = sorted(ensure_tiny_sd15(self.data_dir).glob("*/*.safetensors")), ("",)
            elif entry.file is not None:
                files, prefixes = [entry.file], tuple(_PREFIXES.values())
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

    def prove_checkpoint(self, path: Path, architecture: str) -> None:
        """Worker thread: load a checkpoint file once and drop it (upload's optimized phase)."""
        from engine.pipelines.stable_diffusion.loading import check_checkpoint, load_single_file

        folder = self.config_folder(architecture, path)
        check_checkpoint(path, folder)  # names and shapes from the header: clear errors, no weights read
        with LOAD_LOCK:
            load_single_file(path, folder, self.device, self.dtype)


def _adapters(model: Any) -> frozenset[str] | None:
    loras = getattr(model, "loras", None)
    return getattr(loras, "loaded", None)
