"""Cheap previews of an image still being denoised: latents → RGB with a fixed linear map.

Decoding latents with the VAE at every step would cost as much as a step; the
well-known per-family linear approximation (4 latent channels → RGB) costs
microseconds and is what UIs show while a diffusion model works.  The preview
has the latents' size (1/8 of the image), enlarged to at least 64 px per side.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from engine.pipelines import families

LATENT_RGB = {f.name: f.preview_factors for f in families.all()}
"""Family → its latent → RGB factors (``preview_factors`` of each family's descriptor)."""
DEFAULT_FAMILY = families.names()[0]
"""Whose factors a latent of an unregistered family is previewed with (the first registered: SD-1.x)."""
MIN_SIDE = 64


def preview_data_uris(latents: Any, family: str) -> list[str]:
    """One small PNG data URI per image in ``latents`` (shape [N, 4, h, w])."""
    import torch
    from PIL import Image

    factors = torch.tensor(LATENT_RGB.get(family, LATENT_RGB[DEFAULT_FAMILY]), dtype=torch.float32)
    with torch.no_grad():
        rgb = torch.einsum("nchw,ck->nhwk", latents.detach().float().cpu(), factors)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    out = []
    for array in pixels:
        image = Image.fromarray(array)
        scale = max(1, -(-MIN_SIDE // max(1, min(image.size))))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out
