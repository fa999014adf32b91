"""Guide-image preprocessors that need no model weights, and the names of those that would.

A ControlNet is trained on one kind of guide (edges, depth, pose, …); Runware
lets a request send a photo and name the preprocessor that turns it into that
kind.  The ones computable by an honest algorithm run here (OpenCV): ``canny``
(edge map, with ``lowThresholdCanny``/``highThresholdCanny``, default 100/200).
The ones that need an annotator network (depth, normals, pose, segmentation,
line art, soft edges, MLSD) are refused naming what is missing: wisp downloads
nothing, and ships no annotator weights.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError
from protocol.errors import ErrorCode

CANNY_LOW, CANNY_HIGH = 100, 200
"""Runware's defaults for ``lowThresholdCanny`` / ``highThresholdCanny``."""

COMPUTED = ("canny",)
"""Preprocessors wisp runs itself."""

NEEDS_A_MODEL: dict[str, str] = {
    "depth": "a depth estimator (MiDaS, ZoE, Depth Anything)",
    "normalbae": "a surface-normal estimator (NormalBAE)",
    "normal": "a surface-normal estimator (NormalBAE)",
    "openpose": "a pose estimator (OpenPose)",
    "seg": "a segmentation network (OneFormer, UniFormer)",
    "lineart": "a line-art network",
    "lineart_anime": "a line-art network",
    "softedge": "a soft-edge network (HED, PiDiNet)",
    "mlsd": "a line-segment network (M-LSD)",
    "scribble": "a soft-edge network (HED, PiDiNet)",
    "shuffle": "a content-shuffle implementation (not built yet)",
    "tile": "a tile resampler (not built yet)",
    "inpaint": "an inpainting preprocessor (not built yet)",
}
"""Preprocessor family → what running it would need (for the refusal)."""


class PreprocessorUnavailable(EngineError):
    code = ErrorCode.UNSUPPORTED_PARAMETER


def check(name: str, parameter: str) -> str:
    """The canonical name of a preprocessor wisp can run, or :class:`PreprocessorUnavailable` saying why not.

    Names are matched case-insensitively and by family, so the 0.5 SDK's
    ``canny``, ``depth_midas``, ``openpose_face`` or ``softedge_hed`` are understood.
    """
    key = name.strip().lower()
    if key in COMPUTED:
        return key
    family = next((f for f in sorted(NEEDS_A_MODEL, key=len, reverse=True) if key == f or key.startswith(f + "_")), None)
    if family is not None:
        raise PreprocessorUnavailable(f"the {name!r} preprocessor needs {NEEDS_A_MODEL[family]}, which this server does not have; "
                                      f"send a preprocessed guide image (wisp computes: {', '.join(COMPUTED)})", parameter=parameter)
    raise PreprocessorUnavailable(f"no preprocessor {name!r} (wisp computes: {', '.join(COMPUTED)})", parameter=parameter)


def canny(image: Any, low: int | None = None, high: int | None = None) -> Any:
    """An RGB edge map (white edges on black) of a PIL image, by OpenCV's Canny on its luminance."""
    import cv2
    import numpy as np
    from PIL import Image

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, CANNY_LOW if low is None else low, CANNY_HIGH if high is None else high)
    return Image.fromarray(edges).convert("RGB")


def apply(name: str, image: Any, low: int | None = None, high: int | None = None) -> Any:
    """``image`` preprocessed by ``name`` (checked with :func:`check`)."""
    if name == "canny":
        return canny(image, low, high)
    raise PreprocessorUnavailable(f"no preprocessor {name!r}")
