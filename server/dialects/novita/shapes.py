"""Novita's ``/v3/async/txt2img`` request, as msgspec types.

Novita's reference wraps the fields as ``{"extra": {...}, "request": {...}}``;
its custom-LoRA guide (the seed) posts them flat.  Both are accepted.  Ranges
are left to the native task (one set of limits for every way in); fields
wisp cannot honour are declared only to be refused by name.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

UNSUPPORTED_REQUEST_FIELDS = ("sd_vae", "embeddings", "hires_fix", "refiner", "restore_faces", "enable_transparent_background")
UNSUPPORTED_EXTRA_FIELDS = ("custom_storage", "enterprise_plan")


class NovitaLora(msgspec.Struct, forbid_unknown_fields=True):
    model_name: str
    strength: float | None = None
    """None: the LoRA's own default weight."""


class Txt2ImgRequest(msgspec.Struct, forbid_unknown_fields=True):
    model_name: str
    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    sampler_name: str | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    image_num: int = 1
    seed: int = -1
    clip_skip: int | None = None
    loras: list[NovitaLora] | None = None
    sd_vae: Any = None
    embeddings: Any = None
    hires_fix: Any = None
    refiner: Any = None
    restore_faces: Any = None
    enable_transparent_background: Any = None


class WebhookTestMode(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = False
    return_task_status: str | None = None


class Webhook(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    test_mode: WebhookTestMode | None = None


class Extra(msgspec.Struct, forbid_unknown_fields=True):
    response_image_type: Literal["png", "jpeg", "webp"] = "png"
    webhook: Webhook | None = None
    enable_nsfw_detection: bool = False
    nsfw_detection_level: int | None = None
    custom_storage: Any = None
    enterprise_plan: Any = None
