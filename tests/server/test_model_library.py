"""The model library end to end: modelUpload phases, refusals, search, privacy, files, CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import FileServer, RunningServer, start_server, stop_server, wisp_cli
from tests.fixtures import bad_files

PHASES = ["validated", "downloaded", "optimized", "stored", "ready"]


class Socket:
    """One authenticated socket; ``run`` sends a task and collects its items until it ends."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, server: RunningServer, key: str | None = None) -> "Socket":
        ws = await connect(server.ws_url, max_size=None)
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key or server.key}]))
        reply = json.loads(await ws.recv())
        assert "data" in reply, reply
        return cls(ws)

    async def run(self, task: dict, done=None, timeout: float = 120) -> tuple[list[dict], list[dict]]:
        task.setdefault("taskUUID", str(uuid.uuid4()))
        await self.ws.send(json.dumps([task]))
        items: list[dict] = []
        errors: list[dict] = []
        ended = done or (lambda items: bool(items))
        async with asyncio.timeout(timeout):
            while not errors and not ended(items):
                frame = json.loads(await self.ws.recv())
                assert not ("data" in frame and "errors" in frame)
                items += [i for i in frame.get("data", []) if i.get("taskUUID") == task["taskUUID"]]
                errors += [e for e in frame.get("errors", []) if e.get("taskUUID") == task["taskUUID"]]
        return items, errors

    async def upload(self, **fields: Any) -> tuple[list[dict], list[dict]]:
        task = {"taskType": "modelUpload", "format": "safetensors", "name": "test model", "version": "1",
                "uniqueIdentifier": str(uuid.uuid4()), "architecture": "sd1x", **fields}
        return await self.run(task, done=lambda items: any(i.get("status") == "ready" for i in items))

    async def infer(self, **fields: Any) -> tuple[list[dict], list[dict]]:
        task = {"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "a quiet harbour",
                "width": 64, "height": 64, "steps": 2, "seed": 11, "outputType": "base64Data", **fields}
        task = {k: v for k, v in task.items() if v is not None}
        return await self.run(task)

    async def search(self, **fields: Any) -> dict:
        items, errors = await self.run({"taskType": "modelSearch", **fields})
        assert not errors, errors
        return items[0]

    async def close(self) -> None:
        await self.ws.close()


