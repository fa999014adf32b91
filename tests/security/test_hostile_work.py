"""Issue 18 #6: what one imageInference may make the device spend, and getting it back.

A per-request work limit, ``taskCancel`` for queued and running inference
(real server, real pipeline: a running one stops between steps), and the
fair queue holding across owners when batching is on (the real FairQueue).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect

from engine.workqueue import Batchable, FairQueue, _Job
from tests.conftest import RunningServer, start_server, stop_server

MODEL = "wisp:tiny-sd15@1"


def new_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    running = start_server(tmp_path_factory.mktemp("work") / "data", env={"WISP_MAX_BATCH": "1"})
    yield running
    stop_server(running)


def inference(**fields: Any) -> dict[str, Any]:
    return {"taskType": "imageInference", "taskUUID": new_uuid(), "model": MODEL, "positivePrompt": "x", "width": 64,
            "height": 64, "steps": 2, **fields}


async def test_requests_over_the_work_limit_are_refused_with_the_limit(server: RunningServer):
    async with connect(server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
        await ws.recv()
        big = [inference(width=2048, height=2048, steps=1, numberResults=20), inference(width=2048, height=2048, steps=100)]
        await ws.send(json.dumps(big))
        errors = json.loads(await asyncio.wait_for(ws.recv(), 10))["errors"]
        assert [(e["code"], e["taskUUID"], e["max"], e["parameter"]) for e in errors] == [
            ("workLimitExceeded", t["taskUUID"], 64, "steps") for t in big]
        assert "80.0 megapixel-steps" in errors[0]["message"]
        ok = inference(width=512, height=512, steps=1, numberResults=2)  # well under: runs
        await ws.send(json.dumps([ok]))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert "data" in frame and frame["data"][0]["taskUUID"] == ok["taskUUID"]


async def test_task_cancel_stops_a_running_inference_between_steps_and_withdraws_a_queued_one(server: RunningServer):
    async with connect(server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
        await ws.recv()
        running = inference(width=512, height=512, steps=60, CFGScale=7, includeProgress=True)
        queued = inference()
        await ws.send(json.dumps([running, queued]))
        frames: list[dict[str, Any]] = []

        async def until(predicate) -> None:
            while not any(predicate(f) for f in frames):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))

        def progress_of(frame: dict[str, Any]) -> bool:
            return any(i.get("taskUUID") == running["taskUUID"] and i.get("status") == "processing" for i in frame.get("data", []))

        await until(progress_of)  # the long one is on the device
        await ws.send(json.dumps([{"taskType": "taskCancel", "taskUUID": queued["taskUUID"]},
                                  {"taskType": "taskCancel", "taskUUID": running["taskUUID"]}]))

        def error_for(task_uuid: str):
            return lambda f: any(e.get("taskUUID") == task_uuid for e in f.get("errors", []))

        await until(error_for(queued["taskUUID"]))
        await until(error_for(running["taskUUID"]))
        acks = [i for f in frames for i in f.get("data", []) if i.get("taskType") == "taskCancel"]
        assert sorted((a["taskUUID"], a["cancelled"]) for a in acks) == sorted(
            [(queued["taskUUID"], True), (running["taskUUID"], True)])
        errors = {e["taskUUID"]: e["code"] for f in frames for e in f.get("errors", [])}
        assert errors == {queued["taskUUID"]: "taskCancelled", running["taskUUID"]: "taskCancelled"}
        steps_seen = [i["step"] for f in frames for i in f.get("data", [])
                      if i.get("taskUUID") == running["taskUUID"] and i.get("status") == "processing"]
        assert max(steps_seen) < 60  # it stopped early
        assert not any("imageUUID" in i for f in frames for i in f.get("data", []))
        # The device is free again, and getResponse reports the cancellation.
        after = inference()
        await ws.send(json.dumps([after, {"taskType": "getResponse", "taskUUID": running["taskUUID"]}]))
        await until(lambda f: any(i.get("taskUUID") == after["taskUUID"] and "imageUUID" in i for i in f.get("data", [])))
        assert any(e.get("taskUUID") == running["taskUUID"] and e["code"] == "taskCancelled"
                   for f in frames[-3:] for e in f.get("errors", []))


def _job(batch_key: str | None) -> _Job:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
    finally:
        loop.close()
    batch = Batchable(key=batch_key, payload=None, run=lambda payloads: payloads) if batch_key is not None else None
    return _Job(lambda: None, future, loop, batch)


def test_a_batch_does_not_make_another_owner_wait_beyond_its_turn():
    """Team A queues eight compatible jobs, team B one that cannot join: B runs second, not after A's batch of eight."""
    queue = FairQueue(64)
    a_jobs = [_job("k") for _ in range(8)]
    for job in a_jobs:
        queue.put("team-a", job)
    b_job = _job(None)
    queue.put("team-b", b_job)
    first = queue.get()
    assert first is a_jobs[0]
    assert queue.take_compatible("k", 7, leader=first.owner) == []  # nothing of A's jumps ahead of B
    assert queue.get() is b_job
    # With nobody else waiting, A's remaining jobs batch together as before.
    second = queue.get()
    assert second is a_jobs[1]
    assert queue.take_compatible("k", 7, leader=second.owner) == a_jobs[2:]


def test_a_batch_takes_one_companion_from_each_other_owner_while_someone_waits():
    queue = FairQueue(64)
    a1, a2 = _job("k"), _job("k")
    c1, c2 = _job("k"), _job("k")
    b = _job(None)
    for owner, job in (("a", a1), ("a", a2), ("c", c1), ("c", c2), ("b", b)):
        queue.put(owner, job)
    leader = queue.get()
    assert leader is a1
    assert queue.take_compatible("k", 7, leader="a") == [c1]  # c's turn came before b's anyway
    # c used its turn on that companion: b goes next, then a and c take their turns again.
    assert [queue.get() for _ in range(3)] == [b, a2, c2]


def test_withdraw_takes_out_only_the_job_with_that_flag():
    queue = FairQueue(8)
    flag = threading.Event()
    keep, gone = _job(None), _job(None)
    gone.cancel = flag
    queue.put("a", keep)
    queue.put("a", gone)
    assert queue.withdraw(flag) is gone and len(queue) == 1
    assert queue.withdraw(flag) is None
    assert queue.get() is keep
