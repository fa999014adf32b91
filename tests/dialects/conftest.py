"""Fixtures for the REST dialect tests: one server of their own, tiny model files, HTTP helpers.

The dialects' own server keeps their team settings (quotas, default sources)
and model names apart from the rest of the suite.  Model files are the
built-in tiny SD-1.x model's shapes, served over loopback by ``file_server``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.conftest import FileServer, RunningServer, start_server, stop_server

TIMEOUT = 120.0


@pytest.fixture(scope="session")
def dialect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("dialects") / "data")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRAs and a single-file checkpoint in the built-in model's shapes."""
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file
    from tests.fixtures.loras import write_lora

    root = tmp_path_factory.mktemp("dialect-files")
    folder = ensure_tiny_sd15(root / "data")
    return {
        "lora": write_lora(folder, root / "lora.safetensors", fmt="kohya", seed=5, scale=0.5),
        "lora2": write_lora(folder, root / "lora2.safetensors", fmt="diffusers", seed=6),
        "checkpoint": write_sd15_single_file(folder, root / "ckpt.safetensors", noise_seed=7),
    }


@pytest.fixture
def http(dialect_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dialect_server.http_url, timeout=TIMEOUT, trust_env=False) as client:
        yield client


def serve(file_server: FileServer, path: Path) -> str:
    """A loopback URL for a copy of ``path`` (a fresh name each time)."""
    target = file_server.root / f"{uuid.uuid4().hex}{path.suffix}"
    shutil.copy(path, target)
    return file_server.url(target)


def native(http: httpx.Client, key: str, task: dict[str, Any]) -> dict[str, Any]:
    """POST one native task to ``/v1`` (sync: the reply holds every item or the error)."""
    task = {"taskUUID": str(uuid.uuid4()), **task}
    r = http.post("/v1", json=[task], headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def native_upload(http: httpx.Client, key: str, url: str, **fields: Any) -> dict[str, Any]:
    task = {"taskType": "modelUpload", "format": "safetensors", "version": "1", "architecture": "sd1x",
            "uniqueIdentifier": str(uuid.uuid4()), "downloadURL": url, **fields}
    return native(http, key, task)


def search(http: httpx.Client, key: str, **fields: Any) -> dict[str, Any]:
    body = native(http, key, {"taskType": "modelSearch", **fields})
    assert "errors" not in body, body
    return body["data"][0]


def poll(fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Call ``fetch`` until ``done`` holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        body = fetch()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)
