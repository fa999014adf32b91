"""ControlNet preprocessing as a task, under both names and shapes; its edge map feeds a ControlNet (issue 15)."""

from __future__ import annotations

import base64
import io
import uuid

import httpx
import numpy as np
from PIL import Image

from tests.server.test_raw_protocol import WireClient, client, new_uuid, raw  # noqa: F401 - fixtures

CONTROLNET = "wisp:tiny-controlnet-sd15@1"


def photo_uri() -> str:
    image = Image.new("RGB", (96, 80), (30, 60, 200))
    image.paste((250, 240, 30), (20, 20, 60, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def edge_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


async def test_old_name_gives_an_edge_map_and_its_input(client: WireClient):
    task = {"taskType": "imageControlNetPreProcess", "taskUUID": new_uuid(), "inputImage": photo_uri(), "preProcessorType": "canny",
            "width": 64, "height": 64, "lowThresholdCanny": 50, "highThresholdCanny": 150, "includeCost": True}
    (item,) = await client.run(task)
    assert item["taskType"] == "imageControlNetPreProcess" and item["cost"] == 0.0
    uuid.UUID(item["guideImageUUID"]), uuid.UUID(item["inputImageUUID"])
    assert "imageUUID" not in item  # the old shape gets the old fields only
    async with httpx.AsyncClient() as http:
        edges = edge_pixels((await http.get(item["guideImageURL"])).content)
    assert edges.shape == (64, 64) and set(np.unique(edges)) <= {0, 255} and 0 < (edges == 255).mean() < 0.5


async def test_new_name_and_shape_and_the_guide_feeds_a_controlnet(client: WireClient):
    task = {"taskType": "controlNetPreprocess", "taskUUID": new_uuid(), "model": "runware:controlnet-preprocess@canny",
            "inputs": {"image": photo_uri()}, "settings": {"lowThresholdCanny": 50, "highThresholdCanny": 150},
            "outputType": "base64Data"}
    (item,) = await client.run(task)
    assert item["guideImageUUID"] == item["imageUUID"] and item["guideImageBase64Data"] == item["imageBase64Data"]
    flat = {"taskType": "controlNetPreprocess", "taskUUID": new_uuid(), "inputImage": item["inputImageUUID"],
            "preProcessorType": "canny", "lowThresholdCanny": 50, "highThresholdCanny": 150, "outputType": "base64Data"}
    (again,) = await client.run(flat)  # the flat shape under the new name; the input by its imageUUID
    assert again["inputImageUUID"] == item["inputImageUUID"] and again["guideImageBase64Data"] == item["guideImageBase64Data"]
    steered = {"taskType": "imageInference", "taskUUID": new_uuid(), "model": "wisp:tiny-sd15@1", "positivePrompt": "a cat",
               "width": 64, "height": 64, "steps": 2, "seed": 3, "outputType": "base64Data",
               "controlNet": [{"model": CONTROLNET, "guideImage": item["guideImageUUID"]}]}
    plain = {**steered, "taskUUID": new_uuid(), "controlNet": []}
    (with_guide,) = await client.run(steered)
    (without,) = await client.run(plain)
    assert with_guide["imageBase64Data"] != without["imageBase64Data"]


async def test_refusals_name_what_is_wrong(client: WireClient):
    base = {"taskType": "imageControlNetPreProcess", "inputImage": photo_uri()}
    depth = await client.error_of({**base, "taskUUID": new_uuid(), "preProcessorType": "depth_midas"})
    assert depth["code"] == "unsupportedParameter" and depth["parameter"] == "preProcessorType" and "depth estimator" in depth["message"]
    none = await client.error_of({**base, "taskUUID": new_uuid()})
    assert none["code"] == "missingParameter" and none["parameter"] == "preProcessorType"
    model = await client.error_of({"taskType": "controlNetPreprocess", "taskUUID": new_uuid(), "inputs": {"image": photo_uri()},
                                   "model": "runware:controlnet-preprocess@openpose"})
    assert model["code"] == "unsupportedParameter" and model["parameter"] == "model"
    missing = await client.error_of({**base, "taskUUID": new_uuid(), "preProcessorType": "canny", "inputImage": str(uuid.uuid4())})
    assert missing["code"] == "imageNotFound" and missing["parameter"] == "inputImage"
