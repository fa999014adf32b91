"""The engine fleet on a real Ray cluster (issue 14): a local cluster started here (temp dirs, loopback, usage stats
and token auth off, no dashboard), two CPU engine replicas, and a real ``wisp serve --engine ray`` in front of it.

Tests run in file order on one fleet (pytest-xdist's ``--dist loadfile`` keeps them on one worker); the replica
killed mid-task comes last.  Model-cache budgets are small on purpose (2.5 tiny models on the device tier, none on
the host tier), so a stream over four models evicts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from engine.fleet.cluster import start_local_cluster, stop_local_cluster
from tests.conftest import RunningServer, start_server, stop_server
from tests.server.test_model_library import Socket, new_source, serve

TINY = "wisp:tiny-sd15@1"
TINY_BYTES = 5_700_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    address, temp_dir = start_local_cluster(cpus=3)
    try:
        yield address
    finally:
        stop_local_cluster(temp_dir)
        assert not temp_dir.exists()
        from engine.fleet.cluster import _alive, _processes_of

        assert not [pid for pid in _processes_of(str(temp_dir), address) if _alive(pid)]  # only its own processes, all gone


def fleet_env(root: Path) -> dict[str, str]:
    return {"HOME": str(root / "home"), "WISP_FLEET_CACHE_DIR": str(root / "fleet-cache"),
            "WISP_CACHE_DEVICE_BYTES": str(int(TINY_BYTES * 2.5)), "WISP_CACHE_HOST_BYTES": str(TINY_BYTES // 2),
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def start_front(root: Path, address: str) -> RunningServer:
    (root / "home").mkdir(parents=True, exist_ok=True)
    server = start_server(root / "data", "--engine", "ray", "--ray-address", address, "--replicas", "2",
                          env=fleet_env(root), timeout=240)
    wait_replicas(server, 2)
    return server


@pytest.fixture(scope="module")
def fleet(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fleet")
    state: dict[str, Any] = {"root": root, "address": cluster, "server": start_front(root, cluster)}
    try:
        yield state
    finally:
        stop_server(state["server"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file

    root = tmp_path_factory.mktemp("fleet-files")
    folder = ensure_tiny_sd15(root / "data")
    return [write_sd15_single_file(folder, root / f"ckpt{i}.safetensors", noise_seed=140 + i) for i in range(4)]


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.loras import write_lora

    root = tmp_path_factory.mktemp("fleet-lora")
    return write_lora(ensure_tiny_sd15(root / "data"), root / "lora.safetensors", fmt="kohya", seed=141)


def health(server: RunningServer) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).json()


def replicas(server: RunningServer, fresh_after: float | None = None) -> list[dict[str, Any]]:
    """Each replica's published state; with ``fresh_after``, wait until every one reported after that time."""
    deadline = time.monotonic() + 30
    while True:
        found = health(server)["fleet"]["replicas"]
        if fresh_after is None or (found and all(r["reported_at"] > fresh_after for r in found)):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.3)


