"""The gateway driven without any socket: frames in, replies and session frames out."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from engine.core import Engine, EngineConfig
from engine.net import NetPolicy
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from server.config import ServerConfig
from server.gateway import Gateway, RequestContext
from server.sessions import Session, SessionRegistry
from server.tasks import TaskStore
from server.webhooks import WebhookSender


class FakeConn:
    """Collects what the gateway sends; acts as the session's sink while bound."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.ctx = RequestContext(base_url="http://wisp.test", own_hosts=frozenset({"wisp.test"}))
        self.frames: list[dict] = []

    async def reply(self, frames: list[bytes]) -> None:
        self.frames.extend(json.loads(f) for f in frames)

    async def send_frames(self, frames: list[bytes]) -> list[bytes]:
        await self.reply(frames)
        return []

    def bind(self, session: Session) -> list[bytes]:
        self.session = session
        return session.attach(self)


@pytest.fixture
def gateway(tmp_path: Path):
    config = ServerConfig(data_dir=tmp_path, max_in_flight_per_session=2, warm_builtin=False)
    keys = KeyStore(Database(tmp_path / "wisp.db"))
    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1))
    engine.start()
    gw = Gateway(config, engine, keys, TaskStore(60), SessionRegistry(120), WebhookSender(NetPolicy(), 1, 0))
    yield gw, keys.create("alpha"), keys.create("beta")
    engine.stop()


def infer(task_uuid: str, **extra) -> dict:
    return {"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1", "positivePrompt": "p",
            "width": 64, "height": 64, "steps": 2, "seed": 1, **extra}


async def send(gw: Gateway, conn: FakeConn, *tasks: dict) -> list[asyncio.Task]:
    return await gw.handle_frame(conn, json.dumps(list(tasks)).encode())


async def test_auth_ping_and_refusal_before_auth(gateway):
    gw, key, _ = gateway
    conn = FakeConn()
    u = str(uuid.uuid4())
    await send(gw, conn, infer(u))
    assert conn.frames[-1]["errors"][0]["code"] == "notAuthenticated"
    assert conn.frames[-1]["errors"][0]["taskUUID"] == u
    await send(gw, conn, {"taskType": "authentication", "apiKey": key}, {"taskType": "ping", "ping": True})
    data = conn.frames[-1]["data"]
    assert data[0]["taskType"] == "authentication" and "taskUUID" not in data[0]
    assert data[1] == {"taskType": "ping", "pong": True}


async def test_results_buffer_while_detached_and_flush_on_resume(gateway):
    gw, key, _ = gateway
    first = FakeConn()
    await send(gw, first, {"taskType": "authentication", "apiKey": key})
    session = first.session
    u = str(uuid.uuid4())
    jobs = await send(gw, first, infer(u))
    session.detach(first)  # the socket went away mid-task
    await asyncio.wait(jobs)
    assert len(session.buffer) == 1
    second = FakeConn()
    await send(gw, second, {"taskType": "authentication", "apiKey": key, "connectionSessionUUID": session.uuid})
    await asyncio.sleep(0.05)
    assert second.frames[0]["data"][0]["connectionSessionUUID"] == session.uuid
    assert second.frames[1]["data"][0]["taskUUID"] == u
    assert not session.buffer


async def test_other_team_cannot_resume_or_poll(gateway):
    gw, key, other_key = gateway
    mine, theirs = FakeConn(), FakeConn()
    await send(gw, mine, {"taskType": "authentication", "apiKey": key})
    u = str(uuid.uuid4())
    await asyncio.wait(await send(gw, mine, infer(u)))
    await send(gw, theirs, {"taskType": "authentication", "apiKey": other_key, "connectionSessionUUID": mine.session.uuid})
    assert theirs.session is not mine.session
    await send(gw, theirs, {"taskType": "getResponse", "taskUUID": u})
    assert theirs.frames[-1]["errors"][0]["code"] == "taskNotFound"
    jobs = await send(gw, theirs, infer(u))  # same taskUUID, other team: no conflict
    await asyncio.wait(jobs)
    assert theirs.frames[-1]["data"][0]["taskUUID"] == u


async def test_in_flight_limit_and_conflict(gateway):
    gw, key, _ = gateway
    conn = FakeConn()
    await send(gw, conn, {"taskType": "authentication", "apiKey": key})
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    jobs = await send(gw, conn, infer(a), infer(a), infer(b), infer(c))
    errors = conn.frames[-1]["errors"]
    assert [e["code"] for e in errors] == ["conflictTaskUUID", "tooManyTasksInFlight"]
    assert [e["taskUUID"] for e in errors] == [a, c]
    await asyncio.wait(jobs)
    # a refused-for-load taskUUID is not burnt: it can be sent again
    await asyncio.wait(await send(gw, conn, infer(c)))
    assert conn.frames[-1]["data"][0]["taskUUID"] == c


async def test_internal_errors_do_not_leak_text(gateway, monkeypatch):
    gw, key, _ = gateway
    conn = FakeConn()
    await send(gw, conn, {"taskType": "authentication", "apiKey": key})

    def explode(*args, **kwargs):
        raise RuntimeError("secret /etc/path detail")

    monkeypatch.setattr(gw.engine.inference, "_render", explode)  # the device work the job runs
    u = str(uuid.uuid4())
    await asyncio.wait(await send(gw, conn, infer(u)))
    error = conn.frames[-1]["errors"][0]
    assert error["code"] == "internalError" and error["taskUUID"] == u
    assert "secret" not in json.dumps(conn.frames)
    await send(gw, conn, {"taskType": "getResponse", "taskUUID": u})
    assert conn.frames[-1]["errors"][0]["code"] == "internalError"


