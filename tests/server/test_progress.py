"""Opt-in progress items for imageInference: only when asked, in step order, before the results."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.conftest import RunningServer
from tests.server.test_raw_protocol import WireClient, inference, open_client


async def run(server: RunningServer, **fields) -> list[dict]:
    client: WireClient = await open_client(server.ws_url)
    try:
        assert "data" in await client.authenticate(server.key)
        task = inference(**fields)
        u = task["taskUUID"]
        count = fields.get("numberResults", 1)
        await client.request([task], lambda: len([i for i in client.data_for(u) if "imageUUID" in i]) >= count or bool(client.errors_for(u)))
        assert not client.errors_for(u)
        return client.data_for(u)
    finally:
        await client.ws.close()


async def test_no_progress_unless_asked(wisp_server: RunningServer):
    items = await run(wisp_server, steps=4)
    assert len(items) == 1 and "imageUUID" in items[0]


async def test_progress_items_come_in_order_before_the_results(wisp_server: RunningServer):
    items = await run(wisp_server, steps=4, numberResults=2, includeProgress=True, scheduler="Euler")
    progress, results = items[:-2], items[-2:]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    for p in progress:
        assert p["status"] == "processing" and p["steps"] == 4 and p["taskType"] == "imageInference"
        assert "imageUUID" not in p and "previewImages" not in p
    assert [p["progress"] for p in progress] == [0.25, 0.5, 0.75, 1.0]
    assert all("imageUUID" in r for r in results)


async def test_previews_are_small_pngs_one_per_image(wisp_server: RunningServer):
    items = await run(wisp_server, steps=2, numberResults=2, includeProgress=True, includePreviews=True, width=128, height=64, scheduler="Euler")
    previews = [p["previewImages"] for p in items if p.get("status") == "processing"]
    assert len(previews) == 2 and all(len(p) == 2 for p in previews)
    image = Image.open(io.BytesIO(base64.b64decode(previews[0][0].split(",", 1)[1])))
    assert image.format == "PNG" and image.size == (128, 64)  # 16×8 latents, enlarged to ≥ 64 px a side


async def test_img2img_counts_the_steps_it_runs(wisp_server: RunningServer):
    seed = await run(wisp_server, steps=2, outputType="dataURI")
    items = await run(wisp_server, steps=10, strength=0.5, seedImage=seed[0]["imageDataURI"], includeProgress=True, scheduler="Euler")
    steps = [p["steps"] for p in items if p.get("status") == "processing"]
    assert steps and set(steps) == {5} and len(steps) == 5
