"""The models the engine can run, by AIR, and their loaded pipelines.

For now the library holds the built-in models; the model-library issue adds
uploaded ones from the registry behind the same ``resolve`` call.  Loaded
pipelines are kept per AIR; the byte-budgeted LRU cache replaces this dict in
the engine-depth issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.errors import ModelNotFound


@dataclass(frozen=True)
class ModelDefaults:
    steps: int = 20
    cfg_scale: float = 7.0
    scheduler: str = "Default"
    strength: float = 0.8


@dataclass(frozen=True)
class ModelEntry:
    air: str
    name: str
    category: str
    architecture: str
    defaults: ModelDefaults
    locate: Callable[[Path], Path] = field(repr=False)
    owner_team: str | None = None  # None: public

    def visible_to(self, team: str) -> bool:
        return self.owner_team is None or self.owner_team == team


BUILTIN_MODELS: dict[str, ModelEntry] = {
    BUILTIN_SD15_AIR: ModelEntry(
        air=BUILTIN_SD15_AIR,
        name="wisp tiny SD 1.x (random weights)",
        category="checkpoint",
        architecture="sd1x",
        defaults=ModelDefaults(steps=20, cfg_scale=7.0),
        locate=ensure_tiny_sd15,
    )
}


class ModelLibrary:
    def __init__(self, data_dir: Path, device: str, dtype: Any = None) -> None:
        self.data_dir = data_dir
        self.device = device
        self.dtype = dtype
        self._loaded: dict[str, Any] = {}

    def resolve(self, air: str, team: str, parameter: str = "model") -> ModelEntry:
        """The entry for ``air`` if ``team`` may use it; a private model of another team looks missing."""
        entry = BUILTIN_MODELS.get(air)
        if entry is None or not entry.visible_to(team):
            raise ModelNotFound(f"no model {air[:200]!r} is available", parameter=parameter)
        return entry

    def pipeline(self, entry: ModelEntry) -> Any:
        """The loaded pipeline of ``entry``; loads it on first use (worker thread only)."""
        model = self._loaded.get(entry.air)
        if model is None:
            from engine.pipelines.stable_diffusion import StableDiffusionModel

            model = StableDiffusionModel.load(entry.locate(self.data_dir), self.device, self.dtype)
            self._loaded[entry.air] = model
        return model
