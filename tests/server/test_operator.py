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
        # the start-up summary: version, data dir, engine mode, device, budgets
        summary = next(line for line in log.splitlines() if "wisp.server: wisp " in line)
        for part in (f"data dir {running.data_dir}", "engine embedded", "device cpu", "1 torch threads", "MiB device +",
                     "LoRA cache", "max batch", "images 30 d", "log text at INFO"):
            assert part in summary, (part, summary)
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
    ok, bad, warm = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
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
                await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": warm, "model": "wisp:tiny-sd15@1",
                                           "positivePrompt": "x", "width": 128, "height": 128, "steps": 8}]))
                while warm not in seen:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    seen |= {i.get("taskUUID") for i in frame.get("data", []) + frame.get("errors", [])}

        asyncio.run(tasks())
    finally:
        stop_server(running)
    lines = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    by_task = {line["taskUUID"]: line for line in lines if line.get("logger") == "wisp.tasks"}
    assert by_task[ok]["outcome"] == "success" and by_task[ok]["images"] == 1 and by_task[ok]["bytes"] > 0
    assert by_task[ok]["model"] == "wisp:tiny-sd15@1" and by_task[ok]["team"] == "default"
    assert by_task[ok]["queuedMs"] >= 0 and by_task[ok]["runningMs"] >= 0
    # A lone request on a warm server waits for nothing: its time is running time, though the Started event
    # reaches the loop only with the result (no per-step wake-ups): the device's own start time counts.
    assert by_task[warm]["runningMs"] > 5 * by_task[warm]["queuedMs"], by_task[warm]
    assert by_task[bad]["outcome"] == "imageNotFound"
    assert any("authentication failed" in line["message"] for line in lines)
    assert "secret lighthouse" not in running.log() and "wisp_wrong" not in running.log()


def test_metrics_after_real_traffic_parse_and_count_it(tmp_path: Path):
    from prometheus_client.parser import text_string_to_metric_families

    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_METRICS_TOKEN": "s3cret"})
    try:
        async def traffic() -> None:
            async with connect(running.ws_url, max_size=None) as ws:
                await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
                await ws.recv()
                tasks = [{"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1", "positivePrompt": "x",
                          "width": 64, "height": 64, "steps": 2, "seed": i} for i in range(2)]
                tasks.append({"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "nope:x@1", "positivePrompt": "x"})
                await ws.send(json.dumps(tasks))
                seen = 0
                while seen < 3:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    seen += len(frame.get("data", [])) + len(frame.get("errors", []))

        asyncio.run(traffic())
        scraped = httpx.get(f"{running.http_url}/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("wisp_tasks_total", (("outcome", "success"), ("task_type", "imageInference")))] == 2
        assert samples[("wisp_task_running_seconds_count", (("task_type", "imageInference"),))] == 2
        assert samples[("wisp_images_total", (("task_type", "imageInference"),))] == 2
        assert samples[("wisp_model_cache_misses_total", ())] >= 1
        assert ("wisp_model_cache_bytes", (("tier", "device"),)) in samples and ("wisp_queue_depth", ()) in samples
        assert samples[("wisp_connections", ())] >= 1 and ("wisp_lora_cache_bytes", ()) in samples
        assert not any("team" in dict(labels) for _, labels in samples)  # no team-identifying labels
        # refused before its ack, counted under its error code
        assert samples[("wisp_tasks_total", (("outcome", "modelNotFound"), ("task_type", "imageInference")))] == 1
        # From another address a token is needed: the same route through the token.
        with_token = httpx.get(f"{running.http_url}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert with_token.status_code == 200
    finally:
        stop_server(running)


def test_metrics_refuse_a_remote_scraper_without_the_token():
    from server.routes import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("203.0.113.9") and not _is_loopback("")
