"""The cost reported with ``includeCost``.

cost (USD, per image) = 0.0001 × megapixels × steps, rounded to 6 decimals,
where megapixels = width × height / 1,048,576.  A 1024×1024 image at 25 steps
costs 0.0026; a 512×512 image at 20 steps 0.0005.  It measures work done, not
money charged: self-hosted wisp bills nobody.
"""

from __future__ import annotations

USD_PER_MEGAPIXEL_STEP = 0.0001
USD_PER_TRAINING_STEP = 0.0005
"""Training: 0.0005 per step, whatever the resolution (the work is dominated by the UNet's backward pass)."""


def image_cost(width: int, height: int, steps: int) -> float:
    return round(USD_PER_MEGAPIXEL_STEP * (width * height / 1_048_576) * steps, 6)


def training_cost(steps: int) -> float:
    return round(USD_PER_TRAINING_STEP * steps, 6)
