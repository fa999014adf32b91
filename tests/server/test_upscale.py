"""Upscaling under both task names, by the built-in Lanczos upscaler (issue 15)."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image

from tests.server.test_raw_protocol import WireClient, client, new_uuid, raw  # noqa: F401 - fixtures


def png_uri(size: tuple[int, int] = (40, 30)) -> str:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((20, 20, 220), (10, 5, 30, 25))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def test_image_upscale_doubles_both_sides(client: WireClient):
    (item,) = await client.run({"taskType": "imageUpscale", "taskUUID": new_uuid(), "inputImage": png_uri(), "upscaleFactor": 2,
                                "includeCost": True})
    assert item["taskType"] == "imageUpscale" and item["cost"] == 0.0 and item["inputImageUUID"] != item["imageUUID"]
    async with httpx.AsyncClient() as http:
        image = Image.open(io.BytesIO((await http.get(item["imageURL"])).content))
        source = Image.open(io.BytesIO((await http.get(item["imageURL"].replace(item["imageUUID"], item["inputImageUUID"]))).content))
    assert image.size == (80, 60) and source.size == (40, 30)


async def test_upscale_new_name_inputs_and_settings(client: WireClient):
    (first,) = await client.run({"taskType": "upscale", "taskUUID": new_uuid(), "model": "wisp:lanczos-upscaler@1",
                                 "inputs": {"image": png_uri()}, "settings": {"upscaleFactor": 3}, "outputType": "base64Data",
                                 "outputFormat": "WEBP"})
    assert Image.open(io.BytesIO(base64.b64decode(first["imageBase64Data"]))).size == (120, 90)
    (again,) = await client.run({"taskType": "upscale", "taskUUID": new_uuid(), "inputImage": first["imageUUID"], "upscaleFactor": 1.5,
                                 "outputType": "dataURI"})
    assert again["inputImageUUID"] == first["imageUUID"] and again["imageDataURI"].startswith("data:image/png;base64,")


async def test_refusals(client: WireClient):
    model = await client.error_of({"taskType": "upscale", "taskUUID": new_uuid(), "inputImage": png_uri(), "model": "runware:500@1"})
    assert model["code"] == "modelNotFound" and model["parameter"] == "model" and "wisp:lanczos-upscaler@1" in model["message"]
    big = await client.error_of({"taskType": "imageUpscale", "taskUUID": new_uuid(), "inputImage": png_uri((2048, 2048)), "upscaleFactor": 4})
    assert big["code"] == "workLimitExceeded" and big["parameter"] == "upscaleFactor"
    factor = await client.error_of({"taskType": "imageUpscale", "taskUUID": new_uuid(), "inputImage": png_uri(), "upscaleFactor": 8})
    assert factor["code"] == "invalidParameter" and factor["parameter"] == "upscaleFactor" and factor["max"] == 4
    target = await client.error_of({"taskType": "imageUpscale", "taskUUID": new_uuid(), "inputImage": png_uri(), "targetMegapixels": 4})
    assert target["code"] == "unsupportedParameter" and target["parameter"] == "targetMegapixels"
