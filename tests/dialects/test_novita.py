"""Novita's ``/v3/async/txt2img`` + ``/v3/async/task-result`` against a real server.

The request is the seed document's own example (``novita-upload-custom-lora.txt``)
with only size and steps scaled down to the built-in tiny model (512×768 at
30 steps takes ~36 s on one CPU core; 64×96 at 4 steps a fraction of one).
The models it names are uploaded first under those names, as a Novita user
would have uploaded them in the console.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer, RunningServer, wisp_cli
from tests.dialects.conftest import native, native_upload, poll, serve

SEED_TXT2IMG: dict[str, Any] = {
    "model_name": "AnythingV5_v5PrtRE.safetensors",
    "width": 512,
    "height": 768,
    "prompt": "a body stood high, behind him, looking down.",
    "negative_prompt": "",
    "sampler_name": "DPM++ 2S a Karras",
    "guidance_scale": 7.5,
    "steps": 30,
    "image_num": 1,
    "clip_skip": 0,
    "seed": -1,
    "loras": [{"model_name": "test_sd_name_in_api.safetensors", "strength": 0.7}],
}
FAST = {"width": 64, "height": 96, "steps": 4}
DONE = ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_source(server: RunningServer, team: str = "default") -> str:
    name = "nv" + uuid.uuid4().hex[:10]
    result = wisp_cli("sources", "create", name, "--team", team, "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="module")
def seed_models(dialect_server: RunningServer, file_server: FileServer, tiny_files) -> dict[str, str]:
    """The seed's checkpoint and LoRA, uploaded natively under the names its request uses."""
    source = new_source(dialect_server)
    airs = {"checkpoint": f"{source}:anything@1", "lora": f"{source}:testlora@1"}
    with httpx.Client(base_url=dialect_server.http_url, timeout=120, trust_env=False) as http:
        body = native_upload(http, dialect_server.key, serve(file_server, tiny_files["checkpoint"]), air=airs["checkpoint"],
                             category="checkpoint", type="base", name="AnythingV5_v5PrtRE.safetensors")
        assert "errors" not in body, body
        body = native_upload(http, dialect_server.key, serve(file_server, tiny_files["lora"]), air=airs["lora"],
                             category="lora", name="test_sd_name_in_api.safetensors")
        assert "errors" not in body, body
    return airs


def submit(http: httpx.Client, key: str, body: dict[str, Any]) -> str:
    r = http.post("/v3/async/txt2img", json=body, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"task_id"}
    return r.json()["task_id"]


