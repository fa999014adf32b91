"""A native task record → Novita's ``/v3/async/task-result`` body (also its webhook payload).

Status: waiting for the device → ``TASK_STATUS_QUEUED``, on the device →
``TASK_STATUS_PROCESSING``, finished → ``TASK_STATUS_SUCCEED``, failed →
``TASK_STATUS_FAILED`` with the native error's message as ``task.reason``.
``images[].image_url`` is the native ``imageURL``; ``image_url_ttl`` is the
server's task retention (the task can be polled at least that long);
``extra.seed`` is the first image's seed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from server.dialects.bridge import first_error, items
from server.tasks import TaskRecord

_IMAGE_TYPES = {"PNG": "png", "JPG": "jpeg", "WEBP": "webp"}


def _ms(monotonic_at: float | None) -> str:
    if monotonic_at is None:
        return ""
    return str(int((time.time() - (time.monotonic() - monotonic_at)) * 1000))


def task_result(record: TaskRecord, ttl_s: float) -> dict[str, Any]:
    request = record.request if isinstance(record.request, dict) else {}
    error = first_error(record)
    images: list[dict[str, Any]] = []
    if error is not None:
        status, reason = "TASK_STATUS_FAILED", str(error.get("message", ""))
    elif record.finished_at is None:
        status, reason = ("TASK_STATUS_QUEUED" if record.started_at is None else "TASK_STATUS_PROCESSING"), ""
    else:
        status, reason = "TASK_STATUS_SUCCEED", ""
        image_type = _IMAGE_TYPES.get(str(request.get("outputFormat", "PNG")), "png")
        images = [
            {"image_url": item["imageURL"], "image_url_ttl": str(int(ttl_s)), "image_type": image_type, "nsfw_detection_result": None}
            for item in items(record)
            if "imageURL" in item
        ]
    seeds = [item.get("seed") for item in items(record) if "seed" in item]
    return {
        "extra": {
            "seed": str(seeds[0]) if seeds else str(request.get("seed", "")),
            "enable_nsfw_detection": False,
            "debug_info": {
                "request_info": json.dumps(request, separators=(",", ":")),
                "submit_time_ms": _ms(record.created_at),
                "execute_time_ms": _ms(record.started_at),
                "complete_time_ms": _ms(record.finished_at),
            },
        },
        "task": {
            "task_id": record.task_uuid,
            "task_type": "IMG_TO_IMG" if request.get("seedImage") else "TXT_TO_IMG",
            "status": status,
            "reason": reason,
            "eta": 0,
            "progress_percent": 100 if status == "TASK_STATUS_SUCCEED" else int(record.progress * 100),
        },
        "images": images,
        "videos": [],
        "audios": [],
    }
