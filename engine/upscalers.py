"""Uploaded upscaler models (category ``upscaler``): detected and run by spandrel, read only from safetensors.

spandrel (chaiNNer's library) tells a super-resolution network's architecture
and hyperparameters from its state dict alone (ESRGAN/RRDBNet, Real-ESRGAN's
SRVGGNetCompact, SwinIR, HAT, DAT, SPAN, …) and builds the module.  wisp uses
it for two things: at upload, to refuse a file no architecture recognises, or
one that is not a super-resolution model (a denoiser, a face restorer), naming
what it found; at inference, to build the module that upscales the image.
Files are read with ``safetensors.torch.load_file`` only: nothing is ever
unpickled (spandrel's own ``.pth``/``.ckpt`` loader is never called; the upload
path refuses every format but safetensors before a byte is fetched).

Why spandrel is imported piecemeal: ``spandrel/__init__.py`` imports its main
registry, which imports every architecture, and two of them import
torchvision — ``LaMa`` (inpainting) and ``RestoreFormer`` (face restoration),
neither an upscaler.  No CPU build of torchvision for this project's torch
(2.13.0+cpu) is reachable from its package sources, and the CUDA build pip
would pick fails to load against the CPU torch (it also breaks diffusers'
imports once installed), so spandrel is installed without its dependencies and
its ``__init__`` cannot run.  :func:`_spandrel` therefore registers a bare
package module for ``spandrel`` (its ``__path__`` the installed package's
folder, found with :func:`importlib.util.find_spec`, without executing it) and
imports only the registry, the descriptors and the architectures, building an
:class:`ArchRegistry` of spandrel 0.4.2's main registry in its own order less
those two (:data:`ARCHITECTURES`).  Where a working torchvision is installed,
``import spandrel`` works and its main registry is used as it is (LaMa and
RestoreFormer are not super-resolution models, so they are refused either way).

A loaded upscaler (:class:`LoadedUpscaler`) lives in the engine's model cache
(key ``upscaler|<sha256>``, sized by its parameters), pinned while a request
runs it on the device worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.upload.safetensors_check import InvalidModelFile
from protocol.errors import ErrorCode

SPANDREL_VERSION = "0.4.2"
"""The spandrel release :data:`ARCHITECTURES` copies (pinned in the install: README, ``.ci/browser-deps.sh``)."""

ARCHITECTURES: tuple[tuple[str, str], ...] = (
    ("Compact", "CompactArch"), ("SwiftSRGAN", "SwiftSRGANArch"), ("HAT", "HATArch"), ("GRL", "GRLArch"),
    ("Swin2SR", "Swin2SRArch"), ("SwinIR", "SwinIRArch"), ("GFPGAN", "GFPGANArch"),
    ("OmniSR", "OmniSRArch"), ("SCUNet", "SCUNetArch"), ("FBCNN", "FBCNNArch"), ("Uformer", "UformerArch"),
    ("RGT", "RGTArch"), ("DAT", "DATArch"), ("CRAFT", "CRAFTArch"), ("KBNet", "KBNetArch"), ("DITN", "DITNArch"),
    ("MMRealSR", "MMRealSRArch"), ("SPAN", "SPANArch"), ("RealCUGAN", "RealCUGANArch"), ("SAFMN", "SAFMNArch"),
    ("SAFMNBCIE", "SAFMNBCIEArch"), ("DCTLSA", "DCTLSAArch"), ("FFTformer", "FFTformerArch"), ("NAFNet", "NAFNetArch"),
    ("ATD", "ATDArch"), ("MixDehazeNet", "MixDehazeNetArch"), ("DRUNet", "DRUNetArch"), ("DnCNN", "DnCNNArch"),
    ("IPT", "IPTArch"), ("DRCT", "DRCTArch"), ("ESRGAN", "ESRGANArch"), ("PLKSR", "PLKSRArch"),
    ("RetinexFormer", "RetinexFormerArch"), ("HVICIDNet", "HVICIDNetArch"), ("SeemoRe", "SeemoReArch"),
    ("MoSR", "MoSRArch"), ("MoESR", "MoESRArch"), ("RCAN", "RCANArch"), ("FDAT", "FDATArch"), ("AuraSR", "AuraSRArch"),
)  # fmt: skip
"""(module under ``spandrel.architectures``, class) of every architecture in spandrel 0.4.2's main registry
(``spandrel/__helpers/main_registry.py``), in its order, except ``LaMa`` and ``RestoreFormer``: they import
torchvision, and neither is an upscaler (inpainting; face restoration).  A test checks this against the file."""

LEFT_OUT = ("RestoreFormer", "LaMa")
"""The main registry's architectures wisp does without (they need torchvision; see the module docstring)."""

