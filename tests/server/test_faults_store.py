"""Fault injection in a modelUpload's *store* phase: kill -9 between the fsync and the rename.

A test-only hook (``WISP_TEST_STORE_PAUSE_FILE``, see ``engine.upload.store``)
holds the store phase while a flag file exists, so the kill lands inside it.
After a restart: the interrupted upload is reported ``taskInterrupted``, no
partial file is left in ``tmp/`` or the store, nothing is half-registered,
and a LoRA uploaded (and an image made) before the kill are intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

from tests.conftest import FileServer, RunningServer, start_server, wisp_cli
from tests.fixtures.loras import write_lora
from tests.server.test_faults import MODEL, ask, authed, kill9


def upload(task_uuid: str, air: str, url: str) -> dict:
    return {"taskType": "modelUpload", "taskUUID": task_uuid, "air": air, "category": "lora", "architecture": "sd1x",
            "downloadURL": url, "uniqueIdentifier": air, "name": air, "version": "1"}


async def wait_status(ws, task_uuid: str, status: str) -> dict:  # type: ignore[no-untyped-def]
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert "errors" not in frame, frame
        for item in frame.get("data", []):
            if item.get("taskUUID") == task_uuid and item.get("status") == status:
                return item


async def test_kill_9_in_the_store_phase_then_restart(tmp_path: Path):
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15

    builtin = ensure_tiny_sd15(tmp_path / "builtin-src")
    files = tmp_path / "files"
    kept = write_lora(builtin, files / "kept.safetensors", fmt="kohya", seed=1)
    lost = write_lora(builtin, files / "lost.safetensors", fmt="kohya", seed=2)
    flag = tmp_path / "hold-store"
    data = tmp_path / "data"
    fileserver = FileServer(files)
    server = start_server(data, env={"WISP_TEST_STORE_PAUSE_FILE": str(flag)})
    try:
        assert wisp_cli("sources", "create", "crash", "--data-dir", str(data)).returncode == 0
        ws = await authed(server)
        # before the kill: one LoRA fully uploaded, one image made with it
        kept_uuid = str(uuid.uuid4())
        await ws.send(json.dumps([upload(kept_uuid, "crash:1@1", fileserver.url(kept))]))
        await wait_status(ws, kept_uuid, "ready")
        done_uuid = str(uuid.uuid4())
        finished = await ask(ws, {"taskType": "imageInference", "taskUUID": done_uuid, "model": MODEL, "positivePrompt": "before",
                                  "width": 64, "height": 64, "steps": 2, "seed": 3, "lora": [{"model": "crash:1@1", "weight": 1.0}]})
        assert finished["data"][0]["imageURL"]
        stored_before = sorted((data / "store").rglob("*.safetensors"))
        assert len(stored_before) == 1

        # the second upload is held in its store phase (fsynced in tmp/, not yet renamed), then the server is killed
        flag.touch()
        lost_uuid = str(uuid.uuid4())
        await ws.send(json.dumps([upload(lost_uuid, "crash:2@1", fileserver.url(lost))]))
        await wait_status(ws, lost_uuid, "optimized")  # announced right before the store phase
        await asyncio.sleep(1.0)
        assert any((data / "tmp").rglob("*.safetensors"))  # the file waits in tmp/, fsynced
        kill9(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        flag.unlink(missing_ok=True)

    restarted = start_server(data)
    try:
        assert "were interrupted" in restarted.log()
        assert not any((data / "tmp").iterdir())  # the held file is cleaned at start-up
        assert sorted((data / "store").rglob("*.safetensors")) == stored_before  # no partial or extra file
        stored = stored_before[0]
        assert stored.name == hashlib.sha256(stored.read_bytes()).hexdigest() + ".safetensors"  # intact
        ws = await authed(RunningServer(restarted.proc, restarted.port, data, server.key, restarted.log_path))
        frame = await ask(ws, {"taskType": "getResponse", "taskUUID": lost_uuid})
        assert frame["errors"][0]["code"] == "taskInterrupted", frame
        assert await ask(ws, {"taskType": "getResponse", "taskUUID": lost_uuid}) == frame
        search = await ask(ws, {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": "crash"})
        assert [m["air"] for m in search["data"][0]["results"]] == ["crash:1@1"]  # nothing half-registered
        frame = await ask(ws, {"taskType": "getResponse", "taskUUID": kept_uuid})
        assert frame["data"][-1]["status"] == "ready"
        frame = await ask(ws, {"taskType": "getResponse", "taskUUID": done_uuid})
        assert frame["data"][0]["status"] == "success"
        again = await ask(ws, {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": "after",
                               "width": 64, "height": 64, "steps": 2, "seed": 3, "lora": [{"model": "crash:1@1", "weight": 1.0}]})
        assert "data" in again, again  # the LoRA stored before the kill still loads
        # the interrupted upload can simply be sent again
        retry_uuid = str(uuid.uuid4())
        await ws.send(json.dumps([upload(retry_uuid, "crash:2@1", fileserver.url(lost))]))
        await wait_status(ws, retry_uuid, "ready")
        await ws.close()
    finally:
        fileserver.close()
        restarted.proc.terminate()
        restarted.proc.wait(20)
