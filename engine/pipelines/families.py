"""The model-family registry: which families this build runs, and which family an architecture is.

Each family's descriptor (:class:`~engine.pipelines.family.ModelFamily`)
lives in its own folder (``engine/pipelines/<family>/family.py``) and is
registered here, once, at the bottom of this module: adding a family is a new
folder and one ``register`` line.  Everything else asks this module
(``family_of(architecture)``, ``get(name)``, ``all()``) instead of switching
on a family name.

Descriptor modules import :mod:`engine.pipelines.family` (the type), never
this module, so the registry can import them without a circle.
"""

from __future__ import annotations

from engine.pipelines.family import ModelFamily

__all__ = ["ModelFamily", "all", "by_pipeline", "family_of", "get", "names", "register"]

_FAMILIES: dict[str, ModelFamily] = {}
_ARCHITECTURES: dict[str, ModelFamily] = {}
_READY = False  # set once this module's registration lines have run


def _ready() -> None:
    if not _READY:
        raise RuntimeError(
            "the model-family registry was asked while it is still registering: a module imported by a "
            "family descriptor must not ask engine.pipelines.families at import time"
        )


def register(family: ModelFamily) -> ModelFamily:
    """Add ``family``; its name and architectures must be new."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    if family.name not in family.architectures:
        raise ValueError(f"model family {family.name!r} must list its own name among its architectures")
    taken = sorted(a for a in family.architectures if a in _ARCHITECTURES)
    if taken:
        raise ValueError(f"architectures {', '.join(taken)} already belong to another family")
    _FAMILIES[family.name] = family
    _ARCHITECTURES.update(dict.fromkeys(family.architectures, family))
    return family


def get(name: str) -> ModelFamily:
    """The family called ``name`` (``KeyError`` if this build has none)."""
    _ready()
    return _FAMILIES[name]


def family_of(architecture: str) -> ModelFamily | None:
    """The family a declared architecture (``pony``) or family name (``sdxl``) belongs to; None: not runnable here."""
    _ready()
    return _ARCHITECTURES.get(architecture)


def by_pipeline(class_name: str) -> ModelFamily | None:
    """The family whose diffusers folders name ``class_name`` in model_index.json."""
    _ready()
    return next((f for f in _FAMILIES.values() if f.pipeline == class_name), None)


def all() -> tuple[ModelFamily, ...]:  # noqa: A001 - the registry's own namespace
    """Every registered family, in registration order."""
    _ready()
    return tuple(_FAMILIES.values())


def names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    _ready()
    return tuple(_FAMILIES)


# ---- the families this build runs: one line each -------------------------------------------

from engine.pipelines.stable_diffusion.family import FAMILY as _SD1X  # noqa: E402
from engine.pipelines.stable_diffusion_xl.family import FAMILY as _SDXL  # noqa: E402

register(_SD1X)
register(_SDXL)
_READY = True
