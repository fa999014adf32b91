"""Guide-image preprocessors that need no model weights, and the names of those that would.

A ControlNet is trained on one kind of guide (edges, depth, pose, …); Runware
lets a request send a photo and name the preprocessor that turns it into that
kind.  The ones computable by an honest algorithm run here (OpenCV): ``canny``
(edge map, with ``lowThresholdCanny``/``highThresholdCanny``, default 100/200),
``tile`` (``tile_gaussian``: a Gaussian blur, radius 3; ``tile_resample``: a
quarter-size copy enlarged again, the blurry guides tile ControlNets are
trained on) and ``shuffle`` (the content shuffle of ControlNet 1.1: the image
remapped through a smooth random flow field, seeded so the same input gives
the same guide).
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

COMPUTED = ("canny", "tile", "tile_gaussian", "tile_resample", "shuffle")
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
    "tile_colorfix": "a colour-fix tile preprocessor (not built yet)",
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


def tile(image: Any, resample: bool = False) -> Any:
    """A tile ControlNet's guide: blurred (Gaussian, radius 3), or a quarter-size copy enlarged again."""
    from PIL import Image, ImageFilter

    if resample:
        small = image.resize((max(1, image.width // 4), max(1, image.height // 4)), Image.Resampling.BICUBIC)
        return small.resize(image.size, Image.Resampling.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(3))


def _noise_disk(height: int, width: int, scale: int, rng: Any) -> Any:
    import cv2
    import numpy as np

    noise = rng.uniform(0.0, 1.0, size=(height // scale + 2, width // scale + 2)).astype(np.float32)
    noise = cv2.resize(noise, (width + 2 * scale, height + 2 * scale), interpolation=cv2.INTER_CUBIC)[scale:scale + height, scale:scale + width]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-6)


def shuffle(image: Any, seed: int = 0) -> Any:
    """ControlNet 1.1's content shuffle: the image remapped through a smooth random flow field (seeded)."""
    import cv2
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    scale = max(8, min(256, min(height, width) // 2))
    rng = np.random.default_rng(seed)
    x = _noise_disk(height, width, scale, rng) * float(width - 1)
    y = _noise_disk(height, width, scale, rng) * float(height - 1)
    return Image.fromarray(cv2.remap(pixels, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR))


def apply(name: str, image: Any, low: int | None = None, high: int | None = None) -> Any:
    """``image`` preprocessed by ``name`` (checked with :func:`check`)."""
    if name == "canny":
        return canny(image, low, high)
    if name in ("tile", "tile_gaussian", "tile_resample"):
        return tile(image, resample=name == "tile_resample")
    if name == "shuffle":
        return shuffle(image)
    raise PreprocessorUnavailable(f"no preprocessor {name!r}")
