"""stablediffusionapi ``/api/v3/load_model`` (+ wisp's ``load_model_status``) against a real server.

The requests are the seed document's own examples
(``stablediffusionapi-load-model.txt``) sent as raw text — duplicate keys
included, as the seed shows them — with the key replaced and the Civitai URL
replaced by a loopback file.  The model they load is then looked up through
the native protocol (modelSearch) and used through the Novita dialect.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer, RunningServer, wisp_cli
from tests.dialects.conftest import native_upload, poll, search, serve

SEED_CIVITAI = """{
    "key": "api_key",
    "url": "https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor&size=pruned&fp=fp16",
    "model_id": "majicmix-realistic",
    "revision": "fp32",
    "model_id": "stable-diffusion-1.0-inpainting-0.1",
    "force_load": "yes",
    "revision": "fp16",
    "model_category": "stable_diffusion_xl",
    "model_format": "safetensors",
    "model_visibility": "public",
    "model_name": "stable-diffusion-1.0-inpainting-0.1",
    "model_image": "https://cdn2.stablediffusionapi.com/generations/1a14cab3-cc79-4cee-ab28-29379bff766b-0.png",
    "hf_upload": "no"
}"""
SEED_DIFFUSERS = """{
    "key": "api_key",
    "url": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    "model_id": "stable-diffusion-xl-1.0-inpainting-0.1",
    "force_load": "yes",
    "revision": "fp16",
    "model_category": "stable_diffusion_xl",
    "model_format": "diffusers",
    "model_visibility": "public",
    "model_name": "stable-diffusion-xl-1.0-inpainting-0.1",
    "model_image": "https://cdn2.stablediffusionapi.com/generations/1a14cab3-cc79-4cee-ab28-29379bff766b-0.png",
    "hf_upload": "no"
}"""
CIVITAI_URL = "https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor&size=pruned&fp=fp16"


def seed_body(text: str, key: str, url: str | None = None, **replace: str) -> bytes:
    """The seed's raw text with the key, the URL and (the last occurrence of) some fields replaced."""
    text = text.replace('"api_key"', json.dumps(key))
    if url is not None:
        text = text.replace(json.dumps(CIVITAI_URL), json.dumps(url))
    lines = text.splitlines()
    for field, value in replace.items():
        last = max(i for i, line in enumerate(lines) if line.strip().startswith(f'"{field}":'))
        comma = "," if lines[last].rstrip().endswith(",") else ""
        lines[last] = f'    "{field}": {json.dumps(value)}{comma}'
    return "\n".join(lines).encode()


