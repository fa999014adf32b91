"""Plain-HTTP routes on the WebSocket port: health, ``POST /v1``, image files, webhooks."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import RunningServer
from tests.server.test_raw_protocol import PNG_MAGIC, WireClient, inference, open_client

TIMEOUT = 60.0


@pytest.fixture
async def http(wisp_server: RunningServer):
    async with httpx.AsyncClient(base_url=wisp_server.http_url, timeout=TIMEOUT, trust_env=False) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def raw_get(server: RunningServer, target: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ---- health ---------------------------------------------------------------


async def test_head_healthz(http: httpx.AsyncClient):
    r = await http.head("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == b""


async def test_healthz(http: httpx.AsyncClient):
    r = await http.get("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["status"] == "ok"


# ---- POST /v1 ---------------------------------------------------------------


async def test_post_tasks(http: httpx.AsyncClient, wisp_server: RunningServer):
    task = inference(seed=4, numberResults=2, outputType=["URL", "base64Data"])
    r = await http.post("/v1", json=[task], headers=bearer(wisp_server.key))
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["data"], body
    items = body["data"]
    assert len(items) == 2
    assert sorted(i["seed"] for i in items) == [4, 5]
    for item in items:
        assert item["taskType"] == "imageInference"
        assert item["taskUUID"] == task["taskUUID"]
        assert base64.b64decode(item["imageBase64Data"]).startswith(PNG_MAGIC)
        assert item["imageURL"].startswith(wisp_server.http_url + "/images/")


async def test_post_shares_task_store_with_sockets(http: httpx.AsyncClient, wisp_server: RunningServer):
    task = inference()
    r = await http.post("/v1", json=[task], headers=bearer(wisp_server.key))
    (item,) = r.json()["data"]
    # Same team, same taskUUID again: conflict, by HTTP or by socket.
    r = await http.post("/v1", json=[task], headers=bearer(wisp_server.key))
    assert r.status_code == 200
    assert [e["code"] for e in r.json()["errors"]] == ["conflictTaskUUID"]
    r = await http.post("/v1", json=[{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], headers=bearer(wisp_server.key))
    (answer,) = r.json()["data"]
    assert answer["imageUUID"] == item["imageUUID"] and answer["status"] == "success"


async def test_post_errors_per_task(http: httpx.AsyncClient, wisp_server: RunningServer):
    good, bad = inference(), inference(width=63)
    r = await http.post("/v1", json=[good, bad, {"taskType": "ping", "ping": True}], headers=bearer(wisp_server.key))
    assert r.status_code == 200
    body = r.json()
    assert [i["taskUUID"] for i in body["data"] if i.get("taskType") == "imageInference"] == [good["taskUUID"]]
    assert {"taskType": "ping", "pong": True} in body["data"]
    (err,) = body["errors"]
    assert (err["code"], err["parameter"], err["taskUUID"]) == ("invalidParameter", "width", bad["taskUUID"])


async def test_post_not_json(http: httpx.AsyncClient, wisp_server: RunningServer):
    r = await http.post("/v1", content=b"{nope", headers=bearer(wisp_server.key))
    assert r.status_code in (200, 400)
    assert [e["code"] for e in r.json()["errors"]] == ["invalidFrame"]


async def test_post_bad_key(http: httpx.AsyncClient):
    r = await http.post("/v1", json=[inference()], headers=bearer("wrong-key"))
    assert r.status_code == 401
    assert [e["code"] for e in r.json()["errors"]] == ["invalidApiKey"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}], ids=["none", "basic", "bare-bearer"])
async def test_post_missing_key(http: httpx.AsyncClient, headers: dict[str, str]):
    r = await http.post("/v1", json=[inference()], headers=headers)
    assert r.status_code == 401
    assert [e["code"] for e in r.json()["errors"]] == ["missingApiKey"]


async def test_get_v1_without_upgrade(http: httpx.AsyncClient):
    r = await http.get("/v1")
    assert r.status_code == 405


async def test_post_keeps_connection_alive(wisp_server: RunningServer):
    # Two requests over one keep-alive connection both get answered.
    async with httpx.AsyncClient(base_url=wisp_server.http_url, timeout=TIMEOUT, trust_env=False) as c:
        for _ in range(2):
            r = await c.post("/v1", json=[{"taskType": "ping", "ping": True}], headers=bearer(wisp_server.key))
            assert r.json() == {"data": [{"taskType": "ping", "pong": True}]}
            r = await c.get("/healthz")
            assert r.status_code == 200


async def test_post_invalid_utf8_in_a_string(http: httpx.AsyncClient, wisp_server: RunningServer):
    r = await http.post("/v1", content=b'[{"taskType": "ping", "note": "\xff"}]', headers=bearer(wisp_server.key))
    assert r.status_code in (200, 400), r.text
    assert [e["code"] for e in r.json()["errors"]] == ["invalidFrame"]


# ---- image files --------------------------------------------------------------


async def test_image_url_serves_the_image(http: httpx.AsyncClient, wisp_server: RunningServer):
    task = inference(outputType=["URL", "base64Data"])
    (item,) = (await http.post("/v1", json=[task], headers=bearer(wisp_server.key))).json()["data"]
    r = await http.get(item["imageURL"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC)
    assert r.content == base64.b64decode(item["imageBase64Data"])
    assert item["imageURL"].endswith(f"/images/{item['imageUUID']}.png")


async def test_head_image_url(http: httpx.AsyncClient, wisp_server: RunningServer):
    (item,) = (await http.post("/v1", json=[inference()], headers=bearer(wisp_server.key))).json()["data"]
    r = await http.head(item["imageURL"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["content-length"]) == len((await http.get(item["imageURL"])).content)
    assert r.content == b""


async def test_jpg_image_url_content_type(http: httpx.AsyncClient, wisp_server: RunningServer):
    task = inference(outputFormat="JPG")
    (item,) = (await http.post("/v1", json=[task], headers=bearer(wisp_server.key))).json()["data"]
    r = await http.get(item["imageURL"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    "target",
    [
        "/images/../wisp.db",
        "/images/%2e%2e/wisp.db",
        "/images/..%2Fwisp.db",
        "/images/nonexistent.png",
        f"/images/{uuid.UUID(int=0)}.png",
        "/images/",
        "/nope",
        "/v2",
    ],
)
async def test_not_found(wisp_server: RunningServer, target: str):
    assert (wisp_server.data_dir / "wisp.db").exists()
    status, body = await raw_get(wisp_server, target)
    assert status == 404
    assert b"SQLite" not in body


# ---- webhooks -----------------------------------------------------------------


class Hook:
    """A loopback HTTP server in a thread that records every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with hook.lock:
                    hook.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    async def wait(self, count: int, timeout: float = TIMEOUT) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.posts) >= count:
                    return list(self.posts)
            await asyncio.sleep(0.05)
        pytest.fail(f"webhook got {len(self.posts)} posts, wanted {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
async def client(wisp_server: RunningServer):
    c = await open_client(wisp_server.ws_url)
    try:
        assert "data" in await c.authenticate(wisp_server.key)
        yield c
    finally:
        await c.ws.close()


async def test_webhook_receives_async_results(client: WireClient, hook: Hook):
    task = inference(deliveryMethod="async", numberResults=2, seed=8, webhookURL=hook.url + "/hook?x=1")
    u = task["taskUUID"]
    await client.request([task], lambda: bool(client.data_for(u) or client.errors_for(u)))
    assert client.data()[-1] == {"taskType": "imageInference", "taskUUID": u}
    posts = await hook.wait(2)
    await asyncio.sleep(0.3)  # nothing more comes
    assert len(hook.posts) == 2
    items = []
    for path, headers, body in posts:
        assert path == "/hook?x=1"
        assert headers["content-type"] == "application/json"
        obj = json.loads(body)
        assert list(obj) == ["data"] and len(obj["data"]) == 1, obj
        items.append(obj["data"][0])
    assert sorted(i["seed"] for i in items) == [8, 9]
    for item in items:
        assert item["taskType"] == "imageInference" and item["taskUUID"] == u
        uuid.UUID(item["imageUUID"])
        assert item["imageURL"].endswith(f"/images/{item['imageUUID']}.png")
    # The same images getResponse reports.
    answers = await client.poll(u)
    assert sorted(a["imageUUID"] for a in answers if a.get("status") == "success") == sorted(i["imageUUID"] for i in items)


async def test_webhook_receives_failure(client: WireClient, hook: Hook):
    task = inference(
        deliveryMethod="async",
        seedImage=base64.b64encode(b"not an image").decode(),
        strength=0.5,
        webhookURL=hook.url + "/fail",
    )
    await client.send([task])
    ((path, _, body),) = await hook.wait(1)
    assert path == "/fail"
    obj = json.loads(body)
    assert list(obj) == ["errors"]
    (err,) = obj["errors"]
    assert (err["code"], err["taskUUID"]) == ("invalidImage", task["taskUUID"])
    # The failure also reaches the socket, routed by its taskUUID.
    await client.until(lambda: bool(client.errors_for(task["taskUUID"])))
    assert client.errors_for(task["taskUUID"])[0]["code"] == "invalidImage"
