"""Decode untrusted image bytes with limits; encode results deterministically.

Decoding checks the byte size first, then the header's pixel count before any
pixel is decoded, so a small compressed file cannot expand into gigabytes (a
decompression bomb).  Encoding writes no timestamps or metadata, so the same
pixels always give the same bytes.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from engine.errors import InvalidImage

MAX_INPUT_BYTES = 32 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096
ALLOWED_INPUT_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF"}

FORMATS = {"PNG": ("PNG", "png", "image/png"), "JPG": ("JPEG", "jpg", "image/jpeg"), "WEBP": ("WEBP", "webp", "image/webp")}
"""Wire outputFormat → (Pillow format, file extension, MIME type)."""

EXT_MIME = {ext: mime for _, ext, mime in FORMATS.values()}


def decode_image(data: bytes, parameter: str, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Decode ``data`` into an RGB image or raise :class:`InvalidImage` naming ``parameter``."""
    if len(data) > max_bytes:
        raise InvalidImage(f"{parameter} is {len(data)} bytes; the limit is {max_bytes}", parameter=parameter)
    if not data:
        raise InvalidImage(f"{parameter} is empty", parameter=parameter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            if probe.format not in ALLOWED_INPUT_FORMATS:
                raise InvalidImage(f"{parameter}: format {probe.format} is not accepted", parameter=parameter)
            width, height = probe.size
            if width * height > max_pixels or width < 1 or height < 1:
                raise InvalidImage(
                    f"{parameter} is {width}×{height}; at most {max_pixels} pixels are accepted", parameter=parameter
                )
            probe.load()
            return probe.convert("RGB")
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(f"{parameter} decodes to too many pixels", parameter=parameter) from None
    except Exception:
        raise InvalidImage(f"{parameter} is not a decodable image", parameter=parameter) from None


def encode_image(image: Image.Image, output_format: str, quality: int, parameters: str | None = None) -> bytes:
    """Encode to PNG/JPG/WEBP: equal pixels (and equal ``parameters``) give equal bytes.

    ``parameters``: a PNG's A1111 generation-parameters text (a ``tEXt`` chunk named
    ``parameters``, which A1111, ComfyUI and Civitai read); no other metadata is written."""
    pil_format = FORMATS[output_format][0]
    buf = io.BytesIO()
    if pil_format == "PNG":
        info = None
        if parameters is not None:
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_itxt("parameters", parameters) if not parameters.isascii() else info.add_text("parameters", parameters)
        image.save(buf, format="PNG", optimize=False, compress_level=6, pnginfo=info)
    elif pil_format == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()
