"""Uploaded single-file SD-1.x and SDXL checkpoints (original LDM/A1111 and SGM layouts) → loaded models.

diffusers' ``from_single_file`` converts the ``model.diffusion_model.*``,
``first_stage_model.*`` and ``cond_stage_model.transformer.*`` tensors (SDXL:
``conditioner.embedders.0.transformer.*`` and ``conditioner.embedders.1.model.*``)
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
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from engine.lora_cache import LoraCache
from engine.pipelines import families
from engine.pipelines.family import CheckpointComponent, ModelFamily, RefinerLayout
from engine.pipelines.stable_diffusion.pipeline import StableDiffusionModel
from engine.safetensors_header import ModelLoadError, read_header

__all__ = [
    "CHECKPOINT_PREFIXES", "FAMILIES", "Family", "Layout", "ModelLoadError", "check_checkpoint", "family_of",
    "layout_of", "load_folder", "load_single_file", "read_header",
]  # fmt: skip

log = logging.getLogger("wisp.engine.loading")

_LIST_AT_MOST = 5


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_AT_MOST])
    return shown + (f" and {len(keys) - _LIST_AT_MOST} more" if len(keys) > _LIST_AT_MOST else "")


Family = ModelFamily
"""What differs between SD-1.x and SDXL single files (name, title, key layout, model class): the family descriptor."""

FAMILIES: dict[str, Family] = {f.name: f for f in families.all()}
"""The single-file families this build loads, by the family name of :mod:`engine.upload.sniff`."""

CHECKPOINT_PREFIXES = tuple(
    sorted(
        {c.prefix for f in FAMILIES.values() for c in f.components}
        | {c.prefix for f in FAMILIES.values() if f.refiner_layout is not None for c in f.refiner_layout.components}
    )
)
"""Every prefix a loaded tensor of an original-layout file has (an EMA copy or other extras have none)."""


@dataclass(frozen=True)
class Layout:
    """What a config folder configures: the family, the single-file components it loads and the wrapper class."""

    family: Family
    title: str
    components: tuple[CheckpointComponent, ...]
    model_class: Any
    refines_only: bool = False
    """A refiner-only layout (SDXL's refiner): it finishes another model's image, never starts one."""

    @classmethod
    def of(cls, family: Family, refiner: RefinerLayout | None = None) -> Layout:
        if refiner is None:
            return cls(family, family.title, family.components, family.model_class)
        return cls(family, refiner.title, refiner.components, refiner.model_class, refines_only=True)


def layout_of(config_folder: Path) -> Layout:
    """The layout a diffusers folder (built-in model or config-only folder) configures, from its model_index.json."""
    try:
        name = json.loads((Path(config_folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"no diffusers config folder at {config_folder}") from exc
    found = families.by_pipeline(name)
    if found is not None:
        return Layout.of(found)
    for family in FAMILIES.values():
        if family.refiner_layout is not None and family.refiner_layout.pipeline == name:
            return Layout.of(family, family.refiner_layout)
    raise ModelLoadError(f"{config_folder} configures a {name}, which this build cannot load")


def family_of(config_folder: Path) -> Family:
    """The family a diffusers folder (built-in model or config-only folder) configures, from its model_index.json."""
    return layout_of(config_folder).family


def load_folder(folder: Path, device: str = "cpu", dtype: Any = None, lora_cache: LoraCache | None = None) -> StableDiffusionModel:
    """Load a diffusers folder (a built-in model) with its layout's wrapper; ``lora_cache``: the engine's adapter cache."""
    model: StableDiffusionModel = layout_of(folder).model_class.load(folder, device, dtype, lora_cache)
    return model


def _expected_shapes(config_folder: Path, layout: Layout) -> dict[str, dict[str, tuple[int, ...]]]:
    """Each component's state-dict shapes, built on the meta device from its config (no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(name: str, cls: Any) -> Any:
        return cls(CLIPTextConfig.from_pretrained(str(config_folder / name), local_files_only=True))

    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_folder / "unet"))),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_folder / "vae"))),
        "text_encoder": lambda: text("text_encoder", CLIPTextModel),
        "text_encoder_2": lambda: text("text_encoder_2", CLIPTextModelWithProjection),
    }
    with torch.device("meta"):
        models = {c.name: builders[c.name]() for c in layout.components}
    return {name: {k: tuple(v.shape) for k, v in model.state_dict().items()} for name, model in models.items()}


