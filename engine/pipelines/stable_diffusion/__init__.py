"""The SD-1.x family: txt2img, img2img and inpainting from one loaded copy of the weights.

The single-file loader's names (``ModelLoadError``, ``check_checkpoint``,
``load_single_file``) are served lazily: the loader asks the family
registry, which imports this folder's ``family.py`` while it registers, so
importing the loader from here eagerly would see the registry half built.
"""

from typing import Any

from engine.pipelines.stable_diffusion.pipeline import GenerationSpec, StableDiffusionModel

__all__ = ["GenerationSpec", "ModelLoadError", "StableDiffusionModel", "check_checkpoint", "load_single_file"]

_LOADING = frozenset({"ModelLoadError", "check_checkpoint", "load_single_file"})


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from engine.pipelines.stable_diffusion import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
