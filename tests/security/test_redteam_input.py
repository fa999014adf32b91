"""Red-team findings on what a client sends (issue 18): each must be refused clearly, socket kept.

Pure protocol tests drive ``decode_frame`` with literal bytes; the server
tests talk to a real ``wisp serve`` on loopback (the shared ``wisp_server``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect

from protocol import decode_frame, encode_errors
from protocol.errors import ErrorCode
from tests.conftest import RunningServer

LONE = "\\ud800"
"""A lone surrogate as a JSON escape (msgspec refuses it; the standard parser admits it)."""


def new_uuid() -> str:
    return str(uuid.uuid4())


def poisoned(task: dict[str, Any], marker: str = "@@LONE@@") -> bytes:
    """The frame ``[task]`` with every ``marker`` in it turned into a lone-surrogate escape."""
    return json.dumps([task]).replace(marker, LONE).encode()


def one(frame: bytes):
    decoded = decode_frame(frame)
    assert isinstance(decoded, list) and len(decoded) == 1, decoded
    return decoded[0]


async def session(server: RunningServer):
    ws = await connect(server.ws_url, max_size=None)
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
    reply = json.loads(await ws.recv())
    assert "data" in reply, reply
    return ws


async def answer(ws, frame: bytes | str, task_uuid: str) -> dict[str, Any]:
    """Send a frame; the first item or error that names ``task_uuid``."""
    await ws.send(frame)
    while True:
        reply = json.loads(await ws.recv())
        for part in reply.get("data", []) + reply.get("errors", []):
            if part.get("taskUUID") == task_uuid:
                return part


async def still_open(ws) -> None:
    await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
    assert json.loads(await ws.recv()) == {"data": [{"taskType": "ping", "pong": True}]}


# ---- 12: lone surrogates ------------------------------------------------------

SURROGATE_CASES = [
    ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1@@LONE@@", "positivePrompt": "a cat"}, "model"),
    ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a @@LONE@@ cat"}, "positivePrompt"),
    ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a", "negativePrompt": "@@LONE@@"}, "negativePrompt"),
    ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a",
      "lora": [{"model": "x:y@1"}, {"model": "a:b@@LONE@@"}]}, "lora[1].model"),
    ({"taskType": "modelSearch", "search": "@@LONE@@"}, "search"),
    ({"taskType": "modelSearch", "tags": ["ok", "@@LONE@@"]}, "tags[1]"),
    ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a", "controlNet": {"k@@LONE@@": 1}}, "controlNet"),
]


@pytest.mark.parametrize(("task", "parameter"), SURROGATE_CASES)
def test_lone_surrogate_is_an_invalid_parameter_naming_the_field(task: dict[str, Any], parameter: str):
    task_uuid = new_uuid()
    item = one(poisoned({**task, "taskUUID": task_uuid}))
    assert item.task is None and item.error is not None
    assert item.error.code == ErrorCode.INVALID_PARAMETER
    assert item.error.parameter.startswith(parameter)
    assert item.error.taskUUID == task_uuid
    encode_errors([item.error])  # the error itself is encodable (no surrogate echoed back)
    json.dumps(item.raw, ensure_ascii=False).encode()  # so is what getTaskDetails would keep


def test_lone_surrogate_in_task_type_or_uuid_is_answered():
    item = one(poisoned({"taskType": "imageInference@@LONE@@", "taskUUID": new_uuid()}))
    assert item.error is not None and item.error.code == ErrorCode.INVALID_PARAMETER and item.error.parameter == "taskType"
    encode_errors([item.error])
    item = one(poisoned({"taskType": "getTaskDetails", "taskUUID": "@@LONE@@"}))
    assert item.error is not None and item.error.parameter == "taskUUID"
    encode_errors([item.error])


def test_paired_surrogates_are_ordinary_text():
    frame = json.dumps([{"taskType": "modelSearch", "taskUUID": new_uuid(), "search": "\U0001F600"}]).encode()
    assert b"\\ud83d\\ude00" in frame
    item = one(frame)
    assert item.error is None and item.task.search == "\U0001F600"


@pytest.mark.parametrize(
    ("task", "parameter"),
    [
        ({"taskType": "imageInference@@LONE@@"}, "taskType"),
        ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1@@LONE@@", "positivePrompt": "a"}, "model"),
        ({"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a @@LONE@@", "width": 64,
          "height": 64, "steps": 1}, "positivePrompt"),
        ({"taskType": "modelSearch", "search": "@@LONE@@"}, "search"),
    ],
)
async def test_lone_surrogates_keep_the_socket(wisp_server: RunningServer, task: dict[str, Any], parameter: str):
    ws = await session(wisp_server)
    try:
        task_uuid = new_uuid()
        error = await answer(ws, poisoned({**task, "taskUUID": task_uuid}), task_uuid)
        assert error["code"] == "invalidParameter" and error["parameter"] == parameter, error
        await still_open(ws)
        # getTaskDetails with a poisoned id: answered, socket kept.
        await ws.send(poisoned({"taskType": "getTaskDetails", "taskUUID": "@@LONE@@"}).decode())
        reply = json.loads(await ws.recv())
        assert reply["errors"][0]["parameter"] == "taskUUID", reply
        await still_open(ws)
    finally:
        await ws.close()


# ---- 19: nested range errors carry their bounds ---------------------------------

INFERENCE = {"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a cat"}


@pytest.mark.parametrize(
    ("task", "parameter", "low", "high"),
    [
        ({**INFERENCE, "lora": [{"model": "a:b@1", "weight": 9}]}, "lora[0].weight", -4, 4),
        ({**INFERENCE, "lora": [{"model": "a:b@1"}, {"model": "a:c@1", "weight": -5.5}]}, "lora[1].weight", -4, 4),
        ({**INFERENCE, "embeddings": [{"model": "a:b@1", "weight": 100}]}, "embeddings[0].weight", -4, 4),
        ({**INFERENCE, "steps": 0}, "steps", 1, 100),  # top level, as before
    ],
)
def test_nested_range_errors_carry_min_and_max(task: dict[str, Any], parameter: str, low: Any, high: Any):
    item = one(json.dumps([{**task, "taskUUID": new_uuid()}]).encode())
    assert item.error is not None and item.error.code == ErrorCode.INVALID_PARAMETER
    assert item.error.parameter == parameter
    assert (item.error.min, item.error.max) == (low, high)


# ---- 14: every free-text field has a documented length limit --------------------

LONG = 5 * 1024 * 1024
"""The red team's 5 MB prompt."""