def new_source(server: RunningServer, team: str = "default") -> str:
    name = "src" + uuid.uuid4().hex[:10]
    result = wisp_cli("sources", "create", name, "--team", team, "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    return name


def stored_files(server: RunningServer) -> list[Path]:
    return sorted((server.data_dir / "store").rglob("*.safetensors"))


def serve(file_server: FileServer, path: Path) -> str:
    target = file_server.root / f"{uuid.uuid4().hex}-{path.name}"
    shutil.copy(path, target)
    return file_server.url(target)


@pytest.fixture
async def sock(wisp_server: RunningServer):
    s = await Socket.open(wisp_server)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    return {
        "valid": {f.id: f for f in bad_files.write_valid_corpus(root / "valid")} if (root / "valid").mkdir() is None else {},
        "malformed": bad_files.write_malformed_corpus(root / "malformed") if (root / "malformed").mkdir() is None else [],
        "semantic": bad_files.write_semantic_corpus(root / "semantic"),
    }


async def test_lora_upload_streams_five_phases_in_order_and_is_searchable(sock, wisp_server, file_server, corpus):
    source = new_source(wisp_server)
    air = f"{source}:1@1"
    url = serve(file_server, corpus["valid"]["sd1-kohya-lora"].path)
    items, errors = await sock.upload(air=air, category="lora", downloadURL=url, tags=["ink", "style"],
                                      positiveTriggerWords="inkstyle", defaultWeight=0.7, comment="a test lora")
    assert not errors, errors
    assert [i["status"] for i in items] == PHASES
    assert all(set(i) == {"taskType", "taskUUID", "status", "message", "air"} and i["air"] == air for i in items)
    found = await sock.search(search="inkstyle")
    assert found["totalResults"] >= 1
    result = next(r for r in found["results"] if r["air"] == air)
    assert result["category"] == "lora" and result["tags"] == ["ink", "style"] and result["private"] is True
    assert result["defaultWeight"] == 0.7 and result["heroImage"] == "" and result["comment"] == "a test lora"
    by_tag = await sock.search(tags=["ink"], category="lora")
    assert [r["air"] for r in by_tag["results"]] == [air]


async def test_same_unique_identifier_reuses_the_file(sock, wisp_server, file_server, corpus):
    source = new_source(wisp_server)
    air = f"{source}:2@1"
    url = serve(file_server, corpus["valid"]["sd1-kohya-lora"].path)
    path = "/" + url.split("/", 3)[3]
    first, errors = await sock.upload(air=air, category="lora", downloadURL=url, uniqueIdentifier="v1-hash")
    assert not errors and file_server.hits[path] == 1
    again, errors = await sock.upload(air=air, category="lora", downloadURL=url, uniqueIdentifier="v1-hash", name="renamed")
    assert not errors
    assert [i["status"] for i in again] == PHASES
    assert file_server.hits[path] == 1  # no second download
    assert (await sock.search(search="renamed"))["results"][0]["air"] == air


async def test_builtin_model_is_listed_as_public(sock):
    found = await sock.search(category="checkpoint", visibility="public")
    builtin = next(r for r in found["results"] if r["air"] == "wisp:tiny-sd15@1")
    assert builtin["private"] is False and builtin["architecture"] == "sd1x" and isinstance(builtin["tags"], list)


async def test_malformed_files_are_refused_and_nothing_is_stored(sock, wisp_server, file_server, corpus):
    source = new_source(wisp_server)
    before = stored_files(wisp_server)
    assert len(corpus["malformed"]) >= 12
    for index, bad in enumerate(corpus["malformed"]):
        air = f"{source}:bad{index}@1"
        items, errors = await sock.upload(air=air, category="lora", downloadURL=serve(file_server, bad.path))
        assert errors, f"{bad.id} was accepted"
        assert errors[0]["code"] == "invalidModelFile", (bad.id, errors)
        assert bad.expected in errors[0]["message"], (bad.id, errors[0]["message"])
        assert [i["status"] for i in items] == ["validated", "downloaded"], bad.id
    assert stored_files(wisp_server) == before
    assert (await sock.search(search=source))["totalResults"] == 0
    assert list((wisp_server.data_dir / "tmp").glob("upload-*")) == []


async def test_wrong_declarations_are_refused_naming_both(sock, wisp_server, file_server, corpus):
    source = new_source(wisp_server)
    before = stored_files(wisp_server)
    for index, case in enumerate(corpus["semantic"]):
        fields: dict[str, Any] = {"category": case.category, "architecture": case.architecture}
        if case.category == "checkpoint":
            fields["type"] = "base"
        if case.category == "embeddings":
            fields["type"] = "positive"
        items, errors = await sock.upload(air=f"{source}:sem{index}@1", downloadURL=serve(file_server, case.path), **fields)
        assert errors, case.id
        error = errors[0]
        if error["code"] == "invalidModelFile":
            assert all(text in error["message"] for text in case.expected), (case.id, error)
            assert error["parameter"] == case.parameter
        else:  # refused before download: an architecture this build cannot load
            assert error["code"] == "invalidParameter" and error["parameter"] == "architecture", (case.id, error)
    assert stored_files(wisp_server) == before


async def test_sources_belong_to_teams(sock, wisp_server, file_server, corpus):
    foreign = new_source(wisp_server, team="someone-else")
    items, errors = await sock.upload(air=f"{foreign}:1@1", category="lora",
                                      downloadURL=serve(file_server, corpus["valid"]["sd1-kohya-lora"].path))
    assert errors[0]["code"] == "sourceNotAllowed" and errors[0]["parameter"] == "air" and items == []


async def test_field_validation(sock, wisp_server):
    source = new_source(wisp_server)
    base = dict(air=f"{source}:1@1", downloadURL="http://127.0.0.1:9/x.safetensors")
    cases = [
        (dict(category="checkpoint"), "missingParameter", "type"),
        (dict(category="lora", architecture="sd9"), "invalidParameter", "architecture"),
        (dict(category="lora", format="ckpt"), "unsupportedParameter", "format"),
        (dict(category="lora", defaultSteps=20), "invalidParameter", "defaultSteps"),
        (dict(category="lora", defaultWeight=5), "invalidParameter", "defaultWeight"),
        (dict(category="checkpoint", type="base", defaultCFG=31), "invalidParameter", "defaultCFG"),
        (dict(category="lora", tags=["a", "a"]), "invalidParameter", "tags"),
        (dict(category="lora", comment="x"), "invalidParameter", "comment"),
        (dict(category="controlnet"), "missingParameter", "conditioning"),
        (dict(category="lora", air="../../etc:1@1"), "invalidParameter", "air"),
    ]
    for fields, code, parameter in cases:
        items, errors = await sock.upload(**{**base, **fields})
        assert errors and errors[0]["code"] == code and errors[0]["parameter"] == parameter, (fields, errors)


async def test_download_guard(tmp_path_factory, file_server, corpus):
    strict = start_server(tmp_path_factory.mktemp("strict") / "data", allow_private=False, env={"WISP_WARM_BUILTIN": "0"})
    try:
        source = new_source(strict)
        s = await Socket.open(strict)
        url = serve(file_server, corpus["valid"]["sd1-kohya-lora"].path)
        for target in (url, "http://10.1.2.3/x.safetensors", "http://[::1]:1/x", "file:///etc/passwd", "ftp://example.com/x"):
            items, errors = await s.upload(air=f"{source}:1@1", category="lora", downloadURL=target)
            assert errors and errors[0]["code"] == "urlNotAllowed" and errors[0]["parameter"] == "downloadURL", (target, errors)
        await s.close()
    finally:
        stop_server(strict)


async def test_unreachable_url_fails_cleanly(sock, wisp_server):
    source = new_source(wisp_server)
    items, errors = await sock.upload(air=f"{source}:1@1", category="lora", downloadURL="http://127.0.0.1:9/nothing.safetensors", retry=0)
    assert errors[0]["code"] == "downloadFailed" and [i["status"] for i in items] == ["validated"]
    assert (await sock.search(search=source))["totalResults"] == 0


async def test_private_models_are_invisible_to_other_teams(sock, wisp_server, file_server, corpus):
    source = new_source(wisp_server)
    url = serve(file_server, corpus["valid"]["sd1-kohya-lora"].path)
    private_air, public_air = f"{source}:p@1", f"{source}:q@1"
    assert not (await sock.upload(air=private_air, category="lora", downloadURL=url))[1]
    assert not (await sock.upload(air=public_air, category="lora", downloadURL=url, private=False))[1]
    other = await Socket.open(wisp_server, wisp_server.create_key("team-b"))
    try:
        seen = {r["air"] for r in (await other.search(search=source))["results"]}
        assert seen == {public_air}
        mine = {r["air"] for r in (await sock.search(search=source, visibility="private"))["results"]}
        assert mine == {private_air}
        _, hidden = await other.infer(lora=[{"model": private_air, "weight": 1}])
        _, missing = await other.infer(lora=[{"model": f"{source}:nothing@1", "weight": 1}])
        assert hidden[0]["code"] == missing[0]["code"] == "modelNotFound"
        assert hidden[0]["message"].replace(private_air, "X") == missing[0]["message"].replace(f"{source}:nothing@1", "X")
    finally:
        await other.close()


async def test_put_file_then_upload_from_its_url(sock, wisp_server, corpus):
    source = new_source(wisp_server)
    data = corpus["valid"]["sd1-kohya-lora"].path.read_bytes()
    async with httpx.AsyncClient() as http:
        refused = await http.put(f"{wisp_server.http_url}/v1/files", content=data, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        put = await http.put(f"{wisp_server.http_url}/v1/files", content=data, headers={"Authorization": f"Bearer {wisp_server.key}"})
    assert put.status_code == 201 and put.json()["size"] == len(data)
    items, errors = await sock.upload(air=f"{source}:1@1", category="lora", downloadURL=put.json()["url"])
    assert not errors and [i["status"] for i in items] == PHASES
    other = await Socket.open(wisp_server, wisp_server.create_key("team-c"))
    other_source = new_source(wisp_server, "team-c")
    try:
        _, errors = await other.upload(air=f"{other_source}:1@1", category="lora", downloadURL=put.json()["url"])
        assert errors[0]["code"] == "downloadFailed"  # another team's file URL is not theirs to use
    finally:
        await other.close()


def test_wisp_upload_cli_and_usage(wisp_server, corpus):
    source = new_source(wisp_server)
    path = corpus["valid"]["sd1-kohya-lora"].path
    result = wisp_cli("upload", str(path), "--air", f"{source}:cli@1", "--category", "lora", "--server", wisp_server.ws_url,
                      "--api-key", wisp_server.key, "--tags", "cli,test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{source}:cli@1"
    for phase in PHASES:
        assert phase in result.stderr
    assert "100.0%" in result.stderr
    usage = wisp_cli("usage", "--data-dir", str(wisp_server.data_dir))
    line = next(l for l in usage.stdout.splitlines() if l.startswith("default "))
    stored_bytes, gb = int(line.split()[1]), int(line.split()[2])
    assert stored_bytes > 0 and gb == 1
    failed = wisp_cli("upload", str(path), "--air", "nosuchsource:1@1", "--category", "lora", "--server", wisp_server.ws_url,
                      "--api-key", wisp_server.key, "--quiet")
    assert failed.returncode == 1 and "the source 'nosuchsource' is not your team's" in failed.stderr
    assert "upload   [" not in failed.stderr  # refused before a byte was sent


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files in the built-in model's shapes: two LoRAs and a perturbed single-file checkpoint."""
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file
    from tests.fixtures.loras import write_lora

    root = tmp_path_factory.mktemp("tiny-files")
    folder = ensure_tiny_sd15(root / "data")
    return {
        "kohya": write_lora(folder, root / "kohya.safetensors", fmt="kohya", seed=1),
        "diffusers": write_lora(folder, root / "diffusers.safetensors", fmt="diffusers", seed=2),
        "checkpoint": write_sd15_single_file(folder, root / "ckpt.safetensors", noise_seed=3),
    }


async def test_uploaded_loras_change_the_image_and_weight_zero_is_exact(sock, wisp_server, file_server, tiny_files):
    source = new_source(wisp_server)
    kohya, diffusers = f"{source}:k@1", f"{source}:d@1"
    for air, key in ((kohya, "kohya"), (diffusers, "diffusers")):
        items, errors = await sock.upload(air=air, category="lora", downloadURL=serve(file_server, tiny_files[key]), defaultWeight=0.8)
        assert not errors, errors
    base, _ = await sock.infer()
    with_k, errors = await sock.infer(lora=[{"model": kohya, "weight": 1.0}])
    assert not errors, errors
    zero, _ = await sock.infer(lora=[{"model": kohya, "weight": 0}])
    both, _ = await sock.infer(lora=[{"model": kohya, "weight": 1.0}, {"model": diffusers, "weight": 0.5}])
    default_weight, _ = await sock.infer(lora=[{"model": kohya}])
    explicit_default, _ = await sock.infer(lora=[{"model": kohya, "weight": 0.8}])
    after, _ = await sock.infer()
    image = lambda items: items[0]["imageBase64Data"]  # noqa: E731
    assert image(with_k) != image(base)
    assert image(zero) == image(base)
    assert image(both) not in (image(base), image(with_k))
    assert image(default_weight) == image(explicit_default) != image(with_k)
    assert image(after) == image(base)  # nothing left applied


async def test_uploaded_checkpoint_is_usable_with_its_defaults(sock, wisp_server, file_server, tiny_files):
    source = new_source(wisp_server)
    air = f"{source}:ckpt@1"
    items, errors = await sock.upload(air=air, category="checkpoint", type="base", downloadURL=serve(file_server, tiny_files["checkpoint"]),
                                      defaultSteps=3, defaultCFG=4.5, defaultScheduler="Euler a")
    assert not errors, errors
    assert [i["status"] for i in items] == PHASES
    stored = stored_files(wisp_server)
    assert any(p.stat().st_size < tiny_files["checkpoint"].stat().st_size for p in stored)  # F32 stored as F16
    mine, errors = await sock.infer(model=air, steps=None, includeCost=True)
    assert not errors, errors
    builtin, _ = await sock.infer(includeCost=True)
    assert mine[0]["imageBase64Data"] != builtin[0]["imageBase64Data"]
    assert mine[0]["cost"] == round(0.0001 * (64 * 64 / 1048576) * 3, 6)  # defaultSteps=3 applied
    explicit, _ = await sock.infer(model=air, steps=3, CFGScale=4.5, scheduler="Euler a")
    again, _ = await sock.infer(model=air, steps=None)
    assert again[0]["imageBase64Data"] == explicit[0]["imageBase64Data"]
    lora_on_it, errors = await sock.infer(model=air, lora=[{"model": air}])
    assert errors[0]["code"] == "invalidParameter" and errors[0]["parameter"] == "lora[0].model"
