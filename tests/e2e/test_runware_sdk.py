"""End to end with the official Runware Python SDK (PyPI ``runware`` 0.5.x), unchanged."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid

import httpx
import pytest
from PIL import Image
from runware import IImageInference, Runware
from runware.utils import RunwareAPIError

MODEL = "wisp:tiny-sd15@1"


def request(**fields) -> IImageInference:
    base = dict(model=MODEL, positivePrompt="a lighthouse at dusk", width=64, height=64, steps=3)
    base.update(fields)
    return IImageInference(**base)


@pytest.fixture
async def rw(wisp_server):
    client = Runware(api_key=wisp_server.key, url=wisp_server.ws_url)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def test_authenticates_and_gets_a_session(rw):
    assert rw.connected()
    uuid.UUID(rw._connectionSessionUUID)


async def test_bad_key_is_refused(wisp_server):
    client = Runware(api_key="wisp_not-a-real-key", url=wisp_server.ws_url)
    await asyncio.wait_for(client.connect(), 15)
    try:
        assert client._invalidAPIkey == "Invalid API key"
    finally:
        await client.disconnect()


async def test_sdk_heartbeat_gets_pongs(rw):
    before = rw._last_pong_time
    await asyncio.sleep(5.6)  # the SDK pings every 5 s
    assert rw._last_pong_time > before


async def test_sync_inference_two_distinct_images_served_as_png(rw):
    images = await rw.imageInference(requestImage=request(numberResults=2, outputFormat="PNG"))
    assert len(images) == 2
    assert len({i.imageUUID for i in images}) == 2
    assert len({i.seed for i in images}) == 2
    bodies = []
    async with httpx.AsyncClient() as http:
        for image in images:
            response = await http.get(image.imageURL)
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/png"
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
            assert Image.open(io.BytesIO(response.content)).size == (64, 64)
            bodies.append(response.content)
    assert bodies[0] != bodies[1]


async def test_seeded_requests_are_reproducible(rw):
    a = await rw.imageInference(requestImage=request(seed=1234, outputType="base64Data"))
    b = await rw.imageInference(requestImage=request(seed=1234, outputType="base64Data"))
    assert a[0].seed == b[0].seed == 1234
    assert a[0].imageBase64Data == b[0].imageBase64Data
    assert a[0].imageUUID != b[0].imageUUID


async def test_base64_and_data_uri_outputs(rw):
    (b64,) = await rw.imageInference(requestImage=request(outputType="base64Data"))
    assert base64.b64decode(b64.imageBase64Data).startswith(b"\x89PNG")
    assert b64.imageURL is None
    (uri,) = await rw.imageInference(requestImage=request(outputType="dataURI", outputFormat="JPG", includeCost=True))
    assert uri.imageDataURI.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(uri.imageDataURI.split(",", 1)[1])[:3] == b"\xff\xd8\xff"
    assert isinstance(uri.cost, float) and uri.cost > 0


async def test_async_delivery_and_get_response(rw):
    ack = await rw.imageInference(requestImage=request(deliveryMethod="async", numberResults=2, seed=5))
    assert ack.taskType == "imageInference" and ack.taskUUID
    results = await asyncio.wait_for(rw.getResponse(taskUUID=ack.taskUUID, numberResults=2), 120)
    assert [r.seed for r in results] == [5, 6]
    assert all(r.status == "success" and r.imageUUID for r in results)
    details = await rw.getTaskDetails(ack.taskUUID)
    assert details.taskUUID == ack.taskUUID
    assert details.request[0].positivePrompt == "a lighthouse at dusk"
    assert len(details.response) == 2


async def test_img2img_from_a_local_file(rw, tmp_path):
    path = tmp_path / "source.png"
    Image.new("RGB", (80, 80), (30, 120, 200)).save(path)
    (out,) = await rw.imageInference(requestImage=request(seedImage=str(path), strength=0.6, outputType="base64Data", seed=3))
    (txt,) = await rw.imageInference(requestImage=request(outputType="base64Data", seed=3))
    image = Image.open(io.BytesIO(base64.b64decode(out.imageBase64Data)))
    assert image.size == (64, 64)
    assert out.imageBase64Data != txt.imageBase64Data


async def test_upload_image_then_use_it(rw, tmp_path):
    path = tmp_path / "upload.png"
    Image.new("RGB", (64, 64), (250, 10, 10)).save(path)
    uploaded = await rw.uploadImage(str(path))
    uuid.UUID(uploaded.imageUUID)
    async with httpx.AsyncClient() as http:
        assert (await http.get(uploaded.imageURL)).content.startswith(b"\x89PNG")
    (out,) = await rw.imageInference(requestImage=request(seedImage=uploaded.imageUUID, strength=0.5))
    assert out.imageURL


async def test_errors_reach_the_sdk_with_their_code(rw):
    with pytest.raises(RunwareAPIError) as info:
        await rw.imageInference(requestImage=request(model="civitai:999@1"))
    assert info.value.code == "modelNotFound"
    with pytest.raises(RunwareAPIError) as info:
        await rw.imageInference(requestImage=request(scheduler="Nonexistent Sampler"))
    assert info.value.code == "invalidParameter"


async def test_reused_task_uuid_conflicts(rw):
    task_uuid = str(uuid.uuid4())
    await rw.imageInference(requestImage=request(taskUUID=task_uuid))
    with pytest.raises(RunwareAPIError) as info:
        await rw.imageInference(requestImage=request(taskUUID=task_uuid))
    assert info.value.code == "conflictTaskUUID"


async def test_pings_stay_prompt_during_inference(wisp_server):
    """Pongs come back while a slow generation runs on the worker thread."""
    from websockets.asyncio.client import connect
    import json

    async with connect(wisp_server.ws_url) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": wisp_server.key}]))
        json.loads(await ws.recv())
        await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL,
                                   "positivePrompt": "x", "width": 512, "height": 512, "steps": 8}]))
        worst = 0.0
        for _ in range(10):
            start = time.perf_counter()
            await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame.get("data", [{}])[0].get("pong"):
                    break
            worst = max(worst, time.perf_counter() - start)
            await asyncio.sleep(0.05)
        # Generous bound: the point is that pongs do not wait for the image (seconds).
        assert worst < 1.0


async def test_sdk_model_upload_and_search(rw, wisp_server, file_server, tmp_path):
    from runware.types import IModelSearch, IUploadModelLora

    from tests.conftest import wisp_cli
    from tests.fixtures.bad_files import write_sd1_kohya_lora

    source = "sdk" + uuid.uuid4().hex[:8]
    assert wisp_cli("sources", "create", source, "--data-dir", str(wisp_server.data_dir)).returncode == 0
    folder = file_server.root / uuid.uuid4().hex
    folder.mkdir()
    lora = write_sd1_kohya_lora(folder)
    phases = await rw.modelUpload(
        IUploadModelLora(
            air=f"{source}:7@1", architecture="sd1x", name="sdk lora", downloadURL=file_server.url(lora),
            uniqueIdentifier="sdk-1", version="1.0", format="safetensors", private=True,
            tags=["sdk"], positiveTriggerWords="sdkword", defaultWeight=0.5,
        )
    )
    assert [p["status"] for p in phases] == ["validated", "downloaded", "optimized", "stored", "ready"]
    assert all(p["air"] == f"{source}:7@1" for p in phases)
    found = await rw.modelSearch(IModelSearch(search="sdkword"))
    assert found.totalResults == 1
    model = found.results[0]
    assert model.air == f"{source}:7@1" and model.private is True and model.tags == ["sdk"] and model.category == "lora"
    builtin = await rw.modelSearch(IModelSearch(category="checkpoint", visibility="public"))
    assert any(m.air == MODEL for m in builtin.results)


async def test_sdk_controlnet_guides_the_image(rw, tmp_path):
    """The 0.5 SDK's IControlNetGeneral: it uploads the guide first and sends every field (null where unset)."""
    from runware.types import IControlNetGeneral

    path = tmp_path / "guide.png"
    guide = Image.new("RGB", (64, 64), (0, 0, 0))
    for x in range(0, 64, 16):
        guide.paste((255, 255, 255), (x, 0, x + 8, 64))
    guide.save(path)
    (plain,) = await rw.imageInference(requestImage=request(outputType="base64Data", seed=5))
    (steered,) = await rw.imageInference(requestImage=request(
        outputType="base64Data", seed=5,
        controlNet=[IControlNetGeneral(model="wisp:tiny-controlnet-sd15@1", guideImage=str(path), weight=1.0, endStepPercentage=80)]))
    assert steered.imageBase64Data != plain.imageBase64Data
    (off,) = await rw.imageInference(requestImage=request(
        outputType="base64Data", seed=5,
        controlNet=[IControlNetGeneral(model="wisp:tiny-controlnet-sd15@1", guideImage=str(path), weight=0.0)]))
    assert off.imageBase64Data == plain.imageBase64Data