def load(http: httpx.Client, body: bytes | dict[str, Any]) -> dict[str, Any]:
    r = http.post("/api/v3/load_model", content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


def status(http: httpx.Client, key: str, model_id: str) -> dict[str, Any]:
    r = http.post("/api/v3/load_model_status", json={"key": key, "model_id": model_id})
    assert r.status_code == 200, r.text
    return r.json()


def until_loaded(http: httpx.Client, key: str, model_id: str) -> dict[str, Any]:
    return poll(lambda: status(http, key, model_id), lambda body: body["status"] != "processing")


def test_seed_civitai_example_loads_and_is_found_natively(
    http: httpx.Client, dialect_server: RunningServer, file_server: FileServer, tiny_files
):
    # The tiny fixture is an SD-1.x checkpoint, so its category is the SD-1 one.
    body = seed_body(SEED_CIVITAI, dialect_server.key, serve(file_server, tiny_files["checkpoint"]), model_category="stable_diffusion")
    reply = load(http, body)
    assert reply["status"] == "success" and reply["message"] == "model load started", reply
    assert reply["model_id"] == "stable-diffusion-1.0-inpainting-0.1"
    assert reply["air"] == "default:stable-diffusion-1-0-inpainting-0-1@1"
    done = until_loaded(http, dialect_server.key, "stable-diffusion-1.0-inpainting-0.1")
    assert done["status"] == "success" and done["load_status"] == "ready" and done["air"] == reply["air"], done
    found = search(http, dialect_server.key, search="stable-diffusion-1.0-inpainting")
    (info,) = [r for r in found["results"] if r["air"] == reply["air"]]
    assert info["name"] == "stable-diffusion-1.0-inpainting-0.1" and info["category"] == "checkpoint" and info["architecture"] == "sd1x"
    assert info["private"] is False and info["heroImage"].startswith("https://cdn2.stablediffusionapi.com/")
    other = dialect_server.create_key("sdapi-public-reader")
    assert any(r["air"] == reply["air"] for r in search(http, other, search="inpainting")["results"])  # public
    # Usable at once, e.g. by its name through the Novita dialect.
    r = http.post("/v3/async/txt2img", headers={"Authorization": f"Bearer {dialect_server.key}"}, json={
        "model_name": "stable-diffusion-1.0-inpainting-0.1", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    result = poll(lambda: http.get("/v3/async/task-result", params={"task_id": task_id},
                                   headers={"Authorization": f"Bearer {dialect_server.key}"}).json(),
                  lambda b: b["task"]["status"] not in ("TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING"))
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result


def test_seed_civitai_example_as_sdxl_is_not_loaded_from_an_sd1_file(
    http: httpx.Client, dialect_server: RunningServer, file_server: FileServer, tiny_files
):
    model_id = "sdxl-" + uuid.uuid4().hex[:8]
    body = seed_body(SEED_CIVITAI, dialect_server.key, serve(file_server, tiny_files["checkpoint"]), model_id=model_id)
    reply = load(http, body)
    if reply["status"] == "success":  # a build that loads SDXL refuses the SD-1 file once it has looked inside
        reply = until_loaded(http, dialect_server.key, model_id)
    assert reply["status"] == "error" and "sdxl" in reply["message"], reply
    assert not search(http, dialect_server.key, search=model_id)["results"]


def test_seed_diffusers_example_is_refused_no_hub(http: httpx.Client, dialect_server: RunningServer):
    reply = load(http, seed_body(SEED_DIFFUSERS, dialect_server.key))
    assert reply["status"] == "error" and reply["parameter"] == "url"
    assert "never reaches a hub" in reply["message"] and ".safetensors" in reply["message"]
    reply = load(http, {"key": dialect_server.key, "url": "runwayml/stable-diffusion-v1-5", "model_id": "sd15"})
    assert reply["status"] == "error" and "never reaches a hub" in reply["message"]


def test_ckpt_is_refused_like_everywhere(http: httpx.Client, dialect_server: RunningServer, file_server: FileServer, tiny_files):
    reply = load(http, {"key": dialect_server.key, "url": serve(file_server, tiny_files["checkpoint"]), "model_id": "pickled",
                        "model_format": "ckpt", "model_category": "stable_diffusion"})
    assert reply["status"] == "error" and reply["parameter"] == "model_format" and "pickle" in reply["message"], reply


def test_bad_key_and_bad_fields_get_the_error_shape(http: httpx.Client, dialect_server: RunningServer):
    for key in ("wisp_not-a-key", None):
        reply = load(http, {"key": key, "url": "https://example.invalid/m.safetensors", "model_id": "x"})
        assert reply["status"] == "error" and reply["message"] and reply["code"] in ("invalidApiKey", "missingApiKey")
        r = http.post("/api/v3/load_model_status", json={"key": key, "model_id": "x"})
        assert r.json()["status"] == "error"
    reply = load(http, {"key": dialect_server.key, "url": "https://example.invalid/m.safetensors", "model_id": "x", "revision": "int8"})
    assert reply == {"status": "error", "message": reply["message"], "code": "invalidParameter", "parameter": "revision"}
    reply = load(http, {"key": dialect_server.key, "url": "https://example.invalid/m.safetensors", "model_id": "x", "colour": "blue"})
    assert reply["status"] == "error" and "colour" in reply["message"]
    reply = load(http, {"key": dialect_server.key, "url": "https://example.invalid/m.safetensors", "model_id": "x", "hf_upload": "yes"})
    assert reply["status"] == "error" and reply["parameter"] == "hf_upload"
    assert status(http, dialect_server.key, "never-loaded")["status"] == "error"
    r = http.get("/api/v3/load_model")
    assert r.json()["status"] == "error" and r.json()["code"] == "methodNotAllowed"


@pytest.fixture
def quota_team(dialect_server: RunningServer) -> tuple[str, str]:
    team = "quota-" + uuid.uuid4().hex[:8]
    key = dialect_server.create_key(team)
    result = wisp_cli("teams", "set", team, "--lora-upload-limit", "1", "--data-dir", str(dialect_server.data_dir))
    assert result.returncode == 0 and "lora-upload-limit=1" in result.stdout, result.stderr
    return team, key


def test_lora_quota_holds_for_load_model_and_modelupload_alike(
    http: httpx.Client, dialect_server: RunningServer, file_server: FileServer, tiny_files, quota_team
):
    team, key = quota_team
    lora = {"key": key, "model_category": "lora", "model_format": "safetensors"}
    first = load(http, {**lora, "url": serve(file_server, tiny_files["lora"]), "model_id": "first-lora"})
    assert first["status"] == "success", first
    assert until_loaded(http, key, "first-lora")["load_status"] == "ready"
    source = first["air"].split(":")[0]
    reply = load(http, {**lora, "url": serve(file_server, tiny_files["lora2"]), "model_id": "second-lora"})
    assert reply["status"] == "error" and reply["code"] == "quotaExceeded" and "at most 1" in reply["message"], reply
    # No way around it: the native upload of a new LoRA under the team's own source meets the same limit.
    body = native_upload(http, key, serve(file_server, tiny_files["lora2"]), air=f"{source}:native-lora@1", category="lora", name="n")
    assert body["errors"][0]["code"] == "quotaExceeded", body
    # Updating the one it holds is not a new upload.
    again = load(http, {**lora, "url": serve(file_server, tiny_files["lora2"]), "model_id": "first-lora"})
    assert again["status"] == "success" and again["air"] == first["air"], again
    assert until_loaded(http, key, "first-lora")["status"] == "success"
    listed = wisp_cli("teams", "list", "--data-dir", str(dialect_server.data_dir))
    assert f"{team}\tlora-upload-limit=1\tloras=1\tdefault-source={source}" in listed.stdout
    # Private (the default visibility): another team can neither find nor use it.
    assert not [r for r in search(http, dialect_server.key, search="first-lora")["results"] if r["air"].startswith(source)]
    r = http.post("/v3/async/txt2img", headers={"Authorization": f"Bearer {dialect_server.key}"}, json={
        "model_name": "wisp:tiny-sd15@1", "prompt": "p", "width": 64, "height": 64, "steps": 2,
        "loras": [{"model_name": f"{source}:first-lora@1", "strength": 1}]})
    assert r.status_code == 400 and r.json()["reason"] == "MODEL_NOT_FOUND"
