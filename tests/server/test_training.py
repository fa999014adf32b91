"""The training task through a real server: pushed statuses, getResponse, the official SDK, webhook, cancel, restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from runware import IImageInference, ILora, Runware
from runware.types import ITraining

from tests.conftest import RunningServer, start_server, stop_server, wisp_cli
from tests.fixtures.datasets import data_uris, png, zip_of
from tests.server.test_http_routes import Hook
from tests.server.test_raw_protocol import WireClient, open_client

SEED_ORDER = [
    "deploying_gpu", "training_started", "training_success", "trained_model_compressing",
    "trained_model_uploading", "trained_model_uploaded", "deploying_model", "model_ready",
]


def training(**fields: Any) -> dict[str, Any]:
    return {"taskType": "training", "taskUUID": str(uuid.uuid4()), "model": "wisp:sd1x@lora-training",
            "deliveryMethod": "async", **fields}


async def authed(server: RunningServer, key: str | None = None) -> WireClient:
    client = await open_client(server.ws_url)
    assert "data" in await client.authenticate(key or server.key)
    return client


def statuses(client: WireClient, task_uuid: str) -> list[str]:
    out: list[str] = []
    for item in client.data_for(task_uuid):
        status = item.get("trainingStatus")
        if status and (not out or out[-1] != status):
            out.append(status)
    return out


def finished(client: WireClient, task_uuid: str) -> bool:
    return bool(client.errors_for(task_uuid)) or any(i.get("status") == "success" for i in client.data_for(task_uuid))


async def test_statuses_are_pushed_in_order_and_the_lora_is_usable(wisp_server: RunningServer):
    client = await authed(wisp_server)
    try:
        word = "zq" + uuid.uuid4().hex[:6]  # the session's server is shared: a word no other test trains
        task = training(inputs={"dataset": data_uris(4)}, trainingSteps=6, triggerWord=word, seed=3, learningRate=5e-3, includeCost=True)
        u = task["taskUUID"]
        await client.request([task], lambda: finished(client, u), timeout=180)
        items = client.data_for(u)
        assert items[0] == {"taskType": "training", "taskUUID": u}  # the ack, alone
        assert not client.errors_for(u)
        assert statuses(client, u) == SEED_ORDER
        logged = [line.split(f"training {u} ", 1)[1].split(":")[0] for line in wisp_server.log().splitlines() if f"training {u} " in line]
        assert logged == SEED_ORDER[:-1]  # one server log line per status change, none per step; the end is the task line
        for _ in range(40):  # the task line is written by the log writer, at most 0.1 s after the task ends
            line = next((line for line in wisp_server.log().splitlines() if f"training {u} team=default" in line), None)
            if line is not None:
                break
            await asyncio.sleep(0.05)
        assert line is not None and " success " in line
        running_ms = float(line.split("running=")[1].split("ms")[0])
        assert running_ms > 1000  # the training's time is running time, not queued time
        for item in items[1:-1]:
            assert item["status"] == "processing" and "outputs" not in item
        final = items[-1]
        assert final["status"] == "success" and final["trainingStatus"] == "model_ready"
        air = final["air"]
        assert final["outputs"]["air"] == air and final["outputs"]["steps"] == 6 and final["cost"] == pytest.approx(0.003)
        # getResponse gives the final item; modelSearch finds the LoRA; imageInference uses it
        start = len(client.frames)
        await client.request([{"taskType": "getResponse", "taskUUID": u}], lambda: bool(client.data(start)), timeout=30)
        assert client.data(start) == [final]
        search = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": word}
        await client.request([search], lambda: bool(client.data_for(search["taskUUID"])), timeout=30)
        assert [m["air"] for m in client.data_for(search["taskUUID"])[0]["results"]] == [air]
        images = {}
        for name, lora in (("base", []), ("lora", [{"model": air, "weight": 1.0}])):
            job = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1", "positivePrompt": word,
                   "width": 64, "height": 64, "steps": 3, "seed": 1, "outputType": "base64Data", "lora": lora}
            await client.request([job], lambda: bool(client.data_for(job["taskUUID"]) or client.errors_for(job["taskUUID"])), timeout=60)
            assert not client.errors_for(job["taskUUID"])
            images[name] = client.data_for(job["taskUUID"])[0]["imageBase64Data"]
        assert images["base"] != images["lora"]
    finally:
        await client.ws.close()


async def test_processing_while_running_then_cancel(wisp_server: RunningServer):
    client = await authed(wisp_server)
    other = await authed(wisp_server, wisp_server.create_key("someone-else"))
    try:
        task = training(inputs={"dataset": data_uris(1)}, trainingSteps=10_000)
        u = task["taskUUID"]
        await client.request([task], lambda: "training_started" in statuses(client, u), timeout=120)
        start = len(client.frames)
        await client.request([{"taskType": "getResponse", "taskUUID": u}], lambda: len(client.data(start)) > 0, timeout=30)
        polled = [i for i in client.data(start) if i.get("taskType") == "training" and "trainingStatus" in i and i.get("status") == "processing"]
        assert polled and "outputs" not in polled[-1]
        # another team cannot see or cancel it
        await other.request([{"taskType": "taskCancel", "taskUUID": u}], lambda: bool(other.errors_for(u)))
        assert other.errors_for(u)[0]["code"] == "taskNotFound"
        await client.request([{"taskType": "taskCancel", "taskUUID": u}], lambda: bool(client.errors_for(u)), timeout=60)
        assert {"taskType": "taskCancel", "taskUUID": u, "cancelled": True} in client.data_for(u)
        error = client.errors_for(u)[0]
        assert error["code"] == "taskCancelled" and error["taskType"] == "training"
        start = len(client.frames)
        await client.request([{"taskType": "getResponse", "taskUUID": u}], lambda: bool(client.errors(start)))
        assert client.errors(start)[0]["code"] == "taskCancelled"
    finally:
        await client.ws.close()
        await other.ws.close()


async def test_refusals_come_at_once(wisp_server: RunningServer):
    client = await authed(wisp_server)
    try:
        cases = {
            "deliveryMethod": training(deliveryMethod="sync", images=data_uris(1)),
            "model": training(model="wisp:sd3@lora-training", images=data_uris(1)),
            "inputs.dataset": training(),
            "baseModel": training(images=data_uris(1), baseModel="wisp:nothing@1"),
            "max_train_steps": training(images=data_uris(1), max_train_steps="lots"),
        }
        await client.send(list(cases.values()))
        await client.until(lambda: all(client.errors_for(t["taskUUID"]) for t in cases.values()))
        for parameter, task in cases.items():
            error = client.errors_for(task["taskUUID"])[0]
            assert error["parameter"] == parameter, error
            assert not client.data_for(task["taskUUID"])  # no ack for a refused task
        bad = training(images=[data_uris(1)[0], "data:image/png;base64,aGVsbG8="])
        await client.request([bad], lambda: bool(client.errors_for(bad["taskUUID"])), timeout=60)
        error = client.errors_for(bad["taskUUID"])[0]
        assert error["code"] == "invalidImage" and "images[1]" in error["message"]
    finally:
        await client.ws.close()


async def test_modelslab_fields_and_webhook_per_status(wisp_server: RunningServer, file_server):
    hook = Hook()
    client = await authed(wisp_server)
    folder = file_server.root / uuid.uuid4().hex
    folder.mkdir()
    urls = []
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png(i, (600, 512)))
        urls.append(file_server.url(folder / f"{i}.png"))
    try:
        # the seed document's example body, with loopback images and a tiny step count
        task = {
            "taskType": "training", "taskUUID": str(uuid.uuid4()), "instance_prompt": "photo of ambika0 man",
            "class_prompt": "photo of a man", "base_model_type": "normal", "negative_prompt": " lowres, bad anatomy",
            "images": urls, "seed": "0", "training_type": "men", "max_train_steps": "2", "lora_type": "lora",
            "webhook": hook.url + "/done", "numClassImages": 1, "wandb_key": "",
        }
        u = task["taskUUID"]
        await client.request([task], lambda: finished(client, u), timeout=180)
        assert not client.errors_for(u)
        assert statuses(client, u) == SEED_ORDER
        posts = await hook.wait(len(SEED_ORDER))
        await asyncio.sleep(0.3)
        bodies = [json.loads(body)["data"][0] for _, _, body in hook.posts]
        assert [b["trainingStatus"] for b in bodies] == SEED_ORDER  # one POST per status change
        assert all(path == "/done" for path, _, _ in posts)
        assert bodies[-1]["status"] == "success" and bodies[-1]["air"].endswith("@1")
    finally:
        hook.close()
        await client.ws.close()


async def test_official_sdk_training_call(wisp_server: RunningServer, tmp_path: Path):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(zip_of({f"{i}.png": png(i) for i in range(4)}))
    source = "sdktrain" + uuid.uuid4().hex[:6]
    assert wisp_cli("sources", "create", source, "--data-dir", str(wisp_server.data_dir)).returncode == 0
    rw = Runware(api_key=wisp_server.key, url=wisp_server.ws_url)
    await rw.connect()
    try:
        ack = await rw.training(ITraining(
            model="wisp:sd1x@lora-training",
            importModel={"air": f"{source}:faces@1", "name": "faces", "uniqueIdentifier": "faces-1", "version": "1", "private": True},
            inputs={"dataset": str(archive)},  # a local file: the SDK sends it as base64
        ))
        task_uuid = ack.taskUUID
        deadline = time.monotonic() + 180
        while True:
            results = await rw.getResponse(task_uuid)
            if results and results[0].status == "success":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        assert results[0].outputs["air"] == f"{source}:faces@1"
        images = await rw.imageInference(IImageInference(
            model="wisp:tiny-sd15@1", positivePrompt="faces", width=64, height=64, steps=2,
            lora=[ILora(model=f"{source}:faces@1", weight=1.0)],
        ))
        assert len(images) == 1
    finally:
        await rw.disconnect()


def _training_processes(data_dir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "engine.training.worker" in line]


async def test_restart_with_a_job_running(tmp_path: Path):
    server = start_server(tmp_path / "data")
    try:
        client = await authed(server)
        task = training(inputs={"dataset": data_uris(1)}, trainingSteps=10_000)
        u = task["taskUUID"]
        await client.request([task], lambda: "training_started" in statuses(client, u), timeout=120)
        before = _training_processes(server.data_dir)
        assert before
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        deadline = time.monotonic() + 20
        while set(_training_processes(server.data_dir)) & set(before):  # the orphan notices and exits
            assert time.monotonic() < deadline, "the training process outlived the server"
            await asyncio.sleep(0.2)
        restarted = start_server(server.data_dir)
        try:
            again = await authed(restarted, server.key)
            await again.request([{"taskType": "getResponse", "taskUUID": u}], lambda: bool(again.errors_for(u) or again.data_for(u)))
            error = again.errors_for(u)[0]
            assert error["code"] == "taskInterrupted" and error["taskType"] == "training"
            assert not list((server.data_dir / "tmp").glob("train-*"))
            search = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "visibility": "private"}
            await again.request([search], lambda: bool(again.data_for(search["taskUUID"])))
            assert again.data_for(search["taskUUID"])[0]["totalResults"] == 0  # nothing half-registered
            await again.ws.close()
        finally:
            stop_server(restarted)
    finally:
        stop_server(server)


def test_wisp_train_cli_follows_to_the_air(wisp_server: RunningServer, tmp_path: Path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    out = subprocess.run(
        [*__import__("tests.conftest", fromlist=["WISP"]).WISP, "train", str(tmp_path / "0.png"), str(tmp_path / "1.png"),
         "--steps", "2", "--trigger-word", "clitrain", "--server", wisp_server.ws_url, "--api-key", wisp_server.key],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr
    air = out.stdout.strip().splitlines()[-1]
    assert air.endswith("@1") and ":lora-" in air
    assert "training_success" in out.stderr and "deploying_model" in out.stderr
    missing = wisp_cli("train", "--cancel", str(uuid.uuid4()), "--server", wisp_server.ws_url, "--api-key", wisp_server.key)
    assert missing.returncode == 1 and "taskNotFound" in missing.stderr
