"""A safetensors file's tensor names and shapes, read from its header alone, and the error for a file that cannot be loaded.

A leaf module (the engine's errors and the safetensors package only): the
single-file loader (:mod:`engine.pipelines.stable_diffusion.loading`), the
built-in config pickers (:mod:`engine.builtin.sd15_config`) and the VAE
loader (:mod:`engine.vae`) all read headers through it, so none of them has
to import another to do so.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import EngineError
from protocol.errors import ErrorCode


class ModelLoadError(EngineError):
    """A model file cannot be loaded: unreadable, incomplete, or of another architecture."""

    code = ErrorCode.MODEL_LOAD_FAILED


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors file, without reading any tensor data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file") from exc
