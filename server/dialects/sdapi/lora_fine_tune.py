"""ModelsLab / stablediffusionapi ``lora_fine_tune`` → one native ``training`` task; its statuses back.

The seed documents' fields are the native training task's second spelling
(see ``protocol/training.py``), so the body goes through almost unchanged and
every check of the native task applies.  What the dialect adds:

* the trained LoRA is registered as ``<team's default source>:<model_id>@1``
  (``model_id`` a fresh 10-character id like the seed's ``F5jvdzGnYi``), so it
  is usable natively by that AIR and from the Novita dialect by ``model_id``;
* the reply is the seed's ``{"status": "success", "messege": "deploying_gpu",
  "data": "…", "training_id": …}`` (``training_id`` is the native taskUUID:
  ``getResponse`` works with it too), plus ``message`` and ``model_id``;
* the ``webhook`` gets the seed's JSON ``{"status", "training_status",
  "logs", "model_id"}`` once per status change, ``model_ready`` last (a
  failure posts ``status: "error"``, ``training_status: "failed"``);
* ``POST /api/v3/fine_tune_status/{training_id}`` (or ``fine_tune_status``
  with ``training_id`` in the body), ``{key}`` → ``{"status", "training_status",
  "model_id", "training_id", "logs", "progress", "step", "steps", "loss"}``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import uuid
from typing import Any

from server.dialects.bridge import NativeBridge, first_error, items
from server.dialects.errors import DialectError, from_native

ID_ALPHABET = string.ascii_letters + string.digits
SEED_FIELDS = (
    "instance_prompt", "class_prompt", "base_model_type", "negative_prompt", "images", "training_type",
    "lora_type", "max_train_steps", "seed", "wandb_key",
)
"""The seed body's fields, passed to the native task under the same names (``key`` and ``webhook`` are the dialect's)."""
STARTED_MESSAGE = "the job is queued; follow it with fine_tune_status or the webhook"


def new_model_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(10))


class LoraFineTune:
    def __init__(self, bridge: NativeBridge) -> None:
        self.bridge = bridge
        self._models: dict[tuple[str, str], str] = {}  # (team, training_id) → model_id

    async def start(self, team: str, body: dict[str, Any], ctx: Any) -> dict[str, Any]:
        unknown = sorted(set(body) - set(SEED_FIELDS) - {"key", "webhook"})
        if unknown:
            raise DialectError("unknownParameter", f"unknown field `{unknown[0]}`", parameter=unknown[0])
        webhook = body.get("webhook") or None
        if webhook is not None and not isinstance(webhook, str):
            raise DialectError("invalidParameter", "webhook must be a URL", parameter="webhook")
        model_id = new_model_id()
        source = await asyncio.to_thread(self.bridge.settings.default_source, team)
        instance = body.get("instance_prompt")
        task: dict[str, Any] = {
            "taskType": "training",
            "taskUUID": str(uuid.uuid4()),
            **{k: body[k] for k in SEED_FIELDS if body.get(k) is not None},
            "importModel": {
                "air": f"{source}:{model_id}@1", "name": (instance if isinstance(instance, str) and instance.strip() else model_id)[:400],
                "uniqueIdentifier": model_id, "version": "1", "private": True,
            },
        }
        reporter = _WebhookReporter(self.bridge, webhook, model_id) if webhook else None
        submitted = await self.bridge.submit(team, task, ctx, on_frame=reporter.frame if reporter else None)
        self._models[(team, submitted.task_uuid)] = model_id
        return {
            "status": "success", "messege": "deploying_gpu", "message": "deploying_gpu", "data": STARTED_MESSAGE,
            "training_id": submitted.task_uuid, "model_id": model_id,
        }

    def status(self, team: str, training_id: str | None) -> dict[str, Any]:
        if not training_id:
            raise DialectError("missingParameter", "training_id is required", parameter="training_id")
        record = self.bridge.record(team, training_id)
        if record is None or record.task_type != "training":
            raise DialectError("taskNotFound", f"no training {training_id[:64]!r} is known for your team", parameter="training_id")
        model_id = self._models.get((team, training_id))
        error = first_error(record)
        if error is not None:
            failed = from_native(error)
            return {"status": "error", "training_status": "failed", "message": failed.message, "code": failed.code,
                    "training_id": training_id, "model_id": model_id}
        latest = items(record)[-1] if record.items else {"trainingStatus": "deploying_gpu", "message": "waiting to start"}
        if model_id is None and latest.get("air"):
            model_id = latest["air"].split(":", 1)[1].rsplit("@", 1)[0]
        reply = {
            "status": "success", "training_status": latest.get("trainingStatus"), "logs": latest.get("message", ""),
            "training_id": training_id, "model_id": model_id,
        }
        for name in ("progress", "step", "steps", "loss", "air"):
            if latest.get(name) is not None:
                reply[name] = latest[name]
        return reply


class _WebhookReporter:
    """Turns the native task's pushed statuses into the seed's webhook posts, one per status change."""

    def __init__(self, bridge: NativeBridge, url: str, model_id: str) -> None:
        self.bridge = bridge
        self.url = url
        self.model_id = model_id
        self.last: str | None = None

    def frame(self, raw: bytes) -> None:
        frame = json.loads(raw)
        for item in frame.get("data", []):
            status = item.get("trainingStatus")
            if status and status != self.last and status != "queued":
                self.last = status
                self.bridge.post_webhook(self.url, {
                    "status": "success", "training_status": status, "logs": item.get("message", ""), "model_id": self.model_id,
                }, sequence=f"lora_fine_tune:{self.model_id}")
        for error in frame.get("errors", []):
            self.bridge.post_webhook(self.url, {
                "status": "error", "training_status": "failed", "logs": error.get("message", ""), "model_id": self.model_id,
            }, sequence=f"lora_fine_tune:{self.model_id}")
