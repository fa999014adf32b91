"""Images expire: a request's ``ttl``, else the server's default retention, swept in the background (issue 16)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from engine.images.store import ImageStore
from engine.registry.db import Database
from tests.conftest import start_server, stop_server


def store(tmp_path: Path, default_ttl_s: float) -> ImageStore:
    return ImageStore(tmp_path / "images", tmp_path / "tmp", Database(tmp_path / "wisp.db"), default_ttl_s=default_ttl_s)


def test_a_requests_ttl_and_the_default_decide_when_an_image_goes(tmp_path: Path):
    images = store(tmp_path, default_ttl_s=1000)
    now = time.time()
    short, _ = images.put(b"short", "png", team="t", ttl_s=60)
    default, _ = images.put(b"default", "png", team="t")
    long, _ = images.put(b"long", "png", team="t", ttl_s=5000)
    assert images.sweep(now + 30) == 0
    assert images.sweep(now + 61) == 1 and images.find(short) is None and images.find(default) is not None
    assert images.sweep(now + 1001) == 1 and images.find(default) is None and images.find(long) is not None
    assert images.sweep(now + 5001) == 1 and images.find(long) is None
    rows = images.db.connect().execute("SELECT count(*) FROM image_owners").fetchone()[0]  # type: ignore[union-attr]
    assert rows == 0


def test_a_default_of_zero_keeps_images_and_shortening_it_applies_to_what_is_stored(tmp_path: Path):
    forever = store(tmp_path, default_ttl_s=0)
    kept, _ = forever.put(b"x", "png", team="t")
    assert forever.sweep(time.time() + 10 * 365 * 86400) == 0 and forever.find(kept) is not None
    shorter = store(tmp_path, default_ttl_s=10)  # the operator sets WISP_IMAGE_TTL later
    assert shorter.sweep(time.time() + 11) == 1 and shorter.find(kept) is None


def test_files_without_a_row_go_by_their_age_only_when_asked(tmp_path: Path):
    images = store(tmp_path, default_ttl_s=100)
    orphan, name = images.put(b"no team", "png")  # stored without a team: no row
    owned, owned_name = images.put(b"team", "png", team="t", ttl_s=10**9)
    old = time.time() - 200
    for file in (name, owned_name):
        os.utime(images.root / file, (old, old))
    assert images.sweep() == 0  # the cheap sweep only reads rows
    assert images.sweep(unowned=True) == 1
    assert images.find(orphan) is None and images.find(owned) is not None


def test_the_server_sweeps_expired_images_and_keeps_those_whose_ttl_is_longer(tmp_path: Path):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_IMAGE_TTL": "2",
                                                   "WISP_IMAGE_SWEEP_INTERVAL": "0.2"})
    try:
        async def generate(**extra) -> str:
            async with connect(running.ws_url, max_size=None) as ws:
                await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
                await ws.recv()
                task_uuid = str(uuid.uuid4())
                await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1",
                                           "positivePrompt": "x", "width": 64, "height": 64, "steps": 1, **extra}]))
                while True:
                    frame = json.loads(await ws.recv())
                    assert "errors" not in frame, frame
                    for item in frame["data"]:
                        if item.get("taskUUID") == task_uuid and "imageURL" in item:
                            return str(item["imageURL"])

        default_url = asyncio.run(generate())
        kept_url = asyncio.run(generate(ttl=3600))
        assert httpx.get(default_url).status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(default_url).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        gone = httpx.get(default_url)
        assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "imageNotFound"
        assert httpx.get(kept_url).status_code == 200
        assert "expired image(s)" in running.log()
    finally:
        stop_server(running)