UPLOAD = {"taskType": "modelUpload", "air": "a:b@1", "category": "lora", "architecture": "sd1x",
          "downloadURL": "http://example.com/x.safetensors", "uniqueIdentifier": "u", "name": "n", "version": "1"}
TRAINING = {"taskType": "training", "deliveryMethod": "async", "inputs": {"dataset": ["x"]}}
IMPORT = {"air": "a:b@1", "name": "n", "uniqueIdentifier": "u", "version": "1"}

TEXT_FIELDS = [
    # (task, field path, where to put the long value, the documented limit)
    (INFERENCE, "positivePrompt", 3000),
    (INFERENCE, "negativePrompt", 3000),
    (INFERENCE, "scheduler", 100),
    (INFERENCE, "model", 400),
    (INFERENCE, "vae", 400),
    (INFERENCE, "webhookURL", 4096),
    ({**INFERENCE, "safety": {}}, "safety.mode", 100),
    ({**INFERENCE, "lora": [{"model": ""}]}, "lora[0].model", 400),
    (UPLOAD, "architecture", 100),
    (UPLOAD, "defaultScheduler", 100),
    (UPLOAD, "conditioning", 100),
    (UPLOAD, "positiveTriggerWords", 3000),
    (UPLOAD, "negativeTriggerWords", 3000),
    ({**UPLOAD, "positiveTriggerWords": ["a", ""]}, "positiveTriggerWords[1]", 400),
    (UPLOAD, "name", 400),
    (UPLOAD, "comment", 1000),
    (UPLOAD, "shortDescription", 40000),
    ({"taskType": "modelSearch"}, "search", 400),
    ({"taskType": "modelSearch"}, "architecture", 100),
    ({"taskType": "modelSearch"}, "conditioning", 100),
    ({"taskType": "modelSearch"}, "customTaskUUID", 100),
    ({"taskType": "modelSearch", "tags": [""]}, "tags[0]", 400),
    (TRAINING, "negative_prompt", 3000),
    (TRAINING, "instance_prompt", 3000),
    (TRAINING, "class_prompt", 3000),
    (TRAINING, "triggerWord", 200),
    (TRAINING, "wandb_key", 400),
    ({**TRAINING, "importModel": IMPORT}, "importModel.architecture", 100),
    ({**TRAINING, "importModel": IMPORT}, "importModel.name", 400),
]


