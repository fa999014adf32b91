"""The engine driven directly: real diffusers pipelines on the built-in model."""

from __future__ import annotations

import base64
import io
import uuid

import msgspec
import pytest
from PIL import Image

from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR
from engine.errors import InvalidImage, InvalidInput, ModelNotFound
from engine.schedulers import SCHEDULERS, canonical_scheduler
from protocol.inference import ImageInference


def task(**fields) -> ImageInference:
    base = dict(taskUUID=str(uuid.uuid4()), model=BUILTIN_SD15_AIR, positivePrompt="a red fox", width=64, height=64, steps=3, seed=7)
    base.update(fields)
    return msgspec.convert({"taskType": "imageInference", **base}, ImageInference)


async def test_same_seed_same_bytes_and_seeds_per_image(engine):
    first = await engine.generate(task(numberResults=2), team="t", owner="a")
    again = await engine.generate(task(numberResults=2), team="t", owner="a")
    assert [r.seed for r in first] == [7, 8]
    assert [r.data for r in first] == [r.data for r in again]
    assert first[0].data != first[1].data
    assert first[0].data.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(first[0].data))
    assert image.size == (64, 64)
    assert (engine.images.root / first[0].file_name).read_bytes() == first[0].data


async def test_prompt_and_negative_prompt_change_the_image(engine):
    base = await engine.generate(task(), team="t", owner="a")
    other = await engine.generate(task(positivePrompt="a blue whale"), team="t", owner="a")
    negative = await engine.generate(task(negativePrompt="blurry"), team="t", owner="a")
    assert base[0].data != other[0].data
    assert base[0].data != negative[0].data


async def test_random_seed_is_reported(engine):
    results = await engine.generate(task(seed=None, numberResults=2), team="t", owner="a")
    assert all(isinstance(r.seed, int) and r.seed >= 0 for r in results)


@pytest.mark.parametrize("name", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LCM", "euler A", "UniPCMultistepScheduler"])
async def test_schedulers_run_and_differ_from_default(engine, name):
    default = await engine.generate(task(), team="t", owner="a")
    other = await engine.generate(task(scheduler=name), team="t", owner="a")
    assert len(other) == 1
    assert other[0].data != default[0].data


def test_unknown_scheduler_lists_known_names():
    with pytest.raises(InvalidInput) as info:
        canonical_scheduler("Bogus 3000")
    assert info.value.parameter == "scheduler"
    assert "Euler a" in info.value.message and "DPM++ 2M Karras" in info.value.message
    assert canonical_scheduler("dpm++ 2m karras") == "DPM++ 2M Karras"
    assert set(SCHEDULERS) >= {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LCM"}


async def test_clip_skip_changes_conditioning(engine):
    plain = await engine.generate(task(), team="t", owner="a")
    skipped = await engine.generate(task(clipSkip=2), team="t", owner="a")
    assert plain[0].data != skipped[0].data


async def test_output_formats(engine):
    jpg = await engine.generate(task(outputFormat="JPG", outputQuality=80), team="t", owner="a")
    webp = await engine.generate(task(outputFormat="WEBP"), team="t", owner="a")
    assert jpg[0].data[:3] == b"\xff\xd8\xff" and jpg[0].file_name.endswith(".jpg")
    assert webp[0].data[:4] == b"RIFF" and webp[0].data[8:12] == b"WEBP"


async def test_img2img_and_inpaint(engine):
    source = await engine.generate(task(), team="t", owner="a")
    uploaded, _ = await engine.upload_image(base64.b64encode(source[0].data).decode())
    weak = await engine.generate(task(seedImage=uploaded, strength=0.3, positivePrompt="x"), team="t", owner="a")
    strong = await engine.generate(task(seedImage=uploaded, strength=0.9, positivePrompt="x"), team="t", owner="a")
    assert weak[0].data != strong[0].data
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    mask_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    painted = await engine.generate(task(seedImage=uploaded, maskImage=mask_uri, positivePrompt="x"), team="t", owner="a")
    assert Image.open(io.BytesIO(painted[0].data)).size == (64, 64)
    assert painted[0].data != weak[0].data


async def test_img2img_resizes_input_to_requested_size(engine):
    big = Image.new("RGB", (200, 120), (200, 30, 30))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    out = await engine.generate(task(seedImage=base64.b64encode(buf.getvalue()).decode(), width=96, height=64), team="t", owner="a")
    assert Image.open(io.BytesIO(out[0].data)).size == (96, 64)


async def test_unknown_model_and_lora(engine):
    with pytest.raises(ModelNotFound) as info:
        await engine.generate(task(model="civitai:1@1"), team="t", owner="a")
    assert info.value.parameter == "model"
    with pytest.raises(ModelNotFound) as info:
        await engine.generate(task(lora=[{"model": "civitai:2@1", "weight": 1}]), team="t", owner="a")
    assert info.value.parameter == "lora[0].model"


async def test_bad_input_images(engine):
    with pytest.raises(InvalidImage):
        await engine.generate(task(seedImage=base64.b64encode(b"not an image").decode()), team="t", owner="a")
    with pytest.raises(InvalidImage):
        await engine.generate(task(seedImage="data:image/png;base64,@@@"), team="t", owner="a")
    from engine.errors import ImageNotFound

    with pytest.raises(ImageNotFound):
        await engine.generate(task(seedImage=str(uuid.uuid4())), team="t", owner="a")


def test_trailing_schedulers_count_timesteps_from_the_end():
    from diffusers import EulerDiscreteScheduler

    from engine.schedulers import make_scheduler

    base = EulerDiscreteScheduler().config
    plain, trailing = make_scheduler("Euler", base), make_scheduler("euler TRAILING", base)
    plain.set_timesteps(4)
    trailing.set_timesteps(4)
    # trailing: evenly spaced back from the last trained timestep, never reaching 0 (what Lightning/Turbo expect)
    assert [int(t) for t in trailing.timesteps] == [999, 749, 499, 249]
    assert [int(t) for t in plain.timesteps] != [int(t) for t in trailing.timesteps]
    assert make_scheduler("Euler a trailing", base).config.timestep_spacing == "trailing"
