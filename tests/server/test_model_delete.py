"""Deleting a model: its owner team only, the AIR stops resolving at once, running tasks finish first, and the
file goes once nothing refers to it (issue 16: ``modelDelete`` and ``wisp models delete``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from engine.file_leases import FileLeases
from engine.upload.store import ModelStore
from tests.conftest import ROOT, WISP, FileServer, RunningServer, wisp_cli
from tests.server.test_model_library import Socket, new_source


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files of this module's own seeds (not test_model_library's ``tiny_files``): the session's server is shared, and a
    file another module also uploaded would outlive a deletion here, rightly, since another AIR still names its bytes."""
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file
    from tests.fixtures.loras import write_lora

    root = tmp_path_factory.mktemp("delete-files")
    folder = ensure_tiny_sd15(root / "data")
    return {
        "lora": write_lora(folder, root / "lora.safetensors", fmt="kohya", seed=21),
        "checkpoint": write_sd15_single_file(folder, root / "ckpt.safetensors", noise_seed=22),
    }


def served(file_server: FileServer, path: Path) -> str:
    target = file_server.root / f"{uuid.uuid4().hex}-{path.name}"
    shutil.copy(path, target)
    return file_server.url(target)


def stored_file(server: RunningServer, sha256: str) -> Path:
    return server.data_dir / "store" / sha256[:2] / sha256[2:4] / f"{sha256}.safetensors"


def age(path: Path) -> None:
    """Make a stored file look long-uploaded, past the deletion grace that protects a just-stored file."""
    old = time.time() - 3600
    os.utime(path, (old, old))


async def upload(sock: Socket, file_server: FileServer, path: Path, air: str, **fields) -> str:
    items, errors = await sock.upload(air=air, downloadURL=served(file_server, path), **fields)
    assert not errors, errors
    found = await sock.search(search=air.split(":")[1].split("@")[0])
    assert any(m["air"] == air for m in found["results"])
    return air


def stored_path(server: RunningServer, air: str) -> Path:
    """The store file a registered AIR names (its bytes are the converted upload, so read the hash off its row)."""
    import sqlite3

    with sqlite3.connect(server.data_dir / "wisp.db") as conn:
        (sha256,) = conn.execute("SELECT sha256 FROM models WHERE air=?", (air,)).fetchone()
    return stored_file(server, sha256)


def delete_cli(server: RunningServer, air: str, key: str) -> subprocess.CompletedProcess:
    return subprocess.run(WISP + ["models", "delete", air, "--server", server.ws_url], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "WISP_API_KEY": key}, timeout=120)


async def test_owner_deletes_and_the_air_stops_resolving_and_the_file_goes(wisp_server, file_server, model_files):
    source = new_source(wisp_server)
    air = f"{source}:gone@1"
    sock = await Socket.open(wisp_server)
    try:
        await upload(sock, file_server, model_files["lora"], air, category="lora")
        path = stored_path(wisp_server, air)
        assert path.is_file()
        age(path)
        result = await asyncio.to_thread(delete_cli, wisp_server, air, wisp_server.key)
        assert result.returncode == 0 and result.stdout.strip() == f"deleted {air}", result.stderr
        assert not path.exists()
        found = await sock.search(search="gone")
        assert all(m["air"] != air for m in found["results"])
        items, errors = await sock.infer(lora=[{"model": air, "weight": 1}])
        assert errors and errors[0]["code"] == "modelNotFound"
        again = await asyncio.to_thread(delete_cli, wisp_server, air, wisp_server.key)
        assert again.returncode == 1 and "wisp: modelNotFound (air)" in again.stderr and "Traceback" not in again.stderr
    finally:
        await sock.close()


