"""Outpainting's canvas: the seed image extended by margins, and the mask of what is to be painted.

Runware's ``outpaint: {top, right, bottom, left, blur}`` names the pixels added
on each side; ``width``/``height`` must be the extended size.  The margins are
filled by repeating the image's edge pixels (a better start for the inpainting
model than a flat colour), the mask is white over them and black over the
image, and ``blur`` feathers the seam: the mask's edge is blurred *into the
margin* only, so the seed image's own pixels stay exactly as sent (the engine
composites them back after the run).
"""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidInput


def extend(image: Any, margins: tuple[int, int, int, int, int], width: int, height: int) -> tuple[Any, Any]:
    """(canvas, mask) for ``image`` extended by (top, right, bottom, left) and feathered by ``blur``."""
    import numpy as np
    from PIL import Image, ImageFilter

    top, right, bottom, left, blur = margins
    want = (image.width + left + right, image.height + top + bottom)
    if (width, height) != want:
        raise InvalidInput(
            f"with outpaint, width × height must be the seed image's {image.width}×{image.height} plus the margins: "
            f"{want[0]}×{want[1]} (got {width}×{height})",
            parameter="width" if width != want[0] else "height",
        )
    pixels = np.asarray(image)
    canvas = Image.fromarray(np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge"))
    mask: Any = np.full((height, width), 255, dtype=np.uint8)
    mask[top:top + image.height, left:left + image.width] = 0
    if blur:
        # A ramp inside the margins: from about half at the seam to full paint ``blur`` pixels out; the image stays 0.
        inside = np.asarray(Image.fromarray(255 - mask).filter(ImageFilter.GaussianBlur(blur))).astype(np.int16)
        mask = (255 - inside).clip(0, 255).astype(np.uint8)
        mask[top:top + image.height, left:left + image.width] = 0
    return canvas, Image.fromarray(mask, mode="L")