def _converted_shapes(
    header: dict[str, tuple[int, ...]], config_folder: Path, layout: Layout
) -> dict[str, dict[str, tuple[int, ...]]]:
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
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig

    meta = {k: torch.empty(shape, device="meta") for k, shape in header.items()}

    def run(convert: Callable[[], dict[str, Any]]) -> dict[str, tuple[int, ...]]:
        try:
            converted = convert()
        except (KeyError, AttributeError, IndexError, TypeError):
            return {}  # the converter tripped over a missing block: reported as missing below
        return {k: tuple(v.shape) for k, v in converted.items() if v is not None}

    def open_clip(prefix: str) -> dict[str, Any]:
        # The converter only reads the model's config (its width, when the file has no text_projection).
        config = CLIPTextConfig.from_pretrained(str(config_folder / "text_encoder_2"), local_files_only=True)
        return convert_open_clip_checkpoint(SimpleNamespace(config=config), meta, prefix=prefix)

    unet_config = json.loads((config_folder / "unet" / "config.json").read_text())
    vae_config = json.loads((config_folder / "vae" / "config.json").read_text())
    only = lambda prefix: {k: v for k, v in meta.items() if k.startswith(prefix)}  # noqa: E731
    converters: dict[str, Callable[[CheckpointComponent], dict[str, tuple[int, ...]]]] = {
        "unet": lambda c: run(lambda: convert_ldm_unet_checkpoint(meta, unet_config)),
        "vae": lambda c: run(lambda: convert_ldm_vae_checkpoint(meta, vae_config)),
        # transformers 5 flattened CLIPTextModel; the file keeps ``text_model.``.
        "text_encoder": lambda c: {
            k.removeprefix("text_model."): v for k, v in run(lambda: convert_ldm_clip_checkpoint(only(c.prefix))).items()
        },
        # CLIPTextModelWithProjection still has its ``text_model`` level.
        "text_encoder_2": lambda c: run(lambda: open_clip(c.prefix)),
    }
    return {c.name: converters[c.name](c) for c in layout.components}


def check_checkpoint(path: Path, config_folder: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` holds every tensor of the configured model at the right shape.

    The family (SD-1.x or SDXL) is the config folder's.  Cheap (header
    only): the library runs it when a checkpoint is uploaded.
    """
    path, config_folder = Path(path), Path(config_folder)
    layout = layout_of(config_folder)
    header = read_header(path)
    expected = _expected_shapes(config_folder, layout)
    converted = _converted_shapes(header, config_folder, layout)
    for component in layout.components:  # a whole component absent says more than its first missing tensor
        if not any(k.startswith(component.prefix) for k in header):
            raise ModelLoadError(
                f"{path.name} has no {component.title} weights ({component.prefix}*); it is not a full {layout.title} checkpoint"
            )
    for component in layout.components:
        title, shapes = component.title, expected[component.name]
        got = converted[component.name]
        missing = sorted(k for k in shapes if k not in got)
        if missing:
            raise ModelLoadError(f"{path.name} is missing {len(missing)} {title} tensor(s): {_names(missing)}")
        wrong = sorted(k for k, shape in shapes.items() if got[k] != shape)
        if wrong:
            detail = ", ".join(f"{k} {list(got[k])} (expected {list(shapes[k])})" for k in wrong[:_LIST_AT_MOST])
            raise ModelLoadError(
                f"{path.name} does not match the {layout.title} architecture it was registered as: "
                f"{len(wrong)} {title} tensor(s) have the wrong shape: {detail}"
            )


def load_single_file(
    path: Path, config_folder: Path, device: str = "cpu", dtype: Any = None, lora_cache: LoraCache | None = None
) -> StableDiffusionModel:
    """Load an original-layout ``.safetensors`` checkpoint (SD-1.x or SDXL), configured by ``config_folder``.

    ``config_folder`` is a diffusers folder of the same architecture (the
    built-in tiny model's, or a config-only folder of the real shapes): it
    provides the component configs, the scheduler and the tokenizer(s), and
    its model_index.json decides the family.  Weights come only from
    ``path``.  ``dtype`` defaults to float32, which also upcasts fp16 files
    (CPU inference in fp16 is slow or unsupported).  ``lora_cache`` is the
    engine's adapter cache the model's LoRAs are read through (None: the
    model's own).  Never touches the network.
    """
    import torch

    path, config_folder = Path(path), Path(config_folder)
    if path.suffix.lower() != ".safetensors":
        # diffusers would unpickle anything else (.ckpt/.pt), which can run code.
        raise ModelLoadError(f"{path.name}: only .safetensors checkpoints can be loaded")
    layout = layout_of(config_folder)
    model_class = layout.model_class
    check_checkpoint(path, config_folder)
    try:
        pipe = model_class.pipeline_class().from_single_file(
            str(path),
            config=str(config_folder),
            local_files_only=True,
            torch_dtype=dtype or torch.float32,
            **model_class.LOAD_KWARGS,
        )
    except Exception as exc:
        log.debug("from_single_file failed for %s", path, exc_info=True)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"{path.name} could not be loaded: {first_line.replace(str(path), path.name)}") from exc
    for component in layout.components:
        model = getattr(pipe, component.name)
        left = [k for k, v in model.state_dict().items() if v.device.type == "meta"]
        if left:
            raise ModelLoadError(f"{path.name} left {len(left)} {component.title} tensor(s) unset: {_names(left)}")
    return model_class.from_pipeline(pipe, device, lora_cache)
