"""Issue 18's operational gaps: revoked keys on open sockets, a stop during a long step, a journal that
kept every base64 image, two servers on one data dir, request smuggling framing, and the auth limiter.

Real ``wisp serve`` subprocesses throughout; the journal's vacuum is checked on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.registry.db import Database
from server.journal import TaskJournal
from tests.conftest import WISP, ROOT, RunningServer, start_server, stop_server, wisp_cli

MODEL = "wisp:tiny-sd15@1"


def new_uuid() -> str:
    return str(uuid.uuid4())


async def authenticated(server: RunningServer, key: str | None = None, session: str | None = None):
    ws = await connect(server.ws_url, max_size=None)
    auth: dict[str, Any] = {"taskType": "authentication", "apiKey": key or server.key}
    if session:
        auth["connectionSessionUUID"] = session
    await ws.send(json.dumps([auth]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert "data" in reply, reply
    return ws, reply["data"][0]["connectionSessionUUID"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    running = start_server(tmp_path_factory.mktemp("ops") / "data",
                           env={"WISP_WARM_BUILTIN": "0", "WISP_REVOCATION_CHECK": "0.5", "WISP_AUTH_MAX_FAILURES": "3"})
    yield running
    stop_server(running)


# ---- 7. revocation reaches open sockets ---------------------------------------------


async def test_revoking_a_key_closes_its_open_sockets_and_forgets_their_sessions(server: RunningServer):
    key = server.create_key("revoked-team")
    other = server.create_key("revoked-team")
    ws, session = await authenticated(server, key)
    bystander, _ = await authenticated(server)  # another team's socket is left alone
    try:
        assert wisp_cli("keys", "revoke", key, "--data-dir", str(server.data_dir)).returncode == 0
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(100):
                await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
                await asyncio.wait_for(ws.recv(), 5)
                await asyncio.sleep(0.1)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "API key revoked"
        # The session cannot be taken back, even by a live key of the same team.
        again, resumed = await authenticated(server, other, session=session)
        await again.close()
        assert resumed != session
        await bystander.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert json.loads(await asyncio.wait_for(bystander.recv(), 5))["data"][0]["pong"] is True
    finally:
        await bystander.close()


# ---- 15. the failed-authentication limiter counts attempts before checking them ------------


async def test_concurrent_wrong_keys_from_one_address_are_stopped_at_the_limit(server: RunningServer):
    async def attempt() -> str:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": "wisp_" + "x" * 43}]))
            return json.loads(await asyncio.wait_for(ws.recv(), 20))["errors"][0]["code"]

    codes = await asyncio.gather(*(attempt() for _ in range(40)))
    assert codes.count("invalidApiKey") <= 3 and codes.count("authRateLimited") >= 37, codes
    async with httpx.AsyncClient() as http:  # PUT /v1/files from the limited address says so too
        response = await http.put(f"{server.http_url}/v1/files", content=b"x" * 10, headers={"Authorization": "Bearer wisp_nope"})
    assert response.status_code == 429 and response.json()["errors"][0]["code"] == "authRateLimited"


# ---- 11. Content-Length with Transfer-Encoding --------------------------------------


def test_content_length_with_transfer_encoding_is_refused_and_closed(server: RunningServer):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(15)
    try:
        sock.sendall(b"POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the piggy-backed request never ran


# ---- 9. the journal keeps references, not base64 ------------------------------------------


def test_journal_keeps_image_references_and_rebuilds_base64_after_a_restart(tmp_path: Path):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0"})
    task_uuid = new_uuid()
    try:
        async def generate() -> list[dict[str, Any]]:
            ws, _ = await authenticated(running)
            await ws.send(json.dumps([{
                "taskType": "imageInference", "taskUUID": task_uuid, "model": MODEL, "positivePrompt": "x", "width": 128,
                "height": 128, "steps": 1, "numberResults": 2, "seed": 5, "outputType": ["base64Data", "dataURI"],
            }]))
            items: list[dict[str, Any]] = []
            while len(items) < 2:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                assert "errors" not in frame, frame
                items += [i for i in frame["data"] if i.get("taskUUID") == task_uuid]
            await ws.close()
            return items

        items = asyncio.run(generate())
    finally:
        stop_server(running)
    with sqlite3.connect(running.data_dir / "wisp.db") as db:
        (stored,) = db.execute("SELECT items FROM tasks WHERE task_uuid=?", (task_uuid,)).fetchone()
    assert len(stored) < 2000, f"the journal holds {len(stored)} bytes for two small images"
    assert all("imageBase64Data" not in item and "imageDataURI" not in item for item in json.loads(stored))
    running = start_server(running.data_dir, env={"WISP_WARM_BUILTIN": "0"})
    try:
        async def poll() -> list[dict[str, Any]]:
            ws, _ = await authenticated(running)
            await ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": task_uuid}]))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.close()
            return frame["data"]

        again = asyncio.run(poll())
    finally:
        stop_server(running)
    by_uuid = {i["imageUUID"]: i for i in again}
    for item in items:
        rebuilt = by_uuid[item["imageUUID"]]
        assert rebuilt["imageBase64Data"] == item["imageBase64Data"]
        assert rebuilt["imageDataURI"] == item["imageDataURI"]
        assert "wispInlined" not in rebuilt and rebuilt["status"] == "success"


def test_journal_prune_gives_the_space_back(tmp_path: Path):
    db = Database(tmp_path / "wisp.db")
    journal = TaskJournal(db)
    for i in range(50):
        journal.claimed("t", f"00000000-0000-4000-8000-{i:012d}", "imageInference", {"blob": "x" * 200_000})
        journal.finished("t", f"00000000-0000-4000-8000-{i:012d}", "success", [], [])
    journal.close()
    conn = sqlite3.connect(tmp_path / "wisp.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = (tmp_path / "wisp.db").stat().st_size
    journal = TaskJournal(Database(tmp_path / "wisp.db"))
    time.sleep(0.01)
    journal.prune(0.0)
    journal.close()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert full > 5_000_000
    assert (tmp_path / "wisp.db").stat().st_size < full / 10


# ---- 10. one server per data dir ----------------------------------------------------------------


def test_a_second_server_on_the_same_data_dir_refuses_to_start(tmp_path: Path):
    first = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0"})
    try:
        marker = first.data_dir / "tmp" / "upload-in-flight"
        marker.write_bytes(b"partial")
        second = subprocess.run(WISP + ["serve", "--port", "0", "--data-dir", str(first.data_dir)],
                                capture_output=True, text=True, cwd=ROOT, timeout=120, env={**_env(), "WISP_WARM_BUILTIN": "0"})
        assert second.returncode == 1
        assert "is in use by another wisp server" in second.stderr and "Traceback" not in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        assert marker.exists()  # the first server's files were not touched
        assert first.proc.poll() is None
    finally:
        stop_server(first)
    # Once the first has stopped, the data dir is free again.
    again = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0"})
    stop_server(again)


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", "WISP_TORCH_THREADS": "1"}


# ---- 8. SIGTERM while the device is inside a long step ---------------------------------------------


def test_sigterm_during_a_step_longer_than_the_grace_exits_cleanly(tmp_path: Path):
    """One 2048² step takes about a minute on this CPU: far past the 1 s grace and the engine's 10 s wait."""
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_SHUTDOWN_GRACE": "1"})
    task_uuid = new_uuid()
    try:
        async def submit() -> None:
            ws, _ = await authenticated(running)
            warm = new_uuid()  # load the model first, so that the big task starts at once even on a busy machine
            await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": warm, "model": MODEL, "positivePrompt": "x",
                                       "width": 64, "height": 64, "steps": 1}]))
            while json.loads(await asyncio.wait_for(ws.recv(), 60))["data"][0].get("taskUUID") != warm:
                pass
            await ws.send(json.dumps([{
                "taskType": "imageInference", "taskUUID": task_uuid, "model": MODEL, "positivePrompt": "x", "width": 2048,
                "height": 2048, "steps": 1, "deliveryMethod": "async",
            }]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["data"][0]["taskUUID"] == task_uuid
            await asyncio.sleep(3)  # the device is inside the step now
            await ws.close()

        asyncio.run(submit())
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=45) == 0
        assert "still inside a step" in running.log()
    finally:
        stop_server(running)
    with sqlite3.connect(running.data_dir / "wisp.db") as db:
        (errors,) = db.execute("SELECT errors FROM tasks WHERE task_uuid=?", (task_uuid,)).fetchone()
    assert json.loads(errors)[0]["code"] == "taskInterrupted"
