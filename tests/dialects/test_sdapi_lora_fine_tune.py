"""ModelsLab / stablediffusionapi ``lora_fine_tune`` + ``fine_tune_status`` against a real server.

The request is the seed document's own example body (``modelslab-lora-fine-tune.txt``), with its
image URLs replaced by loopback files, ``base_model_type`` "normal" (the seed's own Java example;
its JSON example says "sdxl", which the second test sends) and ``max_train_steps`` small.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer, RunningServer
from tests.dialects.conftest import native, poll, search
from tests.fixtures.datasets import png
from tests.server.test_http_routes import Hook

SEED_BODY: dict[str, Any] = {
    "key": "",
    "instance_prompt": "photo of ambika0 man",
    "class_prompt": "photo of a man",
    "base_model_type": "sdxl",
    "negative_prompt": " lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
                       "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry",
    "images": [],
    "seed": "0",
    "training_type": "men",
    "max_train_steps": "18",
    "lora_type": "lora",
    "webhook": None,
}
SEED_ORDER = [
    "deploying_gpu", "training_started", "training_success", "trained_model_compressing",
    "trained_model_uploading", "trained_model_uploaded", "deploying_model", "model_ready",
]


def images(file_server: FileServer, count: int) -> list[str]:
    folder = file_server.root / uuid.uuid4().hex
    folder.mkdir()
    urls = []
    for i in range(count):
        (folder / f"{i + 1}.png").write_bytes(png(i, (96, 80)))
        urls.append(file_server.url(folder / f"{i + 1}.png"))
    return urls


def status(http: httpx.Client, key: str, training_id: str) -> dict[str, Any]:
    r = http.post(f"/api/v3/fine_tune_status/{training_id}", json={"key": key})
    assert r.status_code == 200, r.text
    return r.json()


def test_seed_example_trains_a_lora_usable_natively(http: httpx.Client, dialect_server: RunningServer, file_server: FileServer):
    hook = Hook()
    try:
        body = {**SEED_BODY, "key": dialect_server.key, "images": images(file_server, 3), "base_model_type": "normal",
                "max_train_steps": "3", "webhook": hook.url + "/train"}
        r = http.post("/api/v3/lora_fine_tune", json=body)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["status"] == "success" and reply["messege"] == "deploying_gpu" and isinstance(reply["data"], str)
        training_id, model_id = reply["training_id"], reply["model_id"]
        assert len(model_id) == 10
        done = poll(lambda: status(http, dialect_server.key, training_id),
                    lambda b: b.get("training_status") in ("model_ready", "failed"), timeout=240)
        assert done["status"] == "success" and done["training_status"] == "model_ready", done
        assert done["model_id"] == model_id and done["steps"] == 3
        air = done["air"]
        assert air.split(":", 1)[1] == f"{model_id}@1"
        # the webhook got the seed's JSON once per status
        posts = [json.loads(b) for _, _, b in hook.posts]
        deadline = time.monotonic() + 10
        while len(posts) < len(SEED_ORDER) and time.monotonic() < deadline:
            time.sleep(0.1)
            posts = [json.loads(b) for _, _, b in hook.posts]
        assert [p["training_status"] for p in posts] == SEED_ORDER
        assert all(set(p) == {"status", "training_status", "logs", "model_id"} and p["model_id"] == model_id for p in posts)
        # visible natively: found by modelSearch, usable in imageInference, same task via getResponse
        found = search(http, dialect_server.key, search=model_id)
        assert [m["air"] for m in found["results"]] == [air]
        outputs = {}
        for name, lora in (("base", []), ("lora", [{"model": air, "weight": 1.0}])):
            result = native(http, dialect_server.key, {
                "taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "photo of ambika0 man",
                "width": 64, "height": 64, "steps": 3, "seed": 2, "outputType": "base64Data", "lora": lora,
            })
            assert "errors" not in result, result
            outputs[name] = result["data"][0]["imageBase64Data"]
        assert outputs["base"] != outputs["lora"]
        native_view = native(http, dialect_server.key, {"taskType": "getResponse", "taskUUID": training_id})
        assert native_view["data"][0]["status"] == "success" and native_view["data"][0]["air"] == air
    finally:
        hook.close()


def test_sdxl_body_status_in_the_body_and_errors(http: httpx.Client, dialect_server: RunningServer, file_server: FileServer):
    body = {**SEED_BODY, "key": dialect_server.key, "images": images(file_server, 2), "max_train_steps": "2",
            "training_type": "null", "class_prompt": None}
    reply = http.post("/api/v3/lora_fine_tune", json=body).json()
    assert reply["status"] == "success", reply
    done = poll(lambda: http.post("/api/v3/fine_tune_status", json={"key": dialect_server.key, "training_id": reply["training_id"]}).json(),
                lambda b: b.get("training_status") in ("model_ready", "failed") or b.get("status") == "error", timeout=240)
    assert done["training_status"] == "model_ready", done
    found = search(http, dialect_server.key, search=reply["model_id"])
    assert found["results"][0]["architecture"] == "sdxl"

    def refusal(**changes: Any) -> dict[str, Any]:
        r = http.post("/api/v3/lora_fine_tune", json={**body, **changes})
        assert r.status_code == 200
        return r.json()

    assert refusal(key="nope")["code"] == "invalidApiKey"
    bad = refusal(lora_type="dora")
    assert bad["status"] == "error" and bad["parameter"] == "lora_type"
    empty = refusal(images=[])
    assert empty["status"] == "error" and empty["code"] == "missingParameter" and empty["parameter"] == "images"
    assert refusal(colour="blue")["parameter"] == "colour"
    other = dialect_server.create_key("finetune-strangers")
    foreign = http.post(f"/api/v3/fine_tune_status/{reply['training_id']}", json={"key": other}).json()
    assert foreign["status"] == "error" and foreign["code"] == "taskNotFound"


@pytest.mark.parametrize("training_id", ["4131c67a-2cd4-47f8-8e52-091f364ed243", "not-a-uuid"])
def test_unknown_training_id(http: httpx.Client, dialect_server: RunningServer, training_id: str):
    reply = status(http, dialect_server.key, training_id)
    assert reply["status"] == "error" and reply["code"] == "taskNotFound"
