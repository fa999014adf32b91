"""A Novita txt2img request → one native ``imageInference`` task, and native field names back.

Mapping: ``model_name`` → ``model`` and ``loras[].model_name`` → ``lora[].model``
(by :func:`server.dialects.names.resolve_model`), ``prompt`` →
``positivePrompt``, ``negative_prompt`` → ``negativePrompt``, ``sampler_name`` →
``scheduler`` (:mod:`.samplers`), ``guidance_scale`` → ``CFGScale``,
``image_num`` → ``numberResults``, ``seed`` (-1 = random) → ``seed``,
``clip_skip`` in A1111 numbering (0 or 1 = none, 2 = skip one layer) →
``clipSkip`` = n − 1, ``loras[].strength`` → ``lora[].weight``,
``extra.response_image_type`` → ``outputFormat``.
"""

from __future__ import annotations

import re
from typing import Any

from server.dialects.decode import decode
from server.dialects.errors import DialectError
from server.dialects.novita.samplers import scheduler_for
from server.dialects.novita.shapes import UNSUPPORTED_EXTRA_FIELDS, UNSUPPORTED_REQUEST_FIELDS, Extra, Txt2ImgRequest

_FORMATS = {"png": "PNG", "jpeg": "JPG", "webp": "WEBP"}
_NATIVE_NAMES = {
    "model": "model_name",
    "positivePrompt": "prompt",
    "negativePrompt": "negative_prompt",
    "CFGScale": "guidance_scale",
    "scheduler": "sampler_name",
    "clipSkip": "clip_skip",
    "numberResults": "image_num",
    "outputFormat": "extra.response_image_type",
}
_LORA_FIELD = re.compile(r"lora\[(\d+)\]\.(model|weight)")


def novita_name(native: str) -> str:
    """A native field path in Novita's words (``lora[0].weight`` → ``loras[0].strength``)."""
    lora = _LORA_FIELD.fullmatch(native)
    if lora:
        return f"loras[{lora[1]}].{'model_name' if lora[2] == 'model' else 'strength'}"
    return _NATIVE_NAMES.get(native, native)


def parse(body: dict[str, Any]) -> tuple[Txt2ImgRequest, Extra]:
    """The request and its ``extra``, from either the wrapped or the flat form."""
    body = dict(body)
    extra = decode(body.pop("extra", None) or {}, Extra, "extra")
    wrapped = body.get("request")
    if isinstance(wrapped, dict):
        if len(body) > 1:
            raise DialectError("invalidParameter", "with a `request` object, only `extra` may sit beside it", parameter=next(k for k in body if k != "request"))
        request = decode(wrapped, Txt2ImgRequest, "request")
    else:
        request = decode(body, Txt2ImgRequest, "")
    for name in UNSUPPORTED_REQUEST_FIELDS:
        if getattr(request, name) not in (None, False, [], {}):
            raise DialectError("unsupportedParameter", f"wisp does not support `{name}` yet; remove it from the request", parameter=name)
    for name in UNSUPPORTED_EXTRA_FIELDS:
        if getattr(extra, name) not in (None, False, [], {}):
            raise DialectError("unsupportedParameter", f"wisp does not support `extra.{name}`; remove it", parameter=f"extra.{name}")
    if extra.enable_nsfw_detection:
        raise DialectError("unsupportedParameter", "wisp has no content checker; NSFW detection cannot be honoured", parameter="extra.enable_nsfw_detection")
    if extra.webhook is not None and not (extra.webhook.url.startswith(("http://", "https://")) and len(extra.webhook.url) <= 4096):
        # The webhook sender's URL guard (no private hosts unless allowed) applies again at delivery.
        raise DialectError("invalidParameter", "extra.webhook.url must be an http(s) URL", parameter="extra.webhook.url")
    if extra.webhook is not None and extra.webhook.test_mode is not None and extra.webhook.test_mode.enabled:
        raise DialectError("unsupportedParameter", "webhook test mode is not supported; send a real task", parameter="extra.webhook.test_mode")
    return request, extra


def _clip_skip(value: int | None) -> int | None:
    if value is None or value in (0, 1):
        return None
    if value < 0 or value > 3:
        raise DialectError("invalidParameter", "clip_skip must be 0 to 3 here (A1111 numbering: 1 = no skip, 2 = skip one layer)", parameter="clip_skip")
    return value - 1


def to_native(request: Txt2ImgRequest, extra: Extra, model_air: str, lora_airs: list[str]) -> dict[str, Any]:
    """The native imageInference task (without taskUUID/deliveryMethod: the bridge adds them)."""
    if request.seed < -1:
        raise DialectError("invalidParameter", "seed must be -1 (random) or a non-negative integer", parameter="seed")
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "model": model_air,
        "positivePrompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "numberResults": request.image_num,
        "outputType": "URL",
        "outputFormat": _FORMATS[extra.response_image_type],
        "includeCost": True,
    }
    optional = {
        "negativePrompt": request.negative_prompt or None,
        "steps": request.steps,
        "CFGScale": request.guidance_scale,
        "scheduler": scheduler_for(request.sampler_name),
        "seed": None if request.seed == -1 else request.seed,
        "clipSkip": _clip_skip(request.clip_skip),
    }
    task.update({k: v for k, v in optional.items() if v is not None})
    if lora_airs:
        task["lora"] = [
            {"model": air, **({"weight": lora.strength} if lora.strength is not None else {})}
            for air, lora in zip(lora_airs, request.loras or [])
        ]
    return task
