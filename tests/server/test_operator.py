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
