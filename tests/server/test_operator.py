"""What an operator sees: the start-up banner, /healthz's version and uptime, and a shutdown that says what it
waited for and what it interrupted (issue 16)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.conftest import start_server, stop_server


def test_banner_health_and_shutdown_lines(tmp_path: Path):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_SHUTDOWN_GRACE": "0.5"})
    try:
        log = running.log()
        assert f"wisp playground: http://127.0.0.1:{running.port}/" in log
        assert f"wisp data dir: {running.data_dir}" in log
        health = httpx.get(f"{running.http_url}/healthz").json()
        assert health["version"] and health["uptimeSeconds"] >= 0

        async def submit() -> None:
            async with connect(running.ws_url) as ws:
                await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
                await ws.recv()
                await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1",
                                           "positivePrompt": "x", "width": 512, "height": 512, "steps": 40, "deliveryMethod": "async"}]))
                await ws.recv()
                await asyncio.sleep(1)

        asyncio.run(submit())
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=60) == 0
        log = running.log()
        assert "wisp: waiting up to 0.5 s for 1 running task(s) to finish" in log
        assert "wisp: interrupted 1 task(s)" in log
        assert "Traceback" not in log
    finally:
        stop_server(running)


def test_one_json_log_line_per_finished_task_without_the_prompt(tmp_path: Path):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_LOG_FORMAT": "json"})
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        async def tasks() -> None:
            async with connect(running.ws_url, max_size=None) as ws:
                await ws.send(json.dumps([{"taskType": "authentication", "apiKey": "wisp_wrong"}]))
                await ws.recv()
                await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
                await ws.recv()
                await ws.send(json.dumps([
                    {"taskType": "imageInference", "taskUUID": ok, "model": "wisp:tiny-sd15@1", "positivePrompt": "a secret lighthouse",
                     "width": 64, "height": 64, "steps": 2},
                    {"taskType": "imageInference", "taskUUID": bad, "model": "wisp:tiny-sd15@1", "positivePrompt": "x",
                     "width": 64, "height": 64, "steps": 2, "seedImage": str(uuid.uuid4())},
                ]))
                seen: set[str] = set()
                while seen != {ok, bad}:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    seen |= {i.get("taskUUID") for i in frame.get("data", []) + frame.get("errors", [])} & {ok, bad}

        asyncio.run(tasks())
    finally:
        stop_server(running)
    lines = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    by_task = {line["taskUUID"]: line for line in lines if line.get("logger") == "wisp.tasks"}
    assert by_task[ok]["outcome"] == "success" and by_task[ok]["images"] == 1 and by_task[ok]["bytes"] > 0
    assert by_task[ok]["model"] == "wisp:tiny-sd15@1" and by_task[ok]["team"] == "default"
    assert by_task[ok]["queuedMs"] >= 0 and by_task[ok]["runningMs"] >= 0
    assert by_task[bad]["outcome"] == "imageNotFound"
    assert any("authentication failed" in line["message"] for line in lines)
    assert "secret lighthouse" not in running.log() and "wisp_wrong" not in running.log()