def wait_replicas(server: RunningServer, count: int, timeout: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = health(server).get("fleet", {}).get("replicas", [])
        if len(found) == count and all(r["age_s"] < 2 for r in found):
            return found
        time.sleep(0.3)
    raise AssertionError(f"the fleet did not reach {count} replicas: {health(server).get('fleet')}")


def settled(server: RunningServer) -> list[dict[str, Any]]:
    """Replica states published after now (the router's stats and /healthz lag by a period)."""
    return replicas(server, fresh_after=time.time() + 0.3)


def holders(states: list[dict[str, Any]], key: str) -> list[str]:
    return [r["id"] for r in states if key in r["device"] or key in r["host"]]


def total(states: list[dict[str, Any]], field: str) -> int:
    return sum(r[field] for r in states)


async def upload_checkpoint(sock: Socket, file_server, path: Path, air: str) -> str:
    items, errors = await sock.upload(air=air, downloadURL=serve(file_server, path), category="checkpoint", architecture="sd1x", type="base")
    assert not errors, errors
    return air


def sha_of(server: RunningServer, air: str) -> str:
    import sqlite3

    with sqlite3.connect(server.data_dir / "wisp.db") as conn:
        (sha256,) = conn.execute("SELECT sha256 FROM models WHERE air=?", (air,)).fetchone()
    return sha256


def image_of(items: list[dict]) -> bytes:
    found = [i for i in items if i.get("imageBase64Data")]
    assert found, items
    return base64.b64decode(found[0]["imageBase64Data"])


async def test_sdk_slice_through_the_fleet_matches_the_embedded_engine(fleet, tmp_path):
    """The official SDK (runware 0.5) against a fleet front end: seeded images as the embedded engine makes them."""
    from runware import IImageInference, IModelSearch, Runware

    from engine.core import Engine, EngineConfig
    from protocol.inference import ImageInference

    server = fleet["server"]
    client = Runware(api_key=server.key, url=server.ws_url)
    await client.connect()
    try:
        images = await client.imageInference(requestImage=IImageInference(
            model=TINY, positivePrompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=777, numberResults=2,
            outputType="base64Data", outputFormat="PNG"))
        one = await client.imageInference(requestImage=IImageInference(
            model=TINY, positivePrompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=31, outputType="base64Data",
            outputFormat="PNG"))
        urls = await client.imageInference(requestImage=IImageInference(
            model=TINY, positivePrompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=31, outputType="URL",
            outputFormat="PNG"))
        found = await client.modelSearch(IModelSearch(search="tiny"))
    finally:
        await client.disconnect()
    assert sorted(i.seed for i in images) == [777, 778]
    fleet_bytes = {i.seed: base64.b64decode(i.imageBase64Data) for i in images}
    fetched = httpx.get(urls[0].imageURL, timeout=10)
    assert fetched.status_code == 200 and fetched.content == base64.b64decode(one[0].imageBase64Data)  # stored by the front end
    assert any(m.air == TINY for m in found.results)

    engine = Engine(EngineConfig(data_dir=tmp_path / "embedded", torch_threads=1))
    engine.start()
    try:
        task = ImageInference(taskUUID=str(uuid.uuid4()), positivePrompt="a lighthouse at dusk", model=TINY, width=64, height=64,
                              steps=3, seed=777, numberResults=2, outputFormat="PNG")
        local = await engine.generate(task, team="default", owner="t")
    finally:
        engine.stop()
    assert {i.seed: i.data for i in local} == fleet_bytes


async def test_progress_streams_in_order_before_the_result(fleet):
    sock = await Socket.open(fleet["server"])
    try:
        items, errors = await sock.run({"taskType": "imageInference", "model": TINY, "positivePrompt": "a fox", "width": 64,
                                        "height": 64, "steps": 6, "seed": 5, "includeProgress": True, "outputType": "base64Data"},
                                       done=lambda items: any(i.get("imageBase64Data") for i in items))
    finally:
        await sock.close()
    assert not errors, errors
    steps = [i["step"] for i in items if "step" in i]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == steps[0] + len(steps) - 1 and len(steps) >= 6
    assert items[-1].get("imageBase64Data")


async def test_a_cold_herd_loads_once_and_the_next_request_finds_it(fleet, file_server, checkpoints):
    """8 concurrent requests for a model no replica holds: one load, on one replica; the 9th goes there too."""
    server = fleet["server"]
    sock = await Socket.open(server)
    try:
        air = await upload_checkpoint(sock, file_server, checkpoints[0], f"{new_source(server)}:herd@1")
        sha = sha_of(server, air)
        before = settled(server)
        assert not holders(before, sha)
        sockets = [await Socket.open(server) for _ in range(8)]
        results = await asyncio.gather(*(s.infer(model=air, seed=900 + i) for i, s in enumerate(sockets)))
        for s in sockets:
            await s.close()
        assert all(not errors and image_of(items) for items, errors in results)
        after = settled(server)
        assert total(after, "loads") - total(before, "loads") == 1, (before, after)
        assert len(holders(after, sha)) == 1, json.dumps([sha, after])
        (holder,) = holders(after, sha)
        jobs_before = {r["id"]: r["jobs"] for r in after}
        items, errors = await sock.infer(model=air, seed=950)
        assert not errors
        later = settled(server)
        assert total(later, "loads") == total(after, "loads")
        ran = [r["id"] for r in later if r["jobs"] > jobs_before.get(r["id"], 0)]
        assert ran == [holder]
        assert total(later, "downloads") - total(before, "downloads") == 1  # one fetch from the origin, one node
    finally:
        await sock.close()


async def test_a_stream_over_more_models_than_fit_evicts_none_in_use(fleet, file_server, checkpoints):
    """Four models, concurrently and repeatedly, on replicas that hold 2.5 each: every result right, evictions happen."""
    server = fleet["server"]
    sock = await Socket.open(server)
    try:
        source = new_source(server)
        airs = [await upload_checkpoint(sock, file_server, path, f"{source}:m{i}@1") for i, path in enumerate(checkpoints)]
        before = settled(server)
        runs = [(airs[i % 4], 300 + i) for i in range(12)]
        sockets = [await Socket.open(server) for _ in runs]

        async def one(index: int, air: str, seed: int) -> bytes:
            items, errors = await sockets[index].infer(model=air, seed=seed)
            assert not errors, errors
            return image_of(items)

        first = await asyncio.gather(*(one(i, air, seed) for i, (air, seed) in enumerate(runs)))
        again = await asyncio.gather(*(one(i, air, seed) for i, (air, seed) in enumerate(reversed(runs))))
        for s in sockets:
            await s.close()
        assert list(reversed(again)) == first  # the same seed on the same model: the same bytes, whatever was evicted
        after = settled(server)
        assert total(after, "evictions") > total(before, "evictions")
        assert all(r["queue"] == 0 for r in after)
    finally:
        await sock.close()


async def test_lora_isolation_across_replicas(fleet, file_server, lora_file):
    """A team's private LoRA: other teams cannot name it, and it does not stay applied for the next request."""
    server = fleet["server"]
    sock = await Socket.open(server)
    other = await Socket.open(server, server.create_key(f"fleet-other-{uuid.uuid4().hex[:6]}"))
    try:
        air = f"{new_source(server)}:style@1"
        items, errors = await sock.upload(air=air, downloadURL=serve(file_server, lora_file), category="lora")
        assert not errors, errors
        plain = image_of((await sock.infer(seed=61))[0])
        styled = image_of((await sock.infer(seed=61, lora=[{"model": air, "weight": 1.0}]))[0])
        assert styled != plain
        assert image_of((await sock.infer(seed=61))[0]) == plain
        _, errors = await other.infer(seed=61, lora=[{"model": air, "weight": 1.0}])
        assert errors and errors[0]["code"] == "modelNotFound"
    finally:
        await sock.close()
        await other.close()


async def test_a_training_runs_on_the_training_deployment_and_its_lora_works(fleet):
    """A training through the fleet: statuses in the seed's order, the LoRA registered by the front end, usable at once."""
    from tests.fixtures.datasets import data_uris
    from tests.server.test_training import SEED_ORDER

    server = fleet["server"]
    before = health(server)["fleet"]["trainings"]
    sock = await Socket.open(server)
    try:
        task = {"taskType": "training", "model": "wisp:sd1x@lora-training", "deliveryMethod": "async",
                "inputs": {"dataset": data_uris(4)}, "trainingSteps": 6, "triggerWord": "zqfleet", "seed": 3, "learningRate": 5e-3}
        items, errors = await sock.run(task, done=lambda items: any(i.get("status") == "success" for i in items), timeout=300)
        assert not errors, errors
        seen: list[str] = []
        for item in items:
            status = item.get("trainingStatus")
            if status and (not seen or seen[-1] != status):
                seen.append(status)
        assert seen == SEED_ORDER
        air = items[-1]["air"]
        assert health(server)["fleet"]["trainings"] == before + 1  # it ran on the training deployment, not in the front end
        plain = image_of((await sock.infer(seed=81))[0])
        styled = image_of((await sock.infer(seed=81, lora=[{"model": air, "weight": 1.0}]))[0])
        assert styled != plain
    finally:
        await sock.close()


def test_the_origin_serves_model_files_to_the_fleet_only(fleet, checkpoints):
    server = fleet["server"]
    token = (server.data_dir / "fleet.token").read_text().strip()
    stored = next((server.data_dir / "store").rglob("*.safetensors"))
    url = f"http://127.0.0.1:{server.port}/internal/v1/blobs/{stored.stem}"
    assert httpx.get(url, timeout=10).status_code == 403
    assert httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=10).status_code == 403
    bad = httpx.get(f"http://127.0.0.1:{server.port}/internal/v1/blobs/..%2Fwisp.db", headers={"authorization": f"Bearer {token}"})
    assert bad.status_code == 404 and "Traceback" not in bad.text
    part = httpx.get(url, headers={"authorization": f"Bearer {token}", "range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == stored.read_bytes()[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{stored.stat().st_size}"


async def test_a_restarted_front_end_reuses_the_running_application(fleet):
    server = fleet["server"]
    sock = await Socket.open(server)
    try:
        assert not (await sock.infer(seed=70))[1]
    finally:
        await sock.close()
    before = settled(server)
    stop_server(server)
    server = fleet["server"] = start_front(fleet["root"], fleet["address"])
    assert "reusing the running Serve application" in server.log_path.read_text()
    sock = await Socket.open(server)
    try:
        assert not (await sock.infer(seed=71))[1]
    finally:
        await sock.close()
    after = settled(server)
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)  # the same replicas, caches and all
    assert total(after, "loads") == total(before, "loads")


@pytest.mark.parametrize("progress", [True, False], ids=["streamed", "one-reply"])
async def test_a_replica_killed_mid_task_still_gives_the_result(fleet, progress):
    """SIGKILL the replica running a task: the client still gets the seeded image (run again elsewhere), in bounded time.

    Both ways a job travels: streamed (it asked for progress) and as one reply (it did not)."""
    server = fleet["server"]
    wait_replicas(server, 2)  # a replica killed by the previous case is back
    retries = health(server)["fleet"]["retries"]
    task = {"taskType": "imageInference", "model": TINY, "positivePrompt": "a long walk", "width": 256, "height": 256,
            "steps": 60, "seed": 4242, "includeProgress": progress, "outputType": "base64Data"}
    sock = await Socket.open(server)
    try:
        task_uuid = str(uuid.uuid4())
        await sock.ws.send(json.dumps([{**task, "taskUUID": task_uuid}]))
        killed = None
        items: list[dict] = []
        errors: list[dict] = []
        started = time.monotonic()

        async def kill_when_running() -> None:
            nonlocal killed
            while killed is None:
                running = [r for r in await asyncio.to_thread(replicas, server) if task_uuid in r["running"]]
                if running:
                    killed = running[0]
                    os.kill(killed["pid"], signal.SIGKILL)
                    return
                await asyncio.sleep(0.1)

        killer = asyncio.create_task(kill_when_running())
        async with asyncio.timeout(180):
            while not errors and not any(i.get("imageBase64Data") for i in items):
                frame = json.loads(await sock.ws.recv())
                items += [i for i in frame.get("data", []) if i.get("taskUUID") == task_uuid]
                errors += [e for e in frame.get("errors", []) if e.get("taskUUID") == task_uuid]
        killer.cancel()
        assert killed is not None, "the task finished before it could be killed"
        assert not errors, errors
        assert time.monotonic() - started < 180
        assert health(server)["fleet"]["retries"] == retries + 1
        if progress:
            steps = [i["step"] for i in items if "step" in i]
            assert steps == sorted(set(steps))  # the re-run's steps continue, none reported twice
        survivor = image_of(items)
        items, errors = await sock.run({**task, "taskUUID": str(uuid.uuid4()), "includeProgress": False})
        assert not errors and image_of(items) == survivor  # what the client got is the seeded image itself
    finally:
        await sock.close()