async def test_only_the_owner_team_may_delete(wisp_server, file_server, model_files):
    source = new_source(wisp_server)
    public, private = f"{source}:pub@1", f"{source}:priv@1"
    sock = await Socket.open(wisp_server)
    other_key = wisp_server.create_key(f"other-{uuid.uuid4().hex[:6]}")
    try:
        await upload(sock, file_server, model_files["lora"], public, category="lora", private=False)
        await upload(sock, file_server, model_files["lora"], private, category="lora")
        other = await Socket.open(wisp_server, other_key)
        try:
            _, errors = await other.run({"taskType": "modelDelete", "air": public})
            assert errors[0]["code"] == "sourceNotAllowed" and errors[0]["parameter"] == "air"
            _, errors = await other.run({"taskType": "modelDelete", "air": private})
            assert errors[0]["code"] == "modelNotFound"  # another team's private model looks missing
            _, errors = await other.run({"taskType": "modelDelete", "air": "wisp:tiny-sd15@1"})
            assert errors[0]["code"] == "sourceNotAllowed"
        finally:
            await other.close()
        found = await sock.search(search="pub")
        assert any(m["air"] == public for m in found["results"])
    finally:
        await sock.close()


async def test_a_file_shared_by_two_airs_stays_while_one_remains(wisp_server, file_server, model_files):
    source = new_source(wisp_server)
    first, second = f"{source}:twin-a@1", f"{source}:twin-b@1"
    sock = await Socket.open(wisp_server)
    try:
        await upload(sock, file_server, model_files["lora"], first, category="lora")
        await upload(sock, file_server, model_files["lora"], second, category="lora")
        path = stored_path(wisp_server, first)
        assert path == stored_path(wisp_server, second)
        age(path)
        items, errors = await sock.run({"taskType": "modelDelete", "air": first})
        assert not errors and items[0] == {"taskType": "modelDelete", "taskUUID": items[0]["taskUUID"], "air": first,
                                           "status": "deleted"}
        assert path.is_file()
        _, errors = await sock.infer(lora=[{"model": second, "weight": 1}])
        assert not errors
    finally:
        await sock.close()


async def test_a_running_task_finishes_and_the_file_goes_afterwards(wisp_server, file_server, model_files):
    from websockets.asyncio.client import connect

    source = new_source(wisp_server)
    air = f"{source}:busy@1"
    sock = await Socket.open(wisp_server)
    try:
        await upload(sock, file_server, model_files["checkpoint"], air, category="checkpoint", type="base")
        path = stored_path(wisp_server, air)
        age(path)
        task_uuid = str(uuid.uuid4())
        async with connect(wisp_server.ws_url, max_size=None) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": wisp_server.key}]))
            await ws.recv()
            await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": task_uuid, "model": air, "positivePrompt": "a harbour",
                                       "width": 256, "height": 256, "steps": 25, "seed": 3, "includeProgress": True,
                                       "outputType": "base64Data"}]))
            items: list[dict] = []
            async with asyncio.timeout(300):
                while not any(i.get("status") == "processing" for i in items):  # the device is on it
                    frame = json.loads(await ws.recv())
                    assert "errors" not in frame, frame
                    items += frame["data"]
                deleted, errors = await sock.run({"taskType": "modelDelete", "air": air})
                assert not errors, errors
                assert path.is_file()  # held by the running task
                while not any("imageBase64Data" in i for i in items):
                    frame = json.loads(await ws.recv())
                    assert "errors" not in frame, frame  # the task finishes with the file it was given
                    items += frame["data"]
        deadline = time.monotonic() + 30  # then the server's housekeeping (every 10 s) removes the file
        while path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert not path.exists()
        _, errors = await sock.infer(model=air)
        assert errors and errors[0]["code"] == "modelNotFound"
    finally:
        await sock.close()


def test_leases_and_grace_keep_a_file_until_it_is_free(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    sha = "ab" * 32
    path = store.path_for(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert store.remove(sha, older_than_s=60) is None and path.exists()  # just written: an upload may be registering it
    age(path)
    leases = FileLeases()
    with leases.hold([sha, None]):
        assert leases.held(sha)
        with leases.hold([sha]):
            pass
        assert leases.held(sha)
    assert not leases.held(sha)
    assert store.remove(sha, older_than_s=60) is True and not path.exists()


def test_models_list_shows_what_the_team_can_use(wisp_server):
    result = subprocess.run(WISP + ["models", "list", "--server", wisp_server.ws_url, "--search", "tiny"], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "WISP_API_KEY": wisp_server.key}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wisp:tiny-sd15@1\tcheckpoint\tsd1x\tpublic" in result.stdout
    assert wisp_cli("models", "delete", "x:y@1", "--server", wisp_server.ws_url).returncode == 2  # no key given