async def test_sdk_controlnet_canny_preprocesses_inline(rw, tmp_path):
    """The 0.5 SDK's IControlNetCanny always sends preprocessor "canny" with its thresholds."""
    from runware.types import IControlNetCanny

    path = tmp_path / "photo.png"
    photo = Image.new("RGB", (64, 64), (20, 40, 200))
    photo.paste((250, 240, 30), (16, 16, 48, 48))
    photo.save(path)
    (out,) = await rw.imageInference(requestImage=request(outputType="base64Data", seed=5, controlNet=[
        IControlNetCanny(model="wisp:tiny-controlnet-sd15@1", guideImage=str(path), lowThresholdCanny=80, highThresholdCanny=160)]))
    (plain,) = await rw.imageInference(requestImage=request(outputType="base64Data", seed=5))
    assert out.imageBase64Data != plain.imageBase64Data


async def test_sdk_image_upscale(rw, tmp_path):
    from runware.types import IImageUpscale

    path = tmp_path / "small.png"
    Image.new("RGB", (32, 24), (10, 200, 90)).save(path)
    (out,) = await rw.imageUpscale(IImageUpscale(inputImage=str(path), upscaleFactor=2, outputType="base64Data"))
    assert Image.open(io.BytesIO(base64.b64decode(out.imageBase64Data))).size == (64, 48)
    uuid.UUID(out.inputImageUUID)
