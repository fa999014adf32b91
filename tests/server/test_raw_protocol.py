"""Raw WebSocket protocol tests against a real ``wisp serve`` subprocess.

No SDK is involved: every frame is written and read by hand, so these tests
pin the wire facts of ``PROTOCOL.md`` (frame shapes, error codes, taskUUID
routing, delivery modes, session resume) independently of any client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import RunningServer, start_server, stop_server

MODEL = "wisp:tiny-sd15@1"
TIMEOUT = 60.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def new_uuid() -> str:
    return str(uuid.uuid4())


def inference(task_uuid: str | None = None, **fields: Any) -> dict[str, Any]:
    """A small, fast imageInference task (64×64, 2 steps) with overrides."""
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": task_uuid or new_uuid(),
        "model": MODEL,
        "positivePrompt": "a lighthouse at dusk",
        "width": 64,
        "height": 64,
        "steps": 2,
    }
    task.update(fields)
    return {k: v for k, v in task.items() if v is not None}


def png_bytes(size: tuple[int, int], color: Any = (200, 40, 40), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


class WireClient:
    """A raw socket plus everything it has received, parsed and checked.

    Every server frame must be an object with exactly one key, ``data`` or
    ``errors``, holding a list: that is asserted on every frame read, so no
    test can miss a frame that mixes both.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.sizes: list[int] = []  # bytes of each frame, as received

    async def send(self, payload: Any) -> None:
        await self.ws.send(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        self.sizes.append(len(raw.encode() if isinstance(raw, str) else raw))
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"server frame is not an object: {raw[:200]!r}"
        assert list(frame) in (["data"], ["errors"]), f"server frame must hold exactly one of data/errors: {raw[:300]!r}"
        key = next(iter(frame))
        assert isinstance(frame[key], list) and frame[key], f"empty or non-list {key}: {raw[:300]!r}"
        self.frames.append(frame)
        return frame

    async def until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Read frames until ``done()`` holds (checked first), or fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out; frames so far: {json.dumps(self.frames)[:3000]}")
            try:
                await self.recv(left)
            except asyncio.TimeoutError:
                pytest.fail(f"timed out; frames so far: {json.dumps(self.frames)[:3000]}")

    # ---- views over everything received so far ----------------------------

    def data(self, since: int = 0) -> list[dict[str, Any]]:
        return [item for f in self.frames[since:] for item in f.get("data", [])]

    def errors(self, since: int = 0) -> list[dict[str, Any]]:
        return [err for f in self.frames[since:] for err in f.get("errors", [])]

    def data_for(self, task_uuid: str, since: int = 0) -> list[dict[str, Any]]:
        return [i for i in self.data(since) if i.get("taskUUID") == task_uuid]

    def errors_for(self, task_uuid: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.errors(since) if e.get("taskUUID") == task_uuid]

    def pongs(self) -> list[dict[str, Any]]:
        return [i for i in self.data() if i.get("taskType") == "ping"]

    # ---- conversations ----------------------------------------------------

    async def request(self, tasks: Any, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        await self.send(tasks)
        await self.until(done, timeout)

    async def authenticate(self, api_key: str | None, session_uuid: str | None = None) -> dict[str, Any]:
        """Send an authentication task; return the first reply frame that answers it."""
        task: dict[str, Any] = {"taskType": "authentication"}
        if api_key is not None:
            task["apiKey"] = api_key
        if session_uuid is not None:
            task["connectionSessionUUID"] = session_uuid
        start = len(self.frames)
        await self.send([task])

        def answered() -> bool:
            return any(
                item.get("taskType") == "authentication"
                for f in self.frames[start:]
                for item in f.get("data", []) + f.get("errors", [])
            )

        await self.until(answered)
        return next(
            f for f in self.frames[start:]
            if any(i.get("taskType") == "authentication" for i in f.get("data", []) + f.get("errors", []))
        )

    async def ping(self) -> dict[str, Any]:
        """Ping and return the pong frame (also a barrier: earlier frames have arrived)."""
        before = len(self.pongs())
        await self.send([{"taskType": "ping", "ping": True}])
        await self.until(lambda: len(self.pongs()) > before)
        return next(f for f in reversed(self.frames) if any(i.get("taskType") == "ping" for i in f.get("data", [])))

    async def run(self, task: dict[str, Any], timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Send one task; wait for its error, or its ``numberResults`` result items.

        Only frames received after the send count.
        """
        want = task.get("numberResults", 1) if task.get("taskType") == "imageInference" else 1
        u, start = task["taskUUID"], len(self.frames)
        await self.request(
            [task], lambda: bool(self.errors_for(u, start)) or len(self.data_for(u, start)) >= want, timeout
        )
        return self.errors_for(u, start) or self.data_for(u, start)

    async def error_of(self, task: dict[str, Any]) -> dict[str, Any]:
        """Send one task that must fail; return its single error (frames after the send only)."""
        u, start = task["taskUUID"], len(self.frames)
        await self.request([task], lambda: bool(self.errors_for(u, start)) or bool(self.data_for(u, start)))
        assert not self.data_for(u, start), f"expected an error, got data {self.data_for(u, start)}"
        errs = self.errors_for(u, start)
        assert len(errs) == 1, errs
        return errs[0]

    async def poll(self, task_uuid: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """getResponse until the task is finished; returns every answer received, in order."""
        answers: list[list[dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = len(self.frames)

            def got() -> bool:
                return any(
                    i.get("taskUUID") == task_uuid and ("status" in i or "code" in i)
                    for f in self.frames[start:]
                    for i in f.get("data", []) + f.get("errors", [])
                )

            await self.request([{"taskType": "getResponse", "taskUUID": task_uuid}], got)
            answer = [
                i
                for f in self.frames[start:]
                for i in f.get("data", []) + f.get("errors", [])
                if i.get("taskUUID") == task_uuid and ("status" in i or "code" in i)
            ]
            answers.append(answer)
            if any(i.get("status") != "processing" for i in answer):
                return [i for a in answers for i in a]
            await asyncio.sleep(0.1)
        pytest.fail(f"task {task_uuid} never finished: {answers[-3:]}")


async def open_client(url: str) -> WireClient:
    ws = await connect(url, max_size=None, open_timeout=30)
    return WireClient(ws)


@pytest.fixture
async def raw(wisp_server: RunningServer):
    """An open, unauthenticated socket."""
    client = await open_client(wisp_server.ws_url)
    try:
        yield client
    finally:
        await client.ws.close()


@pytest.fixture
async def client(raw: WireClient, wisp_server: RunningServer):
    """A socket authenticated with a key of team ``default``."""
    reply = await raw.authenticate(wisp_server.key)
    assert "data" in reply, reply
    return raw


def decode_b64(item: dict[str, Any]) -> bytes:
    return base64.b64decode(item["imageBase64Data"], validate=True)


# ---- authentication ---------------------------------------------------------


async def test_task_before_authentication_gets_error_and_socket_stays_usable(raw: WireClient, wisp_server: RunningServer):
    task = inference()
    err = await raw.error_of(task)
    assert err["code"] == "notAuthenticated"
    assert err["taskUUID"] == task["taskUUID"]
    assert err["taskType"] == "imageInference"
    # getResponse before auth, too: refused, routed by its taskUUID.
    look = {"taskType": "getResponse", "taskUUID": new_uuid()}
    assert (await raw.error_of(look))["code"] == "notAuthenticated"
    reply = await raw.authenticate(wisp_server.key)
    assert "data" in reply
    assert await raw.ping() == {"data": [{"taskType": "ping", "pong": True}]}
    # And now the same task runs (the refused attempt claimed nothing).
    items = await raw.run(task)
    assert len(items) == 1 and "imageUUID" in items[0], items


async def test_authentication_applies_within_its_frame(raw: WireClient, wisp_server: RunningServer):
    before, after = inference(), inference()
    auth = {"taskType": "authentication", "apiKey": wisp_server.key}
    await raw.request(
        [before, auth, after],
        lambda: bool(raw.errors_for(before["taskUUID"])) and bool(raw.data_for(after["taskUUID"])),
    )
    await raw.ping()
    assert [e["code"] for e in raw.errors_for(before["taskUUID"])] == ["notAuthenticated"]
    assert raw.data_for(before["taskUUID"]) == []
    assert len(raw.data_for(after["taskUUID"])) == 1 and raw.errors_for(after["taskUUID"]) == []
    assert [i for i in raw.data() if i["taskType"] == "authentication"][0]["connectionSessionUUID"]


async def test_auth_reply_shape(raw: WireClient, wisp_server: RunningServer):
    reply = await raw.authenticate(wisp_server.key)
    assert list(reply) == ["data"]
    assert len(reply["data"]) == 1
    item = reply["data"][0]
    assert item["taskType"] == "authentication"
    assert "taskUUID" not in item
    assert set(item) == {"taskType", "connectionSessionUUID"}
    assert str(uuid.UUID(item["connectionSessionUUID"])) == item["connectionSessionUUID"].lower()


async def test_auth_bad_key(raw: WireClient, wisp_server: RunningServer):
    reply = await raw.authenticate("not-a-real-key")
    assert list(reply) == ["errors"]
    (err,) = reply["errors"]
    assert err["code"] == "invalidApiKey"
    assert err["taskType"] == "authentication"
    assert "taskUUID" not in err
    # Still not authenticated: tasks are refused.
    assert (await raw.error_of(inference()))["code"] == "notAuthenticated"
    # The socket still accepts a good key afterwards.
    assert "data" in await raw.authenticate(wisp_server.key)


@pytest.mark.parametrize("api_key", [None, ""], ids=["absent", "empty"])
async def test_auth_missing_key(raw: WireClient, api_key: str | None):
    reply = await raw.authenticate(api_key)
    assert list(reply) == ["errors"]
    (err,) = reply["errors"]
    assert err["code"] == "missingApiKey"
    assert err["taskType"] == "authentication"


# ---- ping ------------------------------------------------------------------


async def test_ping_exact_reply(raw: WireClient, wisp_server: RunningServer):
    # Before and after authentication alike.
    assert await raw.ping() == {"data": [{"taskType": "ping", "pong": True}]}
    await raw.authenticate(wisp_server.key)
    await raw.send([{"taskType": "ping", "ping": True}])
    assert await raw.recv() == {"data": [{"taskType": "ping", "pong": True}]}


# ---- frames ----------------------------------------------------------------


async def test_mixed_frame_each_task_answered_on_its_own(client: WireClient):
    good = inference()
    narrow = inference(width=63)
    unknown = {"taskType": "fooBar", "taskUUID": new_uuid()}
    frame = [good, narrow, unknown, 5, {"taskType": "ping", "ping": True}]

    def done() -> bool:
        return bool(client.data_for(good["taskUUID"])) and len(client.errors()) >= 3 and bool(client.pongs())

    await client.request(frame, done)
    await client.ping()  # barrier: anything else the frame caused has arrived

    (image,) = client.data_for(good["taskUUID"])
    assert image["taskType"] == "imageInference" and image["imageUUID"]

    (width_err,) = client.errors_for(narrow["taskUUID"])
    assert width_err["code"] == "invalidParameter"
    assert width_err["parameter"] == "width"
    assert width_err["taskType"] == "imageInference"
    assert width_err["min"] == 64 and width_err["max"] == 2048

    (type_err,) = client.errors_for(unknown["taskUUID"])
    assert type_err["code"] == "unsupportedTaskType"
    assert type_err["taskType"] == "fooBar"

    not_object = [e for e in client.errors() if e["code"] == "invalidTask"]
    assert len(not_object) == 1, client.errors()
    assert not_object[0]["taskIndex"] == 3  # the only handle a client has on it
    assert len(client.errors()) == 3, client.errors()
    assert len(client.pongs()) == 2  # the frame's ping, then the barrier's
    # (every frame was already checked to hold data or errors, never both)


async def test_duplicate_task_uuid_after_finish(client: WireClient):
    task = inference()
    first = await client.run(task)
    assert "imageUUID" in first[0], first
    again = dict(task, seed=99)
    err = await client.error_of(again)
    assert err["code"] == "conflictTaskUUID"
    assert err["taskUUID"] == task["taskUUID"]
    assert err["taskType"] == "imageInference"
    await client.ping()
    assert len(client.data_for(task["taskUUID"])) == 1


async def test_duplicate_task_uuid_in_one_frame(client: WireClient):
    u = new_uuid()
    await client.request(
        [inference(u), inference(u, seed=5)],
        lambda: bool(client.data_for(u)) and bool(client.errors_for(u)),
    )
    await client.ping()
    assert len(client.data_for(u)) == 1, client.frames
    (err,) = client.errors_for(u)
    assert err["code"] == "conflictTaskUUID"


async def test_duplicate_task_uuid_differs_only_in_case(client: WireClient):
    u = new_uuid()
    await client.run(inference(u))
    err = await client.error_of(inference(u.upper()))
    assert err["code"] == "conflictTaskUUID"


async def test_malformed_json_frame(client: WireClient):
    await client.send('[{"taskType": "ping", ')
    frame = await client.recv()
    assert list(frame) == ["errors"]
    assert [e["code"] for e in frame["errors"]] == ["invalidFrame"]
    assert await client.ping() == {"data": [{"taskType": "ping", "pong": True}]}


@pytest.mark.parametrize(
    "payload",
    ['{"taskType": "ping", "ping": true}', "[]", '"ping"', "42", "null"],
    ids=["object", "empty-array", "string", "number", "null"],
)
async def test_non_array_or_empty_frame(client: WireClient, payload: str):
    await client.send(payload)
    frame = await client.recv()
    assert [e["code"] for e in frame.get("errors", [])] == ["invalidFrame"], frame
    assert await client.ping() == {"data": [{"taskType": "ping", "pong": True}]}


async def test_binary_frame_not_utf8(client: WireClient):
    await client.ws.send(b"\xff\xfe[1]")
    frame = await client.recv()
    assert [e["code"] for e in frame.get("errors", [])] == ["invalidFrame"], frame
    assert await client.ping() == {"data": [{"taskType": "ping", "pong": True}]}


async def test_binary_frame_with_invalid_utf8_in_a_string(client: WireClient):
    await client.ws.send(b'[{"taskType": "ping", "ping": true, "note": "\xff"}]')
    frame = await client.recv(10)
    assert [e["code"] for e in frame.get("errors", [])] == ["invalidFrame"], frame
    assert await client.ping() == {"data": [{"taskType": "ping", "pong": True}]}


async def test_binary_frame_is_read_like_text(client: WireClient):
    u = new_uuid()
    await client.ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": u}]).encode())
    await client.until(lambda: bool(client.errors_for(u)))
    assert client.errors_for(u)[0]["code"] == "taskNotFound"


# ---- validation ------------------------------------------------------------


async def test_missing_task_uuid(client: WireClient):
    task = inference()
    del task["taskUUID"]
    await client.send([task])
    frame = await client.recv()
    (err,) = frame["errors"]
    assert err["code"] == "missingParameter"
    assert err["parameter"] == "taskUUID"
    assert err["taskType"] == "imageInference"


@pytest.mark.parametrize(
    ("fields", "code", "parameter"),
    [
        ({"width": 4096}, "invalidParameter", "width"),
        ({"height": 100}, "invalidParameter", "height"),  # not a multiple of 8
        ({"steps": 0}, "invalidParameter", "steps"),
        ({"numberResults": 0}, "invalidParameter", "numberResults"),
        ({"numberResults": 21}, "invalidParameter", "numberResults"),
        ({"CFGScale": 51}, "invalidParameter", "CFGScale"),
        ({"seed": -1}, "invalidParameter", "seed"),
        ({"strength": 1.5}, "invalidParameter", "strength"),
        ({"outputType": "PNG"}, "invalidParameter", "outputType"),
        ({"outputFormat": "GIF"}, "invalidParameter", "outputFormat"),
        ({"deliveryMethod": "later"}, "invalidParameter", "deliveryMethod"),
        ({"positivePrompt": ""}, "invalidParameter", "positivePrompt"),
        ({"positivePrompt": None}, "missingParameter", "positivePrompt"),
        ({"model": None}, "missingParameter", "model"),
        ({"fooField": 1}, "unknownParameter", "fooField"),
        ({"checkNSFW": True}, "unsupportedParameter", "checkNSFW"),
        ({"refiner": {"model": "civitai:1@1"}}, "invalidParameter", "refiner"),  # an SD-1.x model cannot be refined
        ({"instantID": {"inputImage": "x"}}, "unsupportedParameter", "instantID"),
        ({"embeddings": [{"model": "civitai:1@1", "strength": 1}]}, "unknownParameter", "embeddings[0].strength"),
    ],
)
async def test_invalid_fields(client: WireClient, fields: dict[str, Any], code: str, parameter: str):
    task = inference(**{k: v for k, v in fields.items() if v is not None})
    for k, v in fields.items():
        if v is None:
            del task[k]
    err = await client.error_of(task)
    assert (err["code"], err["parameter"]) == (code, parameter), err
    assert err["taskType"] == "imageInference"


async def test_non_uuid_task_uuid(client: WireClient):
    task = inference("not-a-uuid")
    err = await client.error_of(task)
    assert err["code"] == "invalidTaskUUID"
    assert err["taskUUID"] == "not-a-uuid"
    assert err["parameter"] == "taskUUID"


async def test_refused_task_leaves_its_uuid_free(client: WireClient):
    task = inference(model="civitai:999999@1")
    assert (await client.error_of(task))["code"] == "modelNotFound"
    (item,) = await client.run(dict(task, model=MODEL))
    assert "imageUUID" in item, item


async def test_pong_does_not_wait_behind_inference(client: WireClient):
    task = inference(steps=4, width=256, height=256, numberResults=2)
    u = task["taskUUID"]
    await client.send([task])
    sent = time.monotonic()
    await client.send([{"taskType": "ping", "ping": True}])
    await client.until(lambda: bool(client.pongs()))
    waited = time.monotonic() - sent
    assert client.data_for(u) == [], "the pong came after the image"
    assert waited < 1.0
    await client.until(lambda: len(client.data_for(u)) == 2)


async def test_wrong_type(client: WireClient):
    task = inference(steps="4")
    err = await client.error_of(task)
    assert err["code"] == "invalidParameter"
    assert err["parameter"] == "steps"
    assert err["taskUUID"] == task["taskUUID"]


async def test_unknown_model(client: WireClient):
    task = inference(model="civitai:999999@1")
    err = await client.error_of(task)
    assert err["code"] == "modelNotFound"
    assert err["parameter"] == "model"
    assert err["taskUUID"] == task["taskUUID"]
    assert err["taskType"] == "imageInference"


async def test_unknown_scheduler(client: WireClient):
    task = inference(scheduler="Warp Drive")
    err = await client.error_of(task)
    assert err["code"] == "invalidParameter"
    assert err["parameter"] == "scheduler"
    assert "Euler a" in err["message"] and "DPM++ 2M Karras" in err["message"]


async def test_an_unknown_control_net_is_named(client: WireClient):
    task = inference(controlNet=[{"model": "civitai:38784@44716", "guideImage": "x", "weight": 1}])
    err = await client.error_of(task)
    assert err["code"] == "modelNotFound"
    assert err["parameter"] == "controlNet[0].model"
    assert err["taskUUID"] == task["taskUUID"]
    task = inference(ipAdapters=[{"model": "x"}])  # still not offered: refused, never ignored
    err = await client.error_of(task)
    assert err["code"] == "unsupportedParameter" and err["parameter"] == "ipAdapters"


async def test_undecodable_seed_image(client: WireClient):
    task = inference(seedImage=base64.b64encode(b"not an image").decode(), strength=0.5)
    err = await client.error_of(task)
    assert err["code"] == "invalidImage"
    assert err["taskUUID"] == task["taskUUID"]
    assert err["parameter"] == "seedImage"


async def test_failed_task_is_recorded_for_get_response(client: WireClient):
    task = inference(seedImage=base64.b64encode(b"not an image").decode(), strength=0.5)
    assert (await client.error_of(task))["code"] == "invalidImage"
    u = task["taskUUID"]
    start = len(client.frames)
    await client.request([{"taskType": "getResponse", "taskUUID": u}], lambda: len(client.errors_for(u)) >= 2)
    assert client.errors_for(u)[-1]["code"] == "invalidImage"
    assert all("data" not in f for f in client.frames[start:])


# ---- outputs ---------------------------------------------------------------


async def test_all_output_types_in_one_request(client: WireClient):
    task = inference(outputType=["URL", "base64Data", "dataURI"], numberResults=2, seed=1, includeCost=True)
    items = await client.run(task)
    await client.ping()
    assert len(client.data_for(task["taskUUID"])) == 2
    for item in items:
        assert item["taskType"] == "imageInference"
        assert item["imageURL"].startswith("http://127.0.0.1:") and item["imageURL"].endswith(".png")
        raw = decode_b64(item)
        assert raw.startswith(PNG_MAGIC)
        assert item["imageDataURI"] == "data:image/png;base64," + item["imageBase64Data"]
        assert isinstance(item["cost"], (int, float)) and not isinstance(item["cost"], bool)
        assert item["NSFWContent"] is False
        assert not {"code", "error", "errorId"} & set(item)
        assert Image.open(io.BytesIO(raw)).size == (64, 64)
    assert items[0]["imageUUID"] != items[1]["imageUUID"]


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("JPG", lambda b: b[:3] == b"\xff\xd8\xff"),
        ("WEBP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
        ("PNG", lambda b: b[:8] == PNG_MAGIC),
    ],
)
async def test_output_format(client: WireClient, fmt: str, check: Callable[[bytes], bool]):
    task = inference(outputType=["base64Data", "dataURI", "URL"], outputFormat=fmt)
    (item,) = await client.run(task)
    assert check(decode_b64(item)), decode_b64(item)[:16]
    mime = {"JPG": "image/jpeg", "WEBP": "image/webp", "PNG": "image/png"}[fmt]
    assert item["imageDataURI"].startswith(f"data:{mime};base64,")
    assert item["imageURL"].endswith({"JPG": ".jpg", "WEBP": ".webp", "PNG": ".png"}[fmt])


async def test_large_results_split_under_one_mib(client: WireClient):
    # Three 256×256 noise PNGs, each as base64Data and dataURI: ~420 kB per
    # item, ~1.26 MB together, so they cannot share one frame under 1 MiB.
    task = inference(width=256, height=256, steps=1, numberResults=3, outputType=["base64Data", "dataURI"])
    u, start = task["taskUUID"], len(client.frames)
    items = await client.run(task)
    assert len(items) == 3
    frames = [i for i, f in enumerate(client.frames) if i >= start and any(d.get("taskUUID") == u for d in f.get("data", []))]
    assert len(frames) >= 2
    assert all(client.sizes[i] < 1_048_576 for i in frames), [client.sizes[i] for i in frames]


async def test_default_output_is_url_only_without_cost(client: WireClient):
    (item,) = await client.run(inference())
    assert "imageURL" in item
    assert "imageBase64Data" not in item and "imageDataURI" not in item and "cost" not in item
    assert isinstance(item["seed"], int)


# ---- determinism -----------------------------------------------------------


async def test_same_seed_same_bytes_other_seed_other_bytes(client: WireClient):
    a = (await client.run(inference(seed=1234, outputType="base64Data")))[0]
    b = (await client.run(inference(seed=1234, outputType="base64Data")))[0]
    c = (await client.run(inference(seed=1235, outputType="base64Data")))[0]
    assert a["imageBase64Data"] == b["imageBase64Data"]
    assert a["imageUUID"] != b["imageUUID"]
    assert a["seed"] == b["seed"] == 1234 and c["seed"] == 1235
    assert a["imageBase64Data"] != c["imageBase64Data"]


async def test_number_results_seeds_follow_on(client: WireClient):
    task = inference(seed=10, numberResults=3, outputType="base64Data")
    items = await client.run(task)
    assert sorted(i["seed"] for i in items) == [10, 11, 12]
    assert len({i["imageBase64Data"] for i in items}) == 3
    assert len({i["imageUUID"] for i in items}) == 3
    # The seed an item reports reproduces it on its own.  Not byte for byte:
    # a batch of 3 runs the UNet at another batch size, and float sums then
    # differ in the last bit (seen: one pixel channel off by 1 for this prompt).
    (single,) = await client.run(inference(seed=11, outputType="base64Data"))
    alone = np.asarray(Image.open(io.BytesIO(decode_b64(single)))).astype(int)
    batched = np.asarray(Image.open(io.BytesIO(decode_b64(next(i for i in items if i["seed"] == 11))))).astype(int)
    assert np.abs(alone - batched).max() <= 2


async def test_seed_chosen_when_absent(client: WireClient):
    (item,) = await client.run(inference())
    assert isinstance(item["seed"], int) and not isinstance(item["seed"], bool)
    assert item["seed"] >= 0


# ---- delivery --------------------------------------------------------------


async def test_sync_delivery_exact_item_count(client: WireClient):
    task = inference(numberResults=3, deliveryMethod="sync")
    u = task["taskUUID"]
    await client.run(task)
    await client.ping()
    items = client.data_for(u)
    assert len(items) == 3
    assert all(i["taskType"] == "imageInference" and i["imageUUID"] and "status" not in i for i in items)
    assert client.errors_for(u) == []


async def test_sync_is_default_delivery(client: WireClient):
    task = inference(numberResults=2)
    await client.run(task)
    await client.ping()
    assert len(client.data_for(task["taskUUID"])) == 2


async def test_async_delivery_ack_then_get_response(client: WireClient):
    task = inference(deliveryMethod="async", numberResults=2, steps=4, width=256, height=256)
    u = task["taskUUID"]
    await client.request([task], lambda: bool(client.data_for(u) or client.errors_for(u)))
    first = [f for f in client.frames if any(i.get("taskUUID") == u for i in f.get("data", []))][0]
    assert first == {"data": [{"taskType": "imageInference", "taskUUID": u}]}

    answers = await client.poll(u)
    done = [a for a in answers if a.get("status") == "success"]
    processing = [a for a in answers if a.get("status") == "processing"]
    # Two 256×256 images take far longer than one round trip: the first poll,
    # sent right after the ack, finds the task still running.
    assert answers[0] == {"taskType": "imageInference", "taskUUID": u, "status": "processing"}, answers
    assert len(done) == 2, answers
    assert all(a == {"taskType": "imageInference", "taskUUID": u, "status": "processing"} for a in processing)
    assert len(processing) + len(done) == len(answers), answers
    for item in done:
        assert item["taskType"] == "imageInference" and item["taskUUID"] == u
        assert item["imageUUID"] and item["imageURL"]
    # Async results are never pushed: the only item for u outside getResponse is the ack.
    await client.ping()
    pushed = [i for i in client.data_for(u) if "status" not in i]
    assert pushed == [{"taskType": "imageInference", "taskUUID": u}]

    # getTaskDetails: the request as sent, the response items.
    await client.request(
        [{"taskType": "getTaskDetails", "taskUUID": u}],
        lambda: any(i.get("taskType") == "getTaskDetails" for i in client.data_for(u)),
    )
    details = next(i for i in client.data_for(u) if i.get("taskType") == "getTaskDetails")
    assert details["taskUUID"] == u
    assert details["request"] == [task]
    assert sorted(r["imageUUID"] for r in details["response"]) == sorted(d["imageUUID"] for d in done)


async def test_async_task_refused_up_front_gets_no_ack(client: WireClient):
    task = inference(deliveryMethod="async", model="civitai:999999@1")
    err = await client.error_of(task)
    assert err["code"] == "modelNotFound"
    await client.ping()
    assert client.data_for(task["taskUUID"]) == []


async def test_get_response_unknown_uuid(client: WireClient):
    u = new_uuid()
    err = await client.error_of({"taskType": "getResponse", "taskUUID": u})
    assert err["code"] == "taskNotFound"
    assert err["taskUUID"] == u
    assert err["taskType"] == "getResponse"
    err = await client.error_of({"taskType": "getTaskDetails", "taskUUID": u})
    assert err["code"] == "taskNotFound"
    assert err["taskType"] == "getTaskDetails"


async def test_get_task_details_sync_task(client: WireClient):
    task = inference(seed=3)
    (item,) = await client.run(task)
    u = task["taskUUID"]
    await client.request(
        [{"taskType": "getTaskDetails", "taskUUID": u}],
        lambda: any(i.get("taskType") == "getTaskDetails" for i in client.data_for(u)),
    )
    details = next(i for i in client.data_for(u) if i.get("taskType") == "getTaskDetails")
    assert set(details) == {"taskType", "taskUUID", "request", "response"}
    assert details["request"] == [task]
    assert [r["imageUUID"] for r in details["response"]] == [item["imageUUID"]]


# ---- teams -----------------------------------------------------------------


async def test_cross_team_isolation(client: WireClient, wisp_server: RunningServer):
    task = inference(seed=7)
    u = task["taskUUID"]
    (mine,) = await client.run(task)

    other = await open_client(wisp_server.ws_url)
    try:
        assert "data" in await other.authenticate(wisp_server.create_key("other"))
        for look in ("getResponse", "getTaskDetails"):
            err = await other.error_of({"taskType": look, "taskUUID": u})
            assert err["code"] == "taskNotFound", err
            assert err["taskUUID"] == u
            missing = await other.error_of({"taskType": look, "taskUUID": new_uuid()})
            assert {k: v for k, v in err.items() if k != "taskUUID"} == {
                k: v for k, v in missing.items() if k != "taskUUID"
            }
        # The other team may use the same taskUUID: no conflict.
        (theirs,) = await other.run(dict(task))
        assert "imageUUID" in theirs, theirs
        assert theirs["imageUUID"] != mine["imageUUID"]
    finally:
        await other.ws.close()
    # And team default still sees its own result, not the other team's.
    answers = await client.poll(u)
    assert [a["imageUUID"] for a in answers] == [mine["imageUUID"]]


# ---- sessions --------------------------------------------------------------


async def test_resume_delivers_buffered_result(wisp_server: RunningServer):
    first = await open_client(wisp_server.ws_url)
    reply = await first.authenticate(wisp_server.key)
    session = reply["data"][0]["connectionSessionUUID"]
    task = inference(steps=4, width=256, height=256, seed=21)
    u = task["taskUUID"]
    await first.send([task])
    await first.ws.close()
    assert not first.data_for(u)

    # Wait, from another session of the team, until the result exists: it was
    # produced while session had no socket, so it can only be in the buffer.
    watcher = await open_client(wisp_server.ws_url)
    try:
        await watcher.authenticate(wisp_server.key)
        answers = await watcher.poll(u)
        (done,) = [a for a in answers if a.get("status") == "success"]
    finally:
        await watcher.ws.close()

    second = await open_client(wisp_server.ws_url)
    try:
        reply = await second.authenticate(wisp_server.key, session)
        assert second.frames[0] is reply  # the auth reply comes first, then the buffer
        assert reply == {"data": [{"taskType": "authentication", "connectionSessionUUID": session}]}
        await second.until(lambda: bool(second.data_for(u) or second.errors_for(u)))
        await second.ping()
        (item,) = second.data_for(u)
        assert item["imageUUID"] == done["imageUUID"] and item["seed"] == 21
        assert "status" not in item
        assert second.errors_for(u) == []
    finally:
        await second.ws.close()

    # The buffer is emptied by delivery: a second resume gets nothing again.
    third = await open_client(wisp_server.ws_url)
    try:
        reply = await third.authenticate(wisp_server.key, session)
        assert reply["data"][0]["connectionSessionUUID"] == session
        await third.ping()
        assert third.data_for(u) == []
    finally:
        await third.ws.close()


async def test_resume_while_running_result_arrives_on_new_socket(wisp_server: RunningServer):
    first = await open_client(wisp_server.ws_url)
    session = (await first.authenticate(wisp_server.key))["data"][0]["connectionSessionUUID"]
    task = inference(steps=4, width=256, height=256, seed=22)
    u = task["taskUUID"]
    await first.send([task])
    await first.ws.close()
    second = await open_client(wisp_server.ws_url)
    try:
        reply = await second.authenticate(wisp_server.key, session)
        assert reply["data"][0]["connectionSessionUUID"] == session
        await second.until(lambda: bool(second.data_for(u) or second.errors_for(u)))
        await second.ping()
        assert len(second.data_for(u)) == 1 and second.data_for(u)[0]["seed"] == 22
    finally:
        await second.ws.close()


async def test_resume_with_other_teams_session_gets_new_session(wisp_server: RunningServer, client: WireClient):
    session = client.frames[0]["data"][0]["connectionSessionUUID"]
    other = await open_client(wisp_server.ws_url)
    try:
        reply = await other.authenticate(wisp_server.create_key("other"), session)
        fresh = reply["data"][0]["connectionSessionUUID"]
        assert fresh != session
        uuid.UUID(fresh)
    finally:
        await other.ws.close()


async def test_resume_unknown_session_gets_new_session(raw: WireClient, wisp_server: RunningServer):
    made_up = new_uuid()
    reply = await raw.authenticate(wisp_server.key, made_up)
    assert reply["data"][0]["connectionSessionUUID"] != made_up


async def test_reconnect_as_new_session_conflict_then_get_response(wisp_server: RunningServer):
    first = await open_client(wisp_server.ws_url)
    await first.authenticate(wisp_server.key)
    task = inference(steps=4, width=128, height=128, seed=5)
    u = task["taskUUID"]
    await first.send([task])
    await first.ws.close()

    second = await open_client(wisp_server.ws_url)
    try:
        reply = await second.authenticate(wisp_server.key)  # a new session, as the 0.5 SDK does
        assert "data" in reply
        err = await second.error_of(task)
        assert err["code"] == "conflictTaskUUID"
        assert err["taskUUID"] == u
        answers = await second.poll(u)
        done = [a for a in answers if a.get("status") == "success"]
        assert len(done) == 1 and done[0]["seed"] == 5 and done[0]["imageUUID"], answers
    finally:
        await second.ws.close()


# ---- images in -------------------------------------------------------------


async def test_image_upload_then_img2img_and_inpaint(client: WireClient):
    src = png_bytes((96, 80), (30, 120, 220))
    upload = {
        "taskType": "imageUpload",
        "taskUUID": new_uuid(),
        "image": "data:image/png;base64," + base64.b64encode(src).decode(),
    }
    (up,) = await client.run(upload)
    assert up["taskType"] == "imageUpload" and up["taskUUID"] == upload["taskUUID"]
    uuid.UUID(up["imageUUID"])
    assert up["imageURL"].endswith(f"/images/{up['imageUUID']}.png")

    img2img = inference(seedImage=up["imageUUID"], strength=0.5, outputType="base64Data", width=64, height=72)
    (out,) = await client.run(img2img)
    assert "code" not in out, out
    assert Image.open(io.BytesIO(decode_b64(out))).size == (64, 72)

    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (0, 0, 48, 80))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    inpaint = inference(
        seedImage=up["imageUUID"],
        maskImage="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
        outputType="base64Data",
        width=80,
        height=64,
    )
    (painted,) = await client.run(inpaint)
    assert "code" not in painted, painted
    assert Image.open(io.BytesIO(decode_b64(painted))).size == (80, 64)


async def test_image_upload_bare_base64_and_garbage(client: WireClient):
    (up,) = await client.run({"taskType": "imageUpload", "taskUUID": new_uuid(), "image": base64.b64encode(png_bytes((8, 8))).decode()})
    assert up["imageUUID"] and "code" not in up
    bad = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": base64.b64encode(b"not an image").decode()}
    err = await client.error_of(bad)
    assert err["code"] == "invalidImage"
    assert err["taskType"] == "imageUpload"


async def test_unknown_seed_image_uuid(client: WireClient):
    task = inference(seedImage=new_uuid(), strength=0.5)
    err = await client.error_of(task)
    assert err["code"] == "imageNotFound"
    assert err["parameter"] == "seedImage"


async def test_mask_without_seed_image(client: WireClient):
    task = inference(maskImage=base64.b64encode(png_bytes((64, 64), 255, "L")).decode())
    err = await client.error_of(task)
    assert err["code"] == "missingParameter"
    assert err["parameter"] == "seedImage"


# ---- limits (a second server with small limits) ----------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("wisp-small") / "data",
        env={
            "WISP_MAX_FRAME_BYTES": "4096",
            "WISP_MAX_TASKS_PER_FRAME": "5",
            "WISP_MAX_IN_FLIGHT": "2",
            "WISP_IDLE_TIMEOUT": "2",
            "WISP_RESUME_TTL": "1",
            "WISP_TASK_RETENTION": "1",
            # No inference runs here (uploads need no model): skip building it.
            "WISP_WARM_BUILTIN": "0",
        },
    )
    try:
        yield server
    finally:
        stop_server(server)


async def test_frame_too_large(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    try:
        await c.authenticate(small_server.key)
        task = inference(negativePrompt="blurry, " * 1250)
        payload = json.dumps([task])
        assert 9_000 < len(payload) < 12_000
        err = await c.error_of(task)
        assert err["code"] == "frameTooLarge"
        assert err["taskUUID"] == task["taskUUID"]
        assert err["taskType"] == "imageInference"
        assert await c.ping() == {"data": [{"taskType": "ping", "pong": True}]}
        # Nothing ran: the taskUUID is still free.
        err = await c.error_of({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        assert err["code"] == "taskNotFound"
    finally:
        await c.ws.close()


async def test_too_many_tasks(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    try:
        await c.authenticate(small_server.key)
        await c.send([{"taskType": "ping", "ping": True}] * 6)
        frame = await c.recv()
        assert list(frame) == ["errors"]
        assert frame["errors"] and {e["code"] for e in frame["errors"]} == {"tooManyTasks"}
        assert c.pongs() == []
        # Five is fine.
        await c.send([{"taskType": "ping", "ping": True}] * 5)
        await c.until(lambda: len(c.pongs()) >= 5)
        assert len(c.pongs()) == 5
    finally:
        await c.ws.close()


def upload_task(data: bytes | None = None) -> dict[str, Any]:
    image = data if data is not None else png_bytes((16, 16))
    return {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": base64.b64encode(image).decode()}


async def test_in_flight_limit_per_session(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    try:
        await c.authenticate(small_server.key)
        tasks = [upload_task() for _ in range(3)]
        await c.request(tasks, lambda: all(c.data_for(t["taskUUID"]) or c.errors_for(t["taskUUID"]) for t in tasks))
        assert [bool(c.data_for(t["taskUUID"])) for t in tasks] == [True, True, False]
        (err,) = c.errors_for(tasks[2]["taskUUID"])
        assert err["code"] == "tooManyTasksInFlight"
        assert err["taskType"] == "imageUpload"
        # The refused task claimed nothing: it may be sent again.
        assert "imageUUID" in (await c.run(tasks[2]))[0]
        # Failed tasks give their slot back too.
        bad = [upload_task(b"not an image") for _ in range(2)]
        await c.request(bad, lambda: all(c.errors_for(t["taskUUID"]) for t in bad))
        assert [c.errors_for(t["taskUUID"])[0]["code"] for t in bad] == ["invalidImage", "invalidImage"]
        good = [upload_task() for _ in range(2)]
        await c.request(good, lambda: all(c.data_for(t["taskUUID"]) or c.errors_for(t["taskUUID"]) for t in good))
        assert all(c.data_for(t["taskUUID"]) and not c.errors_for(t["taskUUID"]) for t in good)
    finally:
        await c.ws.close()


async def test_idle_socket_is_closed(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    await c.authenticate(small_server.key)
    started = time.monotonic()
    await asyncio.wait_for(c.ws.wait_closed(), 10)
    assert 1.5 < time.monotonic() - started < 8
    assert c.ws.close_code == 1000


async def test_pings_keep_a_socket_open(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    try:
        await c.authenticate(small_server.key)
        for _ in range(4):  # 4 s in all, twice the idle timeout
            await asyncio.sleep(1)
            await c.ping()
        assert c.ws.close_code is None
    finally:
        await c.ws.close()


async def test_resume_window_expires(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    session = (await c.authenticate(small_server.key))["data"][0]["connectionSessionUUID"]
    await c.ws.close()
    await asyncio.sleep(1.5)
    c = await open_client(small_server.ws_url)
    try:
        fresh = (await c.authenticate(small_server.key, session))["data"][0]["connectionSessionUUID"]
        assert fresh != session
    finally:
        await c.ws.close()


async def test_task_retention_expires(small_server: RunningServer):
    c = await open_client(small_server.ws_url)
    try:
        await c.authenticate(small_server.key)
        task = upload_task()
        (first,) = await c.run(task)
        assert "imageUUID" in first
        await asyncio.sleep(1.5)
        err = await c.error_of({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        assert err["code"] == "taskNotFound"
        # Forgotten, so the taskUUID is free again.
        (second,) = await c.run(task)
        assert second["imageUUID"] != first["imageUUID"]
    finally:
        await c.ws.close()
