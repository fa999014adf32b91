"""stablediffusionapi ``load_model`` → one native ``modelUpload``; its status back.

Decisions (README "REST dialects"):

* ``model_id`` → AIR ``<team's default source>:<model_id>@1``; characters an
  AIR id cannot hold (dots, spaces…) become ``-``; a ``model_id`` that is
  already an AIR is used as is (its source must be the team's, as natively).
  The default source is created on first use (``wisp teams``).
* ``url`` must be a direct http(s) link to a single file; a hub repo id
  (``runwayml/stable-diffusion-v1-5``) or ``model_format: "diffusers"`` is
  refused: wisp never reaches a hub.  ``ckpt`` goes to modelUpload as
  ``format: "ckpt"`` and is refused there like everywhere (nothing is ever
  unpickled).  ``uniqueIdentifier`` is derived from the URL, so loading the
  same URL under the same ``model_id`` again only updates metadata.
* ``revision`` (fp16/fp32) says what the file holds; wisp stores every model
  in its storage dtype (F16) either way.
* ``model_category``: stable_diffusion → checkpoint sd1x, stable_diffusion_xl
  → checkpoint sdxl (refused by this build's loader, clearly), lora, vae,
  embeddings (type positive), controlnet (needs ``conditioning``); the
  non-checkpoint kinds are for ``architecture`` (default sd1x).
* ``model_visibility`` private (default) / public → ``private``;
  ``model_name`` → ``name`` (default: model_id); ``model_image`` →
  ``heroImageURL``; ``force_load`` yes/no → ``retry`` 2/0; ``hf_upload: yes``
  is refused.

The reply waits for the upload's first phase (``validated``), so a refused
request answers ``status: "error"`` at once, and otherwise answers the seed's
``{"status": "success", "message": "model load started"}`` plus ``model_id``,
``air`` and ``task_id`` (the native taskUUID).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from typing import Any

from protocol.models import is_air
from server.dialects.bridge import NativeBridge, first_error, items
from server.dialects.decode import decode
from server.dialects.errors import DialectError, from_native
from server.dialects.sdapi.shapes import LoadModelRequest, LoadModelStatusRequest
from server.tasks import TaskRecord

CATEGORIES: dict[str, tuple[str, str | None, str | None]] = {
    "stable_diffusion": ("checkpoint", "sd1x", "base"),
    "stable_diffusion_xl": ("checkpoint", "sdxl", "base"),
    "lora": ("lora", None, None),
    "vae": ("vae", None, None),
    "embeddings": ("embeddings", None, "positive"),
    "controlnet": ("controlnet", None, None),
}
"""model_category → (native category, architecture (None: the request's, default sd1x), type)."""

_NATIVE_NAMES = {
    "downloadURL": "url", "air": "model_id", "format": "model_format", "category": "model_category",
    "name": "model_name", "heroImageURL": "model_image", "private": "model_visibility", "retry": "force_load",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FIRST_PHASE_WAIT_S = 15.0
_TRACKED = 4096


def sdapi_name(native: str) -> str:
    return _NATIVE_NAMES.get(native, native)


def _yes(value: str | bool | None, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value.strip().lower() in ("yes", "true", "1"):
        return True
    if value.strip().lower() in ("no", "false", "0", ""):
        return False
    raise DialectError("invalidParameter", f"{name} accepts \"yes\" or \"no\"", parameter=name)


def model_key(model_id: str) -> str:
    """The AIR id for a ``model_id``: unsupported characters become ``-``."""
    key = re.sub(r"[^A-Za-z0-9_-]", "-", model_id.strip()).lstrip("-_")
    if not key:
        raise DialectError("invalidParameter", "model_id must contain letters or digits", parameter="model_id")
    if len(key) > 64:
        raise DialectError("invalidParameter", "model_id is at most 64 characters", parameter="model_id")
    return key


def check_url(url: str | None, model_format: str) -> str:
    if not url or not url.strip():
        raise DialectError("missingParameter", "url is required: a direct link to a .safetensors file", parameter="url")
    url = url.strip()
    if model_format == "diffusers" or (not url.startswith(("http://", "https://")) and _HUB_ID.fullmatch(url)):
        raise DialectError(
            "unsupportedParameter",
            f"{url[:200]!r} names a diffusers repository on a model hub; wisp never reaches a hub. "
            "Give a direct http(s) link to a single .safetensors file (or PUT the file to /v1/files and use that URL)",
            parameter="url",
        )
    if not url.startswith(("http://", "https://")):
        raise DialectError("invalidParameter", "url must be an http(s) link to a .safetensors file", parameter="url")
    return url


def to_native(req: LoadModelRequest, air: str) -> dict[str, Any]:
    """The native modelUpload task (without taskUUID/deliveryMethod: the bridge adds them)."""
    model_format = (req.model_format or "safetensors").strip().lower()
    url = check_url(req.url, model_format)
    if model_format not in ("safetensors", "ckpt"):
        raise DialectError("invalidParameter", "model_format accepts \"safetensors\", \"ckpt\" or \"diffusers\"", parameter="model_format")
    category_name = (req.model_category or "stable_diffusion").strip().lower()
    if category_name not in CATEGORIES:
        raise DialectError("invalidParameter", f"model_category accepts: {', '.join(CATEGORIES)}", parameter="model_category")
    category, architecture, type_ = CATEGORIES[category_name]
    if req.revision is not None and req.revision.strip().lower() not in ("fp16", "fp32", ""):
        raise DialectError("invalidParameter", "revision accepts \"fp16\" or \"fp32\" (either is stored as F16)", parameter="revision")
    visibility = (req.model_visibility or "private").strip().lower()
    if visibility not in ("private", "public"):
        raise DialectError("invalidParameter", "model_visibility accepts \"private\" or \"public\"", parameter="model_visibility")
    if _yes(req.hf_upload, "hf_upload"):
        raise DialectError("unsupportedParameter", "hf_upload is not supported: wisp never uploads to a model hub", parameter="hf_upload")
    if req.model_subcategory not in (None, ""):
        raise DialectError("unsupportedParameter", "model_subcategory is not supported", parameter="model_subcategory")
    if category == "controlnet" and not req.conditioning:
        raise DialectError(
            "missingParameter", "a controlnet needs `conditioning` (a wisp extension field, e.g. \"canny\")", parameter="conditioning"
        )
    task: dict[str, Any] = {
        "taskType": "modelUpload",
        "air": air,
        "category": category,
        "architecture": architecture or req.architecture or "sd1x",
        "format": model_format,
        "downloadURL": url,
        "uniqueIdentifier": "url-sha256:" + hashlib.sha256(url.encode()).hexdigest(),
        "name": (req.model_name or req.model_id or air).strip()[:400] or air,
        "version": "1",
        "private": visibility == "private",
    }
    optional = {"type": type_, "conditioning": req.conditioning, "heroImageURL": req.model_image or None}
    task.update({k: v for k, v in optional.items() if v is not None})
    force = _yes(req.force_load, "force_load")
    if force is not None:
        task["retry"] = 2 if force else 0
    return task


class LoadModel:
    """The ``load_model`` and ``load_model_status`` handlers' logic (shared state: which task loads which AIR)."""

    def __init__(self, bridge: NativeBridge) -> None:
        self.bridge = bridge
        self._latest: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def air_for(self, team: str, model_id: str | None, create: bool) -> str | None:
        if not model_id or not model_id.strip():
            raise DialectError("missingParameter", "model_id is required", parameter="model_id")
        if is_air(model_id.strip()):
            return model_id.strip()
        key = model_key(model_id)
        settings = self.bridge.settings
        source: str | None
        if create:
            source = await asyncio.to_thread(settings.default_source, team)
        else:
            source = await asyncio.to_thread(settings.existing_default_source, team)
            if source is None:
                return None
        return f"{source}:{key}@1"

    async def start(self, team: str, body: dict[str, Any], ctx: Any) -> dict[str, Any]:
        req: LoadModelRequest = decode(body, LoadModelRequest)
        air = await self.air_for(team, req.model_id, create=True)
        assert air is not None
        submitted = await self.bridge.submit(team, to_native(req, air), ctx, rename=sdapi_name)
        self._remember(team, air, submitted.task_uuid)
        record = self.bridge.record(team, submitted.task_uuid)
        if record is not None:
            await self.bridge.first_news(record, FIRST_PHASE_WAIT_S)
            error = first_error(record)
            if error is not None:
                raise from_native(error, sdapi_name)
        return {"status": "success", "message": "model load started", "model_id": req.model_id, "air": air, "task_id": submitted.task_uuid}

    async def status(self, team: str, body: dict[str, Any]) -> dict[str, Any]:
        req: LoadModelStatusRequest = decode(body, LoadModelStatusRequest)
        air = await self.air_for(team, req.model_id, create=False)
        task_uuid = self._latest.get((team, air)) if air else None
        record = self.bridge.record(team, task_uuid) if task_uuid else None
        if record is None and air:  # after a restart: the journal knows the loads this process never saw
            record = self.bridge.gateway.tasks.newest_with(team, "modelUpload", "air", air)
        if record is not None:
            return self._from_record(req.model_id or "", air or "", record)
        row = await asyncio.to_thread(self.bridge.gateway.engine.registry.visible, air, team) if air else None
        if row is None:
            raise DialectError("modelNotFound", f"no model_id {req.model_id!r} has been loaded by your team", parameter="model_id")
        return {"status": "success", "model_id": req.model_id, "air": air, "load_status": "ready", "message": "model is ready"}

    def _from_record(self, model_id: str, air: str, record: TaskRecord) -> dict[str, Any]:
        error = first_error(record)
        if error is not None:
            failed = from_native(error, sdapi_name)
            return {"status": "error", "model_id": model_id, "air": air, "load_status": "failed", "message": failed.message,
                    "code": failed.code, "task_id": record.task_uuid}
        phases = items(record)
        last = phases[-1] if phases else {"status": "queued", "message": "waiting to start"}
        state = "success" if last.get("status") == "ready" else "processing"
        return {"status": state, "model_id": model_id, "air": air, "load_status": last.get("status"), "message": last.get("message"),
                "task_id": record.task_uuid}

    def _remember(self, team: str, air: str, task_uuid: str) -> None:
        self._latest[(team, air)] = task_uuid
        self._latest.move_to_end((team, air))
        while len(self._latest) > _TRACKED:
            self._latest.popitem(last=False)
