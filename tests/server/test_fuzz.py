"""Protocol fuzzing (bounded): random and mutated frames through the gateway, no socket.

Properties, for every frame hypothesis builds:
- the gateway never raises, and never answers ``internalError`` (that would be a bug);
- every task element carrying a string taskUUID gets exactly one terminal answer
  (one error, or its data items — all in one frame — for a success or an async ack);
- no reply carries Python internals (tracebacks, file paths, exception reprs).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import Engine, EngineConfig
from engine.net import NetPolicy
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from server.config import ServerConfig
from server.gateway import Gateway
from server.sessions import SessionRegistry
from server.tasks import TaskStore
from server.webhooks import WebhookSender
from tests.server.test_gateway import FakeConn

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

VALID = {
    "imageInference": {"model": "wisp:tiny-sd15@1", "positivePrompt": "fuzz", "width": 64, "height": 64, "steps": 1, "seed": 1},
    "imageUpload": {"image": "data:image/png;base64,AAAA"},
    "getResponse": {"taskUUID": None},
    "getTaskDetails": {"taskUUID": None},
    "modelSearch": {"search": "x", "limit": 2},
    "ping": {"ping": True},
    "modelUpload": {"air": "nosuch:1@1", "category": "lora", "architecture": "sd1x", "downloadURL": "http://127.0.0.1:9/x",
                    "uniqueIdentifier": "u", "name": "n", "version": "1"},
}
FIELDS = sorted({k for task in VALID.values() for k in task} | {"outputType", "numberResults", "CFGScale", "lora", "scheduler",
                                                                  "deliveryMethod", "seedImage", "controlNet", "taskType"})


@st.composite
def mutated_task(draw: Any) -> Any:
    task_type = draw(st.sampled_from(sorted(VALID) + ["", "fooBar", "authentication"]))
    task: dict[str, Any] = {"taskType": task_type, **VALID.get(task_type, {})}
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "retype"]))
        field = draw(st.sampled_from(FIELDS))
        if action == "drop":
            task.pop(field, None)
        else:
            task[field] = draw(json_value)
    if draw(st.booleans()):
        task["taskUUID"] = "fresh"
    return task


frames = st.lists(st.one_of(mutated_task(), json_value), min_size=0, max_size=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("fuzz")
    config = ServerConfig(data_dir=root, warm_builtin=False, max_in_flight_per_session=64)
    keys = KeyStore(Database(root / "wisp.db"))
    engine = Engine(EngineConfig(data_dir=root, torch_threads=1))
    engine.start()
    gateway = Gateway(config, engine, keys, TaskStore(60), SessionRegistry(120), WebhookSender(NetPolicy(), 1, 0))
    yield gateway, keys.create("fuzz")
    engine.stop()


def _fresh_uuids(elements: list[Any]) -> tuple[list[Any], list[str]]:
    """Give every element that asked for a taskUUID a new one, so answers can be counted per task."""
    uuids = []
    out = []
    for element in elements:
        if isinstance(element, dict) and element.get("taskUUID") == "fresh":
            element = {**element, "taskUUID": str(uuid.uuid4())}
            if element.get("taskType") != "authentication":  # its reply never carries a taskUUID (JS SDK)
                uuids.append(element["taskUUID"])
        if isinstance(element, dict) and element.get("taskType") in ("getResponse", "getTaskDetails") and "taskUUID" in element:
            element["taskUUID"] = element["taskUUID"] if isinstance(element["taskUUID"], str) else str(uuid.uuid4())
            if element["taskUUID"] not in uuids:
                uuids.append(element["taskUUID"])
        out.append(element)
    return out, uuids


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(elements=frames, raw_prefix=st.sampled_from([b"", b" ", b"\xef\xbb\xbf"]))
def test_gateway_survives_and_answers_each_task_once(stack, elements, raw_prefix):
    gateway, key = stack
    elements, uuids = _fresh_uuids(elements)

    async def scenario() -> list[dict]:
        conn = FakeConn()
        await gateway.handle_frame(conn, json.dumps([{"taskType": "authentication", "apiKey": key}]).encode())
        jobs = await gateway.handle_frame(conn, raw_prefix + json.dumps(elements).encode())
        if jobs:
            await asyncio.wait(jobs, timeout=60)
        return conn.frames[1:]

    replies = asyncio.run(scenario())
    text = json.dumps(replies)
    assert "Traceback" not in text and 'File "' not in text and "Error(" not in text
    for frame in replies:
        assert ("data" in frame) != ("errors" in frame)
        assert all(e["code"] != "internalError" for e in frame.get("errors", [])), frame
    for task_uuid in uuids:
        errors = sum(1 for f in replies for e in f.get("errors", []) if e.get("taskUUID") == task_uuid)
        data_frames = sum(1 for f in replies if any(i.get("taskUUID") == task_uuid for i in f.get("data", [])))
        assert errors + data_frames == 1, (task_uuid, replies)


@pytest.mark.parametrize(
    "frame",
    [b"[" * 50_000 + b"]" * 50_000, b"[" + b"1," * 100_000 + b"1]", b'[{"taskType":"ping","ping":true,"x":' + b"[" * 5000 + b"]" * 5000 + b"}]",
     b"\x00" * 1000, b'[{"taskType":"ping","taskType":"ping"}]', "[\"\\ud800\"]".encode()],
)
def test_hostile_frames(stack, frame):
    gateway, key = stack

    async def scenario() -> list[dict]:
        conn = FakeConn()
        await gateway.handle_frame(conn, json.dumps([{"taskType": "authentication", "apiKey": key}]).encode())
        await gateway.handle_frame(conn, frame)
        await gateway.handle_frame(conn, b'[{"taskType":"ping","ping":true}]')
        return conn.frames[1:]

    replies = asyncio.run(scenario())
    assert replies[-1] == {"data": [{"taskType": "ping", "pong": True}]}
    assert all(("data" in f) != ("errors" in f) for f in replies)


async def test_flood_of_tiny_frames_over_a_real_socket(wisp_server):
    """2,000 frames sent without waiting (pings, garbage, bad tasks): one answer each, in order, socket alive."""
    from websockets.asyncio.client import connect

    frames = []
    for i in range(2000):
        kind = i % 4
        if kind == 0:
            frames.append('[{"taskType":"ping","ping":true}]')
        elif kind == 1:
            frames.append("{not json")
        elif kind == 2:
            frames.append(json.dumps([{"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "limit": 0}]))
        else:
            frames.append("[]")
    async with connect(wisp_server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": wisp_server.key}]))
        json.loads(await ws.recv())
        for frame in frames:
            await ws.send(frame)
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in frames]
    kinds = [("pong" if "data" in r else r["errors"][0]["code"]) for r in replies]
    assert kinds == ["pong", "invalidFrame", "invalidParameter", "invalidFrame"] * 500
