"""Uploaded single-file SD-1.x checkpoints (original LDM/A1111 layout) → :class:`StableDiffusionModel`.

diffusers' ``from_single_file`` converts the ``model.diffusion_model.*``,
``first_stage_model.*`` and ``cond_stage_model.transformer.*`` tensors
itself; what it needs besides the file is every component's config and the
tokenizer, which ``config_folder`` (a local diffusers folder of the same
architecture) supplies.  With ``config`` a local folder and
``local_files_only=True`` diffusers neither reads ``original_config`` nor
contacts the hub.

diffusers is lenient with broken files in ways that matter to a server: a
text-encoder tensor missing from the file is left uninitialised on the meta
device *without any error*, a missing UNet tensor surfaces as "Cannot copy
out of meta tensor".  So the file's tensor names and shapes are checked
against the configured architecture first (from the safetensors header
alone, before any weight is read), and every failure becomes a
:class:`ModelLoadError` that says what is wrong.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from engine.errors import EngineError
from engine.pipelines.stable_diffusion.pipeline import StableDiffusionModel
from protocol.errors import ErrorCode

log = logging.getLogger("wisp.engine.loading")

_LIST_AT_MOST = 5


class ModelLoadError(EngineError):
    """A model file cannot be loaded: unreadable, incomplete, or of another architecture."""

    code = ErrorCode.MODEL_LOAD_FAILED


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_AT_MOST])
    return shown + (f" and {len(keys) - _LIST_AT_MOST} more" if len(keys) > _LIST_AT_MOST else "")


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors file, without reading any tensor data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file") from exc


def _expected_shapes(config_folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Each component's state-dict shapes, built on the meta device from its config (no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_folder / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_folder / "vae")))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_folder / "text_encoder"), local_files_only=True))
    return {
        name: {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text))
    }


def _converted_shapes(header: dict[str, tuple[int, ...]], config_folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """What diffusers' own converters make of the file's names, per component.

    The converters run on meta tensors, so this costs no memory; they are
    the exact functions ``from_single_file`` uses, so a name they drop here
    is a tensor the real load would miss.
    """
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    meta = {k: torch.empty(shape, device="meta") for k, shape in header.items()}

    def run(convert: Callable[[], dict[str, Any]]) -> dict[str, tuple[int, ...]]:
        try:
            converted = convert()
        except (KeyError, AttributeError, IndexError, TypeError):
            return {}  # the converter tripped over a missing block: reported as missing below
        return {k: tuple(v.shape) for k, v in converted.items() if v is not None}

    unet_config = json.loads((config_folder / "unet" / "config.json").read_text())
    vae_config = json.loads((config_folder / "vae" / "config.json").read_text())
    return {
        "unet": run(lambda: convert_ldm_unet_checkpoint(meta, unet_config)),
        "vae": run(lambda: convert_ldm_vae_checkpoint(meta, vae_config)),
        # transformers 5 flattened CLIPTextModel; the file keeps ``text_model.``.
        "text_encoder": {k.removeprefix("text_model."): v for k, v in run(lambda: convert_ldm_clip_checkpoint(meta)).items()},
    }


_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.transformer."}
_TITLES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}


def check_checkpoint(path: Path, config_folder: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` holds every tensor of the configured SD-1.x model at the right shape.

    Cheap (header only): the library can run it when a checkpoint is uploaded.
    """
    path, config_folder = Path(path), Path(config_folder)
    header = read_header(path)
    expected = _expected_shapes(config_folder)
    converted = _converted_shapes(header, config_folder)
    for component, shapes in expected.items():
        title = _TITLES[component]
        if not any(k.startswith(_PREFIXES[component]) for k in header):
            raise ModelLoadError(f"{path.name} has no {title} weights ({_PREFIXES[component]}*); it is not a full SD-1.x checkpoint")
        got = converted[component]
        missing = sorted(k for k in shapes if k not in got)
        if missing:
            raise ModelLoadError(f"{path.name} is missing {len(missing)} {title} tensor(s): {_names(missing)}")
        wrong = sorted(k for k, shape in shapes.items() if got[k] != shape)
        if wrong:
            detail = ", ".join(f"{k} {list(got[k])} (expected {list(shapes[k])})" for k in wrong[:_LIST_AT_MOST])
            raise ModelLoadError(
                f"{path.name} does not match the SD-1.x architecture it was registered as: "
                f"{len(wrong)} {title} tensor(s) have the wrong shape: {detail}"
            )


def load_single_file(path: Path, config_folder: Path, device: str = "cpu", dtype: Any = None) -> StableDiffusionModel:
    """Load an original-layout SD-1.x ``.safetensors`` checkpoint, configured by ``config_folder``.

    ``config_folder`` is a diffusers folder of the same architecture (for the
    tests, the built-in model's): it provides the component configs, the
    scheduler and the tokenizer.  Weights come only from ``path``.  ``dtype``
    defaults to float32, which also upcasts fp16 files (CPU inference in
    fp16 is slow or unsupported).  Never touches the network.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    path, config_folder = Path(path), Path(config_folder)
    if path.suffix.lower() != ".safetensors":
        # diffusers would unpickle anything else (.ckpt/.pt), which can run code.
        raise ModelLoadError(f"{path.name}: only .safetensors checkpoints can be loaded")
    if not (config_folder / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers config folder at {config_folder}")
    check_checkpoint(path, config_folder)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_folder),
            local_files_only=True,
            torch_dtype=dtype or torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as exc:
        log.debug("from_single_file failed for %s", path, exc_info=True)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"{path.name} could not be loaded: {first_line.replace(str(path), path.name)}") from exc
    for component in ("unet", "vae", "text_encoder"):
        model = getattr(pipe, component)
        left = [k for k, v in model.state_dict().items() if v.device.type == "meta"]
        if left:
            raise ModelLoadError(f"{path.name} left {len(left)} {_TITLES[component]} tensor(s) unset: {_names(left)}")
    return StableDiffusionModel.from_pipeline(pipe, device)