async def test_queue_full_is_retryable_with_the_same_task_uuid(tmp_path):
    config = ServerConfig(data_dir=tmp_path, max_in_flight_per_session=10, warm_builtin=False)
    keys = KeyStore(Database(tmp_path / "wisp.db"))
    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1, max_queue=1))
    engine.start()
    try:
        gw = Gateway(config, engine, keys, TaskStore(60), SessionRegistry(120), WebhookSender(NetPolicy(), 1, 0))
        conn = FakeConn()
        await send(gw, conn, {"taskType": "authentication", "apiKey": keys.create("alpha")})
        uuids = [str(uuid.uuid4()) for _ in range(4)]
        await asyncio.wait(await send(gw, conn, *(infer(u) for u in uuids)))
        refused = [e["taskUUID"] for f in conn.frames for e in f.get("errors", []) if e["code"] == "queueFull"]
        served = [i["taskUUID"] for f in conn.frames for i in f.get("data", []) if "imageUUID" in i]
        assert refused and served and set(refused) | set(served) == set(uuids)
        again = refused[0]
        await asyncio.wait(await send(gw, conn, infer(again)))
        assert conn.frames[-1]["data"][0]["taskUUID"] == again
    finally:
        engine.stop()


async def test_failed_authentications_are_rate_limited_per_address(tmp_path):
    config = ServerConfig(data_dir=tmp_path, warm_builtin=False, auth_max_failures=3, auth_window_s=60)
    keys = KeyStore(Database(tmp_path / "wisp.db"))
    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1))
    gw = Gateway(config, engine, keys, TaskStore(60), SessionRegistry(120), WebhookSender(NetPolicy(), 1, 0))
    good = keys.create("alpha")
    scanner, neighbour = FakeConn(), FakeConn()
    scanner.ctx = RequestContext(base_url="http://wisp.test", own_hosts=frozenset(), peer="10.9.9.9")
    neighbour.ctx = RequestContext(base_url="http://wisp.test", own_hosts=frozenset(), peer="10.1.1.1")
    for attempt in range(3):
        await send(gw, scanner, {"taskType": "authentication", "apiKey": f"wisp_guess{attempt}"})
        assert scanner.frames[-1]["errors"][0]["code"] == "invalidApiKey"
    await send(gw, scanner, {"taskType": "authentication", "apiKey": good})
    assert scanner.frames[-1]["errors"][0]["code"] == "authRateLimited"  # even a good key waits out the window
    assert scanner.session is None
    await send(gw, neighbour, {"taskType": "authentication", "apiKey": good})
    assert "data" in neighbour.frames[-1]  # other addresses are unaffected


async def test_finished_records_are_packed_and_read_back_unchanged(gateway):
    """A finished search's record keeps its request and items as one bytes (not walked by the garbage collector);
    an image task's stays as it was (its items are shared by repeated polls); getResponse and getTaskDetails answer
    exactly what each task sent, and a huge field stays trimmed."""
    import gc

    gw, key, _ = gateway
    conn = FakeConn()
    await send(gw, conn, {"taskType": "authentication", "apiKey": key})
    searches = [str(uuid.uuid4()) for _ in range(2)]
    for u in searches:  # the first may run as a job (the model view warms up); the second is answered from memory
        await settle(await send(gw, conn, {"taskType": "modelSearch", "taskUUID": u, "search": "tiny"}))
    sent = conn.frames[-1]["data"][0]
    assert sent["taskUUID"] == searches[1] and sent["results"]
    image = str(uuid.uuid4())
    seed_image = noise_png_base64()
    assert len(seed_image) > 10_000
    await settle(await send(gw, conn, infer(image, seedImage=seed_image, strength=0.5)))
    image_sent = conn.frames[-1]["data"][0]

    for u in searches:
        record = gw.tasks.get(key_team(gw, key), u)
        assert record is not None and record.finished_at is not None
        held = gc.get_referents(record)
        assert any(isinstance(r, bytes) for r in held)
        assert not any(isinstance(r, (dict, list)) and r for r in held), held  # no request dict, no item list left
    record = gw.tasks.get(key_team(gw, key), image)
    assert record is not None and record._packed is None and record.items[0] is record.items[0]

    await send(gw, conn, {"taskType": "getResponse", "taskUUID": searches[1]})
    assert conn.frames[-1]["data"] == [{**sent, "status": "success"}]
    await send(gw, conn, {"taskType": "getResponse", "taskUUID": image})
    assert conn.frames[-1]["data"] == [{**image_sent, "status": "success"}]
    await send(gw, conn, {"taskType": "getTaskDetails", "taskUUID": image})
    details = conn.frames[-1]["data"][0]
    assert details["request"][0]["seedImage"] == f"<{len(seed_image)} characters omitted>"
    assert details["response"] == [image_sent]


def test_a_query_request_is_trimmed_when_packed():
    """Queries (durable=False) skip the trim at claim (a microsecond each); a big one is trimmed when packed."""
    from server.tasks import TaskRecord

    record = TaskRecord("t", "u", "modelSearch", {"search": "y" * 9000, "limit": 5}, "s", durable=False)
    assert record.request["search"] == "y" * 9000
    record.succeed([{"results": []}])
    record.pack()
    assert record.request == {"search": "<9000 characters omitted>", "limit": 5}
    assert record.items == [{"results": []}] and len(record._packed) < 200
    record.items = [{"results": [1]}]  # set again (a late status): the request survives
    assert record.request["limit"] == 5 and record.items == [{"results": [1]}]


async def settle(jobs: list[asyncio.Task]) -> None:
    if jobs:
        await asyncio.wait(jobs)


def noise_png_base64() -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def key_team(gw: Gateway, key: str) -> str:
    team = gw.keys.team_of(key)
    assert team is not None
    return team