def _with(task: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    task = json.loads(json.dumps(task))
    node: Any = task
    parts = path.replace("[", ".[").split(".")
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
    return task


@pytest.mark.parametrize(("task", "path", "limit"), TEXT_FIELDS, ids=[p for _, p, _ in TEXT_FIELDS])
def test_free_text_fields_have_a_length_limit(task: dict[str, Any], path: str, limit: int):
    at_limit = one(json.dumps([{**_with(task, path, "x" * limit), "taskUUID": new_uuid()}]).encode())
    assert at_limit.error is None or at_limit.error.parameter != path or at_limit.error.max != limit, at_limit.error
    item = one(json.dumps([{**_with(task, path, "x" * (limit + 1)), "taskUUID": new_uuid()}]).encode())
    assert item.error is not None and item.error.code == ErrorCode.INVALID_PARAMETER, item.error
    assert item.error.parameter == path and item.error.max == limit, item.error


def test_a_5_mb_negative_prompt_is_refused_at_decode():
    item = one(json.dumps([{**INFERENCE, "taskUUID": new_uuid(), "negativePrompt": "x" * LONG}]).encode())
    assert item.error is not None and item.error.parameter == "negativePrompt" and item.error.max == 3000


@pytest.mark.parametrize(("task", "path", "limit"), [(UPLOAD, "positiveTriggerWords", 100), (UPLOAD, "tags", 100),
                                                     ({"taskType": "modelSearch"}, "tags", 100)])
def test_lists_of_words_have_a_length_limit(task: dict[str, Any], path: str, limit: int):
    item = one(json.dumps([{**task, path: [f"w{i}" for i in range(limit + 1)], "taskUUID": new_uuid()}]).encode())
    assert item.error is not None and item.error.parameter == path and item.error.max == limit, item.error


# ---- 13: img2img / inpainting with steps × strength < 1 --------------------------


def _png_data_uri(side: int = 64) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img2img(**fields: Any) -> dict[str, Any]:
    task = {**INFERENCE, "taskUUID": new_uuid(), "width": 64, "height": 64, "seedImage": _png_data_uri(), "seed": 1}
    task.update(fields)
    return {k: v for k, v in task.items() if v is not None}


def test_the_least_strength_offered_always_runs_a_step():
    from protocol.inference import img2img_steps_error

    assert img2img_steps_error(3, 0.3, strength_given=True, extra_step=True) is None  # PNDM img2img: one more step
    assert img2img_steps_error(1, 0.5, strength_given=True, extra_step=True) is not None
    for steps in range(1, 101):
        err = img2img_steps_error(steps, 0.0, strength_given=True)
        assert err is not None and int(steps * err.min) >= 1, steps
        assert img2img_steps_error(steps, err.min, strength_given=True) is None


@pytest.mark.parametrize(
    ("fields", "parameter", "least"),
    [
        ({"steps": 1, "strength": 0.5}, "strength", 1.0),
        ({"steps": 1}, "steps", 2),  # the built-in model's default strength is 0.8: int(1 × 0.8) = 0
        ({"steps": 1, "strength": 0.5, "maskImage": "@mask"}, "strength", 1.0),
        ({"strength": 0.0, "scheduler": "Euler"}, "strength", 0.05),  # default steps 20
        ({"steps": 3, "strength": 0.3, "scheduler": "Euler"}, "strength", 0.3334),
        ({"steps": 3, "strength": 0.3, "maskImage": "@mask"}, "strength", 0.3334),  # inpainting: PNDM adds no step
    ],
)
async def test_too_few_denoising_steps_are_an_invalid_parameter(wisp_server: RunningServer, fields, parameter, least):
    ws = await session(wisp_server)
    try:
        if fields.get("maskImage") == "@mask":
            fields = {**fields, "maskImage": _png_data_uri()}
        task = _img2img(**fields)
        error = await answer(ws, json.dumps([task]), task["taskUUID"])
        assert error.get("code") == "invalidParameter", error
        assert error["parameter"] == parameter and error["min"] == least, error
        await still_open(ws)
        # The smallest value it offers works.
        task = _img2img(**{**fields, parameter: least})
        item = await answer(ws, json.dumps([task]), task["taskUUID"])
        assert "imageUUID" in item, item
    finally:
        await ws.close()


def test_lone_surrogate_path_for_bodies_parsed_elsewhere():
    from protocol.frames import lone_surrogate_path

    body = json.loads('{"request": {"prompt": "a \\ud800", "loras": [{"model_name": "ok"}]}}')
    assert lone_surrogate_path(body) == "request.prompt"
    assert lone_surrogate_path(json.loads('["x", {"k\\udc00": 1}]')) == "[1]"
    assert lone_surrogate_path({"prompt": "\U0001F600 fine"}) is None
