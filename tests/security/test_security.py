"""Security checks, collected in one place, against real server processes.

One strict server (no private URLs, a small frame limit, 3 failed logins per
address per minute) and the shared permissive test server.  Each test names
the property it defends; several repeat, from an attacker's side, behaviour
that other test modules check from a client's side.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import uuid
import zlib

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import RunningServer, start_server, stop_server, wisp_cli


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("strict") / "data",
        allow_private=False,
        env={"WISP_MAX_FRAME_BYTES": "65536", "WISP_AUTH_MAX_FAILURES": "3", "WISP_WARM_BUILTIN": "0"},
    )
    yield server
    stop_server(server)


async def session(server: RunningServer, key: str | None = None):
    ws = await connect(server.ws_url, max_size=None)
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key or server.key}]))
    reply = json.loads(await ws.recv())
    assert "data" in reply, reply
    return ws


async def answer(ws, task: dict) -> dict:
    task.setdefault("taskUUID", str(uuid.uuid4()))
    await ws.send(json.dumps([task]))
    while True:
        frame = json.loads(await ws.recv())
        parts = frame.get("data", []) + frame.get("errors", [])
        if any(p.get("taskUUID") == task["taskUUID"] for p in parts):
            return frame


def bomb_png(side: int = 40_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


async def test_other_teams_results_look_missing(wisp_server):
    mine = await session(wisp_server)
    stranger = await session(wisp_server, wisp_server.create_key("intruders"))
    try:
        task_uuid = str(uuid.uuid4())
        done = await answer(mine, {"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1",
                                   "positivePrompt": "secret", "width": 64, "height": 64, "steps": 1})
        assert "data" in done
        for kind in ("getResponse", "getTaskDetails"):
            foreign = await answer(stranger, {"taskType": kind, "taskUUID": task_uuid})
            missing = await answer(stranger, {"taskType": kind, "taskUUID": str(uuid.uuid4())})
            assert foreign["errors"][0]["code"] == missing["errors"][0]["code"] == "taskNotFound"
            assert foreign["errors"][0]["message"] == missing["errors"][0]["message"]
    finally:
        await mine.close()
        await stranger.close()


async def test_another_teams_air_cannot_be_overwritten(wisp_server, file_server):
    from tests.fixtures.bad_files import write_sd1_kohya_lora

    owner_source = "sec" + uuid.uuid4().hex[:8]
    assert wisp_cli("sources", "create", owner_source, "--data-dir", str(wisp_server.data_dir)).returncode == 0
    folder = file_server.root / uuid.uuid4().hex
    folder.mkdir()
    url = file_server.url(write_sd1_kohya_lora(folder))
    stranger = await session(wisp_server, wisp_server.create_key("squatters"))
    try:
        frame = await answer(stranger, {"taskType": "modelUpload", "air": f"{owner_source}:1@1", "category": "lora",
                                        "architecture": "sd1x", "downloadURL": url, "uniqueIdentifier": "x", "name": "n", "version": "1"})
        assert frame["errors"][0]["code"] == "sourceNotAllowed"
    finally:
        await stranger.close()


@pytest.mark.parametrize("target", ["http://127.0.0.1:1/x.png", "http://localhost/x.png", "http://169.254.169.254/latest/meta-data",
                                    "http://[::1]/x.png", "http://10.0.0.7/x.png", "file:///etc/passwd", "gopher://example.com/"])
async def test_ssrf_targets_are_refused(strict, target):
    ws = await session(strict)
    try:
        frame = await answer(ws, {"taskType": "imageUpload", "image": target})
        assert frame["errors"][0]["code"] in ("urlNotAllowed", "invalidImage"), frame
        if target.startswith("http"):
            assert frame["errors"][0]["code"] == "urlNotAllowed"
    finally:
        await ws.close()


def test_no_path_traversal_over_http(wisp_server):
    secrets = ["wisp.db", "../wisp.db", "..%2Fwisp.db", "%2e%2e/wisp.db", "..\\wisp.db"]
    with socket.create_connection(("127.0.0.1", wisp_server.port)) as sock:
        for prefix in ("/images/", "/static/", "/v1/files/", "/"):
            for name in secrets:
                sock.sendall(f"GET {prefix}{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
                status = int(head.split(b" ", 2)[1])
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += sock.recv(65536)
                assert status in (404, 405), (prefix, name, status)
                assert b"SQLite format" not in body


async def test_traversal_in_names_and_airs(wisp_server):
    ws = await session(wisp_server)
    try:
        for bad in ("../../x:1@1", "a:../x@1", "a:1@../../etc", "A:1@1", "a:1@1/.."):
            frame = await answer(ws, {"taskType": "modelUpload", "air": bad, "category": "lora", "architecture": "sd1x",
                                      "downloadURL": "http://127.0.0.1:9/x", "uniqueIdentifier": "u", "name": "n", "version": "1"})
            assert frame["errors"][0]["code"] == "invalidParameter" and frame["errors"][0]["parameter"] == "air", bad
        frame = await answer(ws, {"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "x",
                                  "width": 64, "height": 64, "steps": 4, "seedImage": "../../wisp.db"})
        assert frame["errors"][0]["code"] == "invalidImage"
    finally:
        await ws.close()


async def test_oversize_frames_and_decompression_bombs(strict):
    ws = await session(strict)
    try:
        task_uuid = str(uuid.uuid4())
        big = [{"taskType": "imageUpload", "taskUUID": task_uuid, "image": "A" * 100_000}]
        await ws.send(json.dumps(big))
        frame = json.loads(await ws.recv())
        assert frame["errors"][0]["code"] == "frameTooLarge" and frame["errors"][0]["taskUUID"] == task_uuid
        bomb = "data:image/png;base64," + base64.b64encode(bomb_png()).decode()
        frame = await answer(ws, {"taskType": "imageUpload", "image": bomb})
        assert frame["errors"][0]["code"] == "invalidImage"
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert json.loads(await ws.recv())["data"][0]["pong"] is True  # the socket survived both
    finally:
        await ws.close()


async def test_key_guessing_is_rate_limited(strict):
    codes = []
    for attempt in range(5):
        async with connect(strict.ws_url) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": f"wisp_guess_{attempt}"}]))
            codes.append(json.loads(await ws.recv())["errors"][0]["code"])
    assert codes == ["invalidApiKey"] * 3 + ["authRateLimited"] * 2
    async with httpx.AsyncClient() as client:
        refused = await client.post(f"{strict.http_url}/v1", json=[{"taskType": "ping", "ping": True}],
                                    headers={"Authorization": f"Bearer {strict.key}"})
    assert refused.status_code == 429  # even the right key waits out the window from this address


def test_keys_are_stored_hashed(wisp_server):
    assert wisp_server.key.encode() not in (wisp_server.data_dir / "wisp.db").read_bytes()