CATEGORY = "upscaler"
"""The modelUpload category, and its one architecture value (the network's own is detected)."""


class UpscalerUnavailable(EngineError):
    """spandrel is not installed, so no upscaler model can be read or run."""

    code = ErrorCode.UNSUPPORTED_PARAMETER


INSTALL_HINT = f"pip install --no-deps spandrel=={SPANDREL_VERSION}"


@dataclass(frozen=True)
class Spandrel:
    """The parts of spandrel wisp uses, however they were imported."""

    registry: Any
    """An ``ArchRegistry``: detection order as spandrel's own."""
    version: str
    piecemeal: bool
    """True when imported without ``spandrel/__init__.py`` (no working torchvision)."""


_lock = threading.Lock()
_loaded: Spandrel | None = None


def _working_torchvision() -> bool:
    """Whether torchvision is installed; a build that fails to load raises here, so it counts as absent."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def _spandrel(parameter: str | None) -> Spandrel:
    """spandrel's registry, imported once (thread-safe); :class:`UpscalerUnavailable` when it is not installed."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        spec = importlib.util.find_spec("spandrel") if "spandrel" not in sys.modules else sys.modules["spandrel"].__spec__
        if spec is None or not spec.submodule_search_locations:
            raise UpscalerUnavailable(
                f"upscaler models need spandrel, which is not installed on this server ({INSTALL_HINT})", parameter=parameter
            )
        existing = sys.modules.get("spandrel")
        if existing is not None and hasattr(existing, "MAIN_REGISTRY"):  # imported whole already (a working torchvision)
            _loaded = Spandrel(existing.MAIN_REGISTRY, existing.__version__, piecemeal=False)
        elif existing is None and _working_torchvision():
            import spandrel as whole

            _loaded = Spandrel(whole.MAIN_REGISTRY, whole.__version__, piecemeal=False)
        else:
            _loaded = _piecemeal(spec, parameter)
        return _loaded


def _piecemeal(spec: Any, parameter: str | None) -> Spandrel:
    """spandrel's registry without running ``spandrel/__init__.py`` (see the module docstring); under ``_lock``."""
    from importlib.metadata import PackageNotFoundError, version

    if "spandrel" not in sys.modules:
        package = types.ModuleType("spandrel", "spandrel, imported piecemeal by wisp (engine.upscalers): no __init__ run")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        package.__package__ = "spandrel"
        package.__spec__ = spec
        sys.modules["spandrel"] = package
    try:
        found = version("spandrel")
    except PackageNotFoundError:
        found = "unknown"
    try:
        registry_module = importlib.import_module("spandrel.__helpers.registry")
        registry = registry_module.ArchRegistry()
        for module_name, class_name in ARCHITECTURES:
            module = importlib.import_module(f"spandrel.architectures.{module_name}")
            registry.add(registry_module.ArchSupport.from_architecture(getattr(module, class_name)()))
    except (ImportError, AttributeError) as exc:  # another release, laid out otherwise
        for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
            del sys.modules[name]
        raise UpscalerUnavailable(
            f"spandrel {found} is installed, but wisp reads spandrel {SPANDREL_VERSION}'s architectures ({type(exc).__name__}: "
            f"{str(exc)[:120]}); {INSTALL_HINT}", parameter=parameter,
        ) from None
    return Spandrel(registry, found, piecemeal=True)


def imported() -> bool:
    """Whether spandrel's registry is already imported (:func:`require` then returns at once)."""
    return _loaded is not None


def require(parameter: str | None = "category") -> Spandrel:
    """spandrel's parts, or :class:`UpscalerUnavailable` (at ``parameter``) naming how to install it.

    The first call imports spandrel's architectures: callers beside other
    model loads take the engine's load lock for it
    (:func:`engine.models.spandrel_ready`).
    """
    return _spandrel(parameter)


@dataclass(frozen=True)
class Detected:
    """What an upscaler file is: spandrel's architecture name and id, its scale and channels."""

    architecture: str
    arch_id: str
    scale: int
    input_channels: int
    output_channels: int

    def describe(self) -> str:
        return f"{self.architecture} ×{self.scale}"

    def as_meta(self) -> dict[str, Any]:
        """What the registry keeps of it (a model row's ``meta["upscaler"]``)."""
        return {"architecture": self.architecture, "id": self.arch_id, "scale": self.scale,
                "inputChannels": self.input_channels, "outputChannels": self.output_channels}


