"""The models the engine can run, by AIR: built-in ones and the team's uploads.

``resolve`` is the one place that decides whether a team may use a model: a
private model of another team raises the same ``ModelNotFound`` as a missing
one.  Loaded pipelines are kept per AIR; the byte-budgeted LRU cache replaces
this dict in the engine-depth work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.errors import InvalidInput, ModelNotFound
from engine.registry.models import ModelRegistry, ModelRow
from engine.upload.store import ModelStore

SD1_FAMILY = frozenset({"sd1x", "sdhyper", "sd1xlcm"})
SDXL_FAMILY = frozenset({"sdxl", "sdxllcm", "sdxldistilled", "sdxlhyper", "sdxllightning", "sdxlturbo", "pony", "illustrious"})


def family(architecture: str) -> str:
    if architecture in SD1_FAMILY:
        return "sd1x"
    if architecture in SDXL_FAMILY:
        return "sdxl"
    return architecture


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
    def __init__(self, data_dir: Path, device: str, registry: ModelRegistry, store: ModelStore, dtype: Any = None) -> None:
        self.data_dir = data_dir
        self.device = device
        self.dtype = dtype
        self.registry = registry
        self.store = store
        self._loaded: dict[str, Any] = {}

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

    def pipeline(self, entry: ModelEntry) -> Any:
        """The loaded pipeline of ``entry``; loads it on first use (worker thread only)."""
        model = self._loaded.get(entry.air)
        if model is not None and not entry.builtin and getattr(model, "source_file", None) != entry.file:
            model = None  # the AIR now points at other bytes (a re-upload)
        if model is None:
            from engine.pipelines.stable_diffusion import StableDiffusionModel

            if entry.builtin:
                model = StableDiffusionModel.load(ensure_tiny_sd15(self.data_dir), self.device, self.dtype)
            else:
                from engine.pipelines.stable_diffusion.loading import load_single_file

                assert entry.file is not None
                model = load_single_file(entry.file, self.config_folder(entry.architecture, entry.file), self.device, self.dtype)
                model.source_file = entry.file
            self._loaded[entry.air] = model
        return model

    def prove_checkpoint(self, path: Path, architecture: str) -> None:
        """Worker thread: load a checkpoint file once and drop it (upload's optimized phase)."""
        from engine.pipelines.stable_diffusion.loading import check_checkpoint, load_single_file

        folder = self.config_folder(architecture, path)
        check_checkpoint(path, folder)  # names and shapes from the header: clear errors, no weights read
        load_single_file(path, folder, self.device, self.dtype)
