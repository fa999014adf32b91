"""The engine seam (issue 13): a prepared job is plain data, runs anywhere, and the loop never waits on the registry.

- A job made from a task, encoded, decoded and run on another engine gives
  the same PNG bytes as the same request sent to a real server's socket.
- With the registry connection forbidden on the event-loop thread, a real
  imageInference (with a LoRA from the library) and a modelSearch go through
  the gateway: every registry read happened in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import connect

from engine import jobs
from engine.core import Engine, EngineConfig
from engine.models import builtin_folder
from engine.net import NetPolicy
from engine.registry.db import Database, RegistryOnEventLoop
from engine.registry.keys import KeyStore
from protocol.inference import ImageInference
from protocol.models import ModelUpload
from server.config import ServerConfig
from server.gateway import Gateway
from server.sessions import SessionRegistry
from server.tasks import TaskStore
from server.webhooks import WebhookSender
from tests.conftest import RunningServer
from tests.fixtures.loras import write_lora
from tests.server.test_gateway import FakeConn

MODEL = "wisp:tiny-sd15@1"


def request(**extra) -> dict:
    return {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": "a lighthouse",
            "negativePrompt": "fog", "width": 64, "height": 64, "steps": 3, "CFGScale": 6.5, "seed": 42,
            "outputType": "base64Data", **extra}


async def test_a_job_encoded_decoded_and_run_elsewhere_gives_the_sockets_bytes(wisp_server: RunningServer, tmp_path: Path):
    body = request(numberResults=2)
    async with connect(wisp_server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": wisp_server.key}]))
        await ws.recv()
        await ws.send(json.dumps([body]))
        via_socket: dict[int, bytes] = {}
        while len(via_socket) < 2:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            assert "errors" not in frame, frame
            for item in frame["data"]:
                via_socket[item["seed"]] = base64.b64decode(item["imageBase64Data"])

    engine = Engine(EngineConfig(data_dir=tmp_path / "elsewhere", torch_threads=1))
    engine.start()
    try:
        job = await engine.prepare_job(msgspec.convert(body, ImageInference), "some-team", "some-session")
        wire = jobs.encode(job)
        assert isinstance(wire, bytes)
        again = jobs.decode_job(wire)
        assert again == job and isinstance(again, jobs.InferenceJob)
        assert again.seeds == (42, 43) and again.scheduler and again.model.builtin
        events: list[jobs.Event] = []
        await engine.run(again, events.append)
    finally:
        engine.stop()
    assert isinstance(events[0], jobs.Started)
    steps = [e for e in events if isinstance(e, jobs.Step)]
    assert [s.step for s in steps] == list(range(1, len(steps) + 1)) and steps
    finished = events[-1]
    assert isinstance(finished, jobs.Finished)
    assert {image.seed: image.data for image in finished.images} == via_socket
    assert jobs.decode_event(jobs.encode(finished)) == finished  # the events cross a process too


async def test_a_failing_job_reports_a_wire_code_not_an_exception(tmp_path: Path):
    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1))
    engine.start()
    try:
        job = await engine.prepare_job(msgspec.convert(request(seedImage=str(uuid.uuid4())), ImageInference), "t", "s")
        events: list[jobs.Event] = []
        await engine.run(job, events.append)
    finally:
        engine.stop()
    assert events == [jobs.Failed(task_uuid=job.task_uuid, code="imageNotFound", message=events[-1].message, parameter="seedImage")]


@pytest.fixture
def guarded(tmp_path: Path):
    """An in-process gateway whose engine's registry refuses to be read on this (the event loop's) thread."""
    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1))
    engine.start()
    keys = KeyStore(Database(tmp_path / "wisp.db"))
    gateway = Gateway(ServerConfig(data_dir=tmp_path, warm_builtin=False), engine, keys, TaskStore(60), SessionRegistry(120),
                      WebhookSender(NetPolicy(), 1, 0))
    key = keys.create("alpha")
    lora = write_lora(builtin_folder(MODEL, tmp_path), tmp_path / "ink.safetensors", fmt="kohya")
    engine.registry.create_source("alpha", "alpha")
    upload = msgspec.convert({"taskType": "modelUpload", "taskUUID": str(uuid.uuid4()), "air": "alpha:ink@1", "category": "lora",
                              "architecture": "sd1x", "downloadURL": "https://example.invalid/ink.safetensors",
                              "uniqueIdentifier": "ink", "name": "ink", "version": "1"}, ModelUpload)

    async def emit(status: str, message: str) -> None:
        pass

    asyncio.run(engine.upload_model(upload, "alpha", emit, local_source=lora))
    yield gateway, key
    engine.stop()


async def test_no_registry_read_happens_on_the_event_loop(guarded):
    gateway, key = guarded
    gateway.engine.db.forbid_thread(threading.get_ident())
    with pytest.raises(RegistryOnEventLoop):  # the guard is live on this thread
        gateway.engine.registry.get("alpha:ink@1")
    conn = FakeConn()
    await gateway.handle_frame(conn, json.dumps([{"taskType": "authentication", "apiKey": key}]).encode())
    inference = request(lora=[{"model": "alpha:ink@1", "weight": 0.8}], includeProgress=True)
    search = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": "ink"}
    unknown = request(model="alpha:nothing@1")
    plain = request()  # a built-in model and nothing to look up: prepared where it arrives, still no registry read
    started = await gateway.handle_frame(conn, json.dumps([inference, search, unknown, plain]).encode())
    await asyncio.wait(started)
    data = [item for frame in conn.frames for item in frame.get("data", [])]
    errors = [e for frame in conn.frames for e in frame.get("errors", [])]
    assert [e["code"] for e in errors] == ["modelNotFound"] and errors[0]["taskUUID"] == unknown["taskUUID"]
    images = [i for i in data if i.get("taskUUID") == inference["taskUUID"] and "imageUUID" in i]
    assert len(images) == 1
    assert len([i for i in data if i.get("taskUUID") == plain["taskUUID"] and "imageUUID" in i]) == 1
    assert any(i.get("taskUUID") == inference["taskUUID"] and i.get("status") == "processing" for i in data)
    (found,) = [i for i in data if i.get("taskUUID") == search["taskUUID"]]
    assert [r["air"] for r in found["results"]] == ["alpha:ink@1"]