def _state_dict(path: Path) -> dict[str, Any]:
    """The file's tensors on the CPU, by safetensors (never a pickle)."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _build(state_dict: dict[str, Any], parameter: str | None) -> Any:
    """The descriptor of the first architecture (detection order) that claims ``state_dict``, or :class:`InvalidModelFile`."""
    parts = require(parameter)
    from_canonical = importlib.import_module("spandrel.__helpers.canonicalize").canonicalize_state_dict
    state_dict = from_canonical(state_dict)
    for support in parts.registry.architectures("detection"):
        try:
            claimed = support.detect(state_dict)
        except Exception:
            claimed = False
        if not claimed:
            continue
        name = support.architecture.name
        try:
            return support.architecture.load(state_dict)
        except Exception as exc:
            raise InvalidModelFile(
                f"this file's tensors look like a {name} network, but they do not load as one ({type(exc).__name__}: "
                f"{str(exc)[:200]})", parameter=parameter,
            ) from None
    names = sorted(state_dict)
    sample = ", ".join(repr(n[:60]) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise InvalidModelFile(
        f"no upscaler architecture recognises this file (its tensors: {sample}); wisp reads every architecture of "
        f"spandrel {parts.version} but {' and '.join(sorted(LEFT_OUT))}", parameter=parameter,
    )


def detect(path: Path, parameter: str | None = "downloadURL") -> Detected:
    """Worker thread: load ``path`` on the CPU and tell which super-resolution network it is.

    Refuses (:class:`InvalidModelFile`) a file no architecture recognises,
    one whose weights do not load into the architecture that claims it, a
    model that is not for super resolution (spandrel's ``purpose`` other than
    ``SR``: a denoiser or restorer keeps the size; a face restorer works on
    faces only) and one that does not map RGB to RGB.
    """
    descriptor = _build(_state_dict(path), parameter)
    name, purpose = descriptor.architecture.name, descriptor.purpose
    if purpose != "SR":
        what = {"Restoration": "a restoration model (it keeps the image's size)", "FaceSR": "a face restoration model",
                "Inpainting": "an inpainting model"}.get(purpose, f"a {purpose} model")
        raise InvalidModelFile(
            f"this file is a {name} network ×{descriptor.scale}, {what}, not an upscaler (purpose {purpose}, not SR)",
            parameter=parameter,
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise InvalidModelFile(
            f"this {name} ×{descriptor.scale} upscaler maps {descriptor.input_channels} channels to {descriptor.output_channels}; "
            "wisp upscales RGB images (3 to 3)", parameter=parameter,
        )
    return Detected(architecture=name, arch_id=str(descriptor.architecture.id), scale=int(descriptor.scale),
                    input_channels=descriptor.input_channels, output_channels=descriptor.output_channels)


class LoadedUpscaler:
    """A built upscaler network, as the model cache holds it (``base``: its module, for sizing; ``to``: for moves)."""

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)

    @property
    def base(self) -> Any:
        return self.descriptor.model

    def to(self, device: str) -> "LoadedUpscaler":
        self.descriptor.model.to(device)
        return self

    def run(self, image: Any) -> Any:
        """Device worker: an RGB PIL image → the network's output (``scale`` × each side), as an RGB PIL image."""
        import numpy as np
        import torch
        from PIL import Image

        parameter = next(self.descriptor.model.parameters())
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        tensor = pixels.permute(2, 0, 1).unsqueeze(0).to(device=parameter.device, dtype=torch.float32).div_(255.0)
        with torch.inference_mode():
            output = self.descriptor(tensor.to(parameter.dtype))
            output = output.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        array = output[0].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array, "RGB")


def load(path: Path, device: str, dtype: Any = None) -> LoadedUpscaler:
    """Device worker: ``path`` built as its network on ``device``, in ``dtype`` where the architecture supports it
    (None, or a half precision it does not support: float32)."""
    import torch

    from engine.safetensors_header import ModelLoadError

    try:
        descriptor = _build(_state_dict(path), "model")
    except InvalidModelFile as exc:  # it was detected at upload: the stored file no longer is what it was
        raise ModelLoadError(exc.message, parameter="model") from None
    if (dtype is torch.float16 and descriptor.supports_half) or (dtype is torch.bfloat16 and descriptor.supports_bfloat16):
        descriptor.to(device=torch.device(device), dtype=dtype)
    else:
        descriptor.to(device=torch.device(device), dtype=torch.float32)
    descriptor.eval()
    return LoadedUpscaler(descriptor)
