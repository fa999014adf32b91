"""Generated PNGs carry their parameters as AUTOMATIC1111 writes them (issue 17): on by default, off per request
(``embedParameters: false``) or per server (``--no-png-parameters`` / ``WISP_PNG_PARAMETERS=0``); bytes stay
deterministic and the pixels do not change."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from websockets.asyncio.client import connect

from engine.images.infotext import parameters_text
from engine.jobs import InferenceJob, LoraRef, ModelRef
from server.cli import build_parser
from tests.conftest import start_server, stop_server


async def _generate(running, **extra) -> bytes:
    async with connect(running.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": running.key}]))
        await ws.recv()
        task_uuid = str(uuid.uuid4())
        await ws.send(json.dumps([{"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1",
                                   "positivePrompt": "a red circle, at the top left", "negativePrompt": "blurry",
                                   "width": 64, "height": 64, "steps": 2, "CFGScale": 6.5, "seed": 7, **extra}]))
        while True:
            frame = json.loads(await ws.recv())
            assert "errors" not in frame, frame
            for item in frame["data"]:
                if item.get("taskUUID") == task_uuid and "imageURL" in item:
                    return httpx.get(item["imageURL"]).content


def test_pngs_carry_a1111_parameters_unless_the_request_or_the_server_says_no(tmp_path: Path):
    running = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_PNG_PARAMETERS": "1"})
    try:
        first = asyncio.run(_generate(running))
        again = asyncio.run(_generate(running))
        bare = asyncio.run(_generate(running, embedParameters=False))
    finally:
        stop_server(running)
    assert first == again  # deterministic bytes
    text = Image.open(io.BytesIO(first)).text["parameters"]
    prompt, negative, fields = text.split("\n")
    assert prompt == "a red circle, at the top left"
    assert negative == "Negative prompt: blurry"
    assert fields.startswith("Steps: 2, Sampler: Default, CFG scale: 6.5, Seed: 7, Size: 64x64, Model: ")
    assert "AIR: wisp:tiny-sd15@1" in fields
    assert "parameters" not in Image.open(io.BytesIO(bare)).text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(Image.open(io.BytesIO(bare))))


def test_the_server_switch_flag_and_environment(monkeypatch):
    from server.cli import serve_config

    monkeypatch.delenv("WISP_PNG_PARAMETERS", raising=False)
    assert serve_config(build_parser().parse_args(["serve"])).png_parameters is True
    assert serve_config(build_parser().parse_args(["serve", "--no-png-parameters"])).png_parameters is False
    monkeypatch.setenv("WISP_PNG_PARAMETERS", "0")
    assert serve_config(build_parser().parse_args(["serve"])).png_parameters is False


def test_infotext_names_loras_by_short_hash_and_quotes_values_with_separators():
    job = InferenceJob(
        task_uuid=str(uuid.uuid4()), team="t", owner="o",
        model=ModelRef(air="team:base@1", architecture="sd1x", builtin=False, sha256="ab" * 32, name="my, model"),
        prompt="a star", negative_prompt=None, width=64, height=64, steps=20, cfg_scale=7.0, scheduler="Euler a", seeds=(3,),
        loras=(LoraRef(air="team:sks@1", sha256="cd" * 32, weight=0.8),), png_parameters=True,
    )  # fmt: skip
    text = parameters_text(job, 3, (64, 64))
    assert text == (
        "a star\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, Model hash: ababababab, Model: "my, model", '
        'AIR: team:base@1, Lora hashes: "team:sks@1: cdcdcdcdcd", Lora weights: "team:sks@1: 0.8", Version: wisp'
    )