def result(http: httpx.Client, key: str, task_id: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        r = http.get("/v3/async/task-result", params={"task_id": task_id}, headers=bearer(key))
        assert r.status_code == 200, r.text
        return r.json()

    return poll(fetch, lambda body: body["task"]["status"] in DONE)


def image_bytes(http: httpx.Client, key: str, body: dict[str, Any]) -> bytes:
    done = result(http, key, submit(http, key, body))
    assert done["task"]["status"] == "TASK_STATUS_SUCCEED", done
    return http.get(done["images"][0]["image_url"]).content


def test_seed_example_runs_and_is_visible_natively(http: httpx.Client, dialect_server: RunningServer, seed_models):
    task_id = submit(http, dialect_server.key, {**SEED_TXT2IMG, **FAST})
    uuid.UUID(task_id)
    done = result(http, dialect_server.key, task_id)
    task = done["task"]
    assert task["task_id"] == task_id and task["status"] == "TASK_STATUS_SUCCEED" and task["reason"] == ""
    assert task["task_type"] == "TXT_TO_IMG" and task["progress_percent"] == 100
    assert done["extra"]["seed"].isdigit()  # seed -1: a random one, reported
    (image,) = done["images"]
    assert image["image_type"] == "png" and int(image["image_url_ttl"]) > 0
    fetched = http.get(image["image_url"])
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    # The same task through the native protocol: getResponse by the Novita task_id.
    body = native(http, dialect_server.key, {"taskType": "getResponse", "taskUUID": task_id})
    (item,) = body["data"]
    assert item["status"] == "success" and item["imageURL"] == image["image_url"] and str(item["seed"]) == done["extra"]["seed"]
    details = native(http, dialect_server.key, {"taskType": "getTaskDetails", "taskUUID": task_id})["data"][0]
    request = details["request"][0]
    assert request["model"] == seed_models["checkpoint"] and request["lora"] == [{"model": seed_models["lora"], "weight": 0.7}]
    assert request["scheduler"] == "DPM++ 1S Karras" and request["CFGScale"] == 7.5 and "seed" not in request and "clipSkip" not in request


def test_the_lora_is_applied_by_name(http: httpx.Client, dialect_server: RunningServer, seed_models):
    fixed = {**SEED_TXT2IMG, **FAST, "seed": 42}
    with_lora = image_bytes(http, dialect_server.key, fixed)
    without = image_bytes(http, dialect_server.key, {**fixed, "loras": []})
    zero = image_bytes(http, dialect_server.key, {**fixed, "loras": [{"model_name": "test_sd_name_in_api.safetensors", "strength": 0}]})
    by_air = image_bytes(http, dialect_server.key, {**fixed, "loras": [{"model_name": seed_models["lora"], "strength": 0.7}]})
    assert with_lora != without
    assert zero == without
    assert by_air == with_lora


def test_wrapped_request_with_extra(http: httpx.Client, dialect_server: RunningServer, seed_models):
    body = {"extra": {"response_image_type": "jpeg"}, "request": {**SEED_TXT2IMG, **FAST, "image_num": 2, "seed": 7, "sampler_name": "Euler a"}}
    done = result(http, dialect_server.key, submit(http, dialect_server.key, body))
    assert done["task"]["status"] == "TASK_STATUS_SUCCEED", done
    assert [i["image_type"] for i in done["images"]] == ["jpeg", "jpeg"]
    assert all(i["image_url"].endswith(".jpg") for i in done["images"])
    assert done["extra"]["seed"] == "7"


def test_unknown_sampler_is_refused_in_novita_shape(http: httpx.Client, dialect_server: RunningServer, seed_models):
    r = http.post("/v3/async/txt2img", json={**SEED_TXT2IMG, **FAST, "sampler_name": "DPM fast"}, headers=bearer(dialect_server.key))
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 400 and body["reason"] == "INVALID_REQUEST_BODY"
    assert body["metadata"]["parameter"] == "sampler_name" and "DPM++ 2M Karras" in body["message"]


def test_native_validation_speaks_novita_names(http: httpx.Client, dialect_server: RunningServer, seed_models):
    r = http.post("/v3/async/txt2img", json={**SEED_TXT2IMG, **FAST, "guidance_scale": 99}, headers=bearer(dialect_server.key))
    assert r.status_code == 400 and r.json()["metadata"]["parameter"] == "guidance_scale"
    assert "`guidance_scale`" in r.json()["message"]
    r = http.post("/v3/async/txt2img", json={**SEED_TXT2IMG, **FAST, "hires_fix": {"target_width": 1024}}, headers=bearer(dialect_server.key))
    assert r.status_code == 400 and r.json()["metadata"] == {"wisp_code": "unsupportedParameter", "parameter": "hires_fix"}
    r = http.post("/v3/async/txt2img", content=b"{not json", headers=bearer(dialect_server.key))
    assert r.status_code == 400 and r.json()["reason"] == "INVALID_REQUEST_BODY"


def test_bad_key_gets_novitas_error_shape(http: httpx.Client, dialect_server: RunningServer):
    for headers in (bearer("wisp_not-a-key"), {}):
        r = http.post("/v3/async/txt2img", json={**SEED_TXT2IMG, **FAST}, headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert body["code"] == 401 and body["reason"] == "INVALID_API_KEY" and body["message"]
    r = http.get("/v3/async/task-result", params={"task_id": str(uuid.uuid4())}, headers=bearer("wisp_not-a-key"))
    assert r.status_code == 401 and r.json()["reason"] == "INVALID_API_KEY"


def test_private_models_and_tasks_of_another_team_stay_invisible(
    http: httpx.Client, dialect_server: RunningServer, file_server: FileServer, tiny_files, seed_models
):
    other_key = dialect_server.create_key("novita-other")
    source = new_source(dialect_server, "novita-other")
    secret = f"{source}:secret@1"
    body = native_upload(http, other_key, serve(file_server, tiny_files["lora2"]), air=secret, category="lora", name="secret_lora.safetensors")
    assert "errors" not in body, body
    for name in ("secret_lora.safetensors", secret):
        r = http.post("/v3/async/txt2img", json={**SEED_TXT2IMG, **FAST, "loras": [{"model_name": name, "strength": 1}]},
                      headers=bearer(dialect_server.key))
        assert r.status_code == 400, r.text
        assert r.json()["reason"] == "MODEL_NOT_FOUND" and r.json()["metadata"]["parameter"] == "loras[0].model_name"
    # The owner can use it; the default team cannot read the owner's task.
    task_id = submit(http, other_key, {**SEED_TXT2IMG, **FAST, "model_name": "wisp:tiny-sd15@1",
                                       "loras": [{"model_name": "secret_lora.safetensors", "strength": 1}]})
    assert result(http, other_key, task_id)["task"]["status"] == "TASK_STATUS_SUCCEED"
    r = http.get("/v3/async/task-result", params={"task_id": task_id}, headers=bearer(dialect_server.key))
    assert r.status_code == 404 and r.json()["reason"] == "TASK_NOT_FOUND"


def test_polling_errors(http: httpx.Client, dialect_server: RunningServer):
    r = http.get("/v3/async/task-result", headers=bearer(dialect_server.key))
    assert r.status_code == 400 and r.json()["metadata"]["parameter"] == "task_id"
    r = http.get("/v3/async/task-result", params={"task_id": str(uuid.uuid4())}, headers=bearer(dialect_server.key))
    assert r.status_code == 404 and r.json()["code"] == 404
    r = http.get("/v3/async/txt2img", headers=bearer(dialect_server.key))
    assert r.status_code == 405 and r.json()["reason"] == "METHOD_NOT_ALLOWED"


def test_every_novita_sampler_maps_to_a_wisp_scheduler():
    from engine.schedulers import canonical_scheduler
    from server.dialects.novita.samplers import SAMPLERS, scheduler_for

    for novita, wisp in SAMPLERS.items():
        assert canonical_scheduler(wisp) == wisp
        assert scheduler_for(novita.upper()) == wisp
    assert scheduler_for(None) is None and scheduler_for("") is None


def test_webhook_gets_the_task_result_payload(http: httpx.Client, dialect_server: RunningServer, seed_models):
    import json
    import queue
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/novita"
        task_id = submit(http, dialect_server.key, {"extra": {"webhook": {"url": url}}, "request": {**SEED_TXT2IMG, **FAST}})
        event = received.get(timeout=120)
    finally:
        hook.shutdown()
        hook.server_close()
    assert event["event_type"] == "ASYNC_TASK_RESULT"
    assert event["payload"]["task"]["task_id"] == task_id and event["payload"]["task"]["status"] == "TASK_STATUS_SUCCEED"
    polled = result(http, dialect_server.key, task_id)
    assert event["payload"]["images"] == polled["images"] and event["payload"]["task"] == polled["task"]


def test_task_result_tells_queued_from_processing_and_counts_progress(http: httpx.Client, dialect_server: RunningServer):
    key = dialect_server.key
    plain = {"model_name": "wisp:tiny-sd15@1", "prompt": "a lighthouse", "width": 64, "height": 64, "sampler_name": "Euler"}
    slow = submit(http, key, {**plain, "width": 256, "height": 256, "steps": 100, "seed": 1})
    waiting = submit(http, key, {**plain, "steps": 2, "seed": 2})

    def fetch(task_id: str) -> dict[str, Any]:
        return http.get("/v3/async/task-result", params={"task_id": task_id}, headers=bearer(key)).json()

    first = fetch(waiting)  # the slow task holds the device: this one waits in line
    assert first["task"]["status"] == "TASK_STATUS_QUEUED" and first["task"]["progress_percent"] == 0, first
    assert first["extra"]["debug_info"]["execute_time_ms"] == ""
    running = poll(lambda: fetch(slow), lambda b: b["task"]["status"] != "TASK_STATUS_QUEUED" and b["task"]["progress_percent"] > 0)
    assert running["task"]["status"] == "TASK_STATUS_PROCESSING" and 0 < running["task"]["progress_percent"] < 100, running
    done = result(http, key, waiting)
    info = done["extra"]["debug_info"]
    assert done["task"]["status"] == "TASK_STATUS_SUCCEED" and done["task"]["progress_percent"] == 100
    assert int(info["submit_time_ms"]) <= int(info["execute_time_ms"]) <= int(info["complete_time_ms"]), info
    assert result(http, key, slow)["task"]["status"] == "TASK_STATUS_SUCCEED"
