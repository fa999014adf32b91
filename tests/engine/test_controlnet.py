"""ControlNet through the engine (issue 15, first part): built-in tiny ControlNets on both families."""

from __future__ import annotations

import base64
import io
import uuid

import msgspec
import numpy as np
import pytest
from PIL import Image

from engine.builtin.tiny_controlnet import BUILTIN_CONTROLNET_SD15_AIR, BUILTIN_CONTROLNET_SDXL_AIR
from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR
from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR
from engine.errors import InvalidInput
from protocol.inference import ImageInference
from protocol.models import ModelSearch


def guide(pattern: str = "stripes", size: int = 64) -> str:
    """A guide image as a data URI: stripes or a checkerboard (different edges, same colours)."""
    y, x = np.indices((size, size))
    values = ((x // 8) % 2) if pattern == "stripes" else (((x // 8) + (y // 8)) % 2)
    image = Image.fromarray((values * 255).astype(np.uint8)).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def task(model: str = BUILTIN_SD15_AIR, **fields) -> ImageInference:
    base = dict(taskUUID=str(uuid.uuid4()), model=model, positivePrompt="a red fox", width=64, height=64, steps=4, seed=7)
    base.update(fields)
    return msgspec.convert({"taskType": "imageInference", **base}, ImageInference)


def control(model: str = BUILTIN_CONTROLNET_SD15_AIR, **fields) -> dict:
    return {"model": model, "guideImage": guide(), **fields}


async def pixels(engine, t: ImageInference) -> np.ndarray:
    [image] = await engine.generate(t, team="t", owner="a")
    return np.asarray(Image.open(io.BytesIO(image.data))).astype(int)


@pytest.mark.parametrize(("model", "controlnet"), [(BUILTIN_SD15_AIR, BUILTIN_CONTROLNET_SD15_AIR),
                                                   (BUILTIN_SDXL_AIR, BUILTIN_CONTROLNET_SDXL_AIR)])
async def test_the_builtin_controlnet_steers_and_weight_zero_is_the_plain_image(engine, model, controlnet):
    plain = await pixels(engine, task(model))
    steered = await pixels(engine, task(model, controlNet=[control(controlnet)]))
    other_guide = await pixels(engine, task(model, controlNet=[control(controlnet, guideImage=guide("checks"))]))
    off = await pixels(engine, task(model, controlNet=[control(controlnet, weight=0)]))
    assert np.abs(steered - plain).mean() > 1 and np.abs(other_guide - steered).mean() > 1
    assert np.array_equal(off, plain)  # weight 0: bit for bit the plain image
    again = await pixels(engine, task(model, controlNet=[control(controlnet)]))
    assert np.array_equal(again, steered)  # deterministic


async def test_step_ranges_modes_and_two_controlnets_differ(engine):
    full = await pixels(engine, task(controlNet=[control()]))
    late = await pixels(engine, task(controlNet=[control(startStep=2)]))
    late_pct = await pixels(engine, task(controlNet=[control(startStepPercentage=50)]))
    early = await pixels(engine, task(controlNet=[control(endStepPercentage=50)]))
    guess = await pixels(engine, task(controlNet=[control(controlMode="controlnet")]))
    prompt_first = await pixels(engine, task(controlNet=[control(controlMode="prompt")]))
    half = await pixels(engine, task(controlNet=[control(weight=0.5)]))
    two = await pixels(engine, task(controlNet=[control(), control(guideImage=guide("checks"), weight=0.7)]))
    assert np.array_equal(late, late_pct)  # step 2 of 4 is 50 %
    for other in (late, early, guess, two):
        assert np.abs(other - full).mean() > 0.5
    assert np.array_equal(prompt_first, half)  # "prompt" halves the weight


async def test_img2img_and_inpainting_take_a_controlnet(engine):
    seed_image = guide("checks")
    plain = await pixels(engine, task(seedImage=seed_image, strength=0.8))
    steered = await pixels(engine, task(seedImage=seed_image, strength=0.8, controlNet=[control()]))
    assert np.abs(steered - plain).mean() > 0.5
    mask = guide("stripes")
    inpainted = await pixels(engine, task(seedImage=seed_image, maskImage=mask, controlNet=[control()]))
    assert inpainted.shape[:2] == (64, 64)


async def test_refusals_name_the_field(engine):
    with pytest.raises(InvalidInput) as wrong_family:
        await engine.generate(task(BUILTIN_SDXL_AIR, controlNet=[control(BUILTIN_CONTROLNET_SD15_AIR)]), team="t", owner="a")
    assert wrong_family.value.parameter == "controlNet[0].model"
    from engine.errors import ModelNotFound

    with pytest.raises(ModelNotFound) as missing:
        await engine.generate(task(controlNet=[control("nobody:nothing@1")]), team="t", owner="a")
    assert missing.value.parameter == "controlNet[0].model"


async def test_modelsearch_lists_the_builtin_controlnets(engine):
    found = await engine.search_models(msgspec.convert({"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "category": "controlnet"},
                                                       ModelSearch), "t")
    airs = {m.air: m for m in found.results}
    assert {BUILTIN_CONTROLNET_SD15_AIR, BUILTIN_CONTROLNET_SDXL_AIR} <= set(airs)
    assert airs[BUILTIN_CONTROLNET_SDXL_AIR].architecture == "sdxl" and airs[BUILTIN_CONTROLNET_SD15_AIR].category == "controlnet"


async def test_the_cached_controlnet_pipeline_keeps_no_controlnet_alive(engine):
    """The ControlNet is pinned in the model cache only while a run uses it: the reused pipeline drops it after."""
    await pixels(engine, task(controlNet=[control()]))
    from engine.models import BUILTIN_MODELS

    model = engine.library.pipeline(BUILTIN_MODELS[BUILTIN_SD15_AIR])
    assert model._variants["controlnet-txt2img"].controlnet is None
    key = next(k for k in engine.cache.keys() if str(k).startswith(BUILTIN_CONTROLNET_SD15_AIR))
    assert engine.cache.tier_of(key) is not None  # and the cache holds it, counted, for the next request


def photo(size: int = 80) -> tuple[str, Image.Image]:
    """A 'photo' with shapes (a disc and a bar on a gradient), as a data URI and as the image."""
    y, x = np.indices((size, size))
    rgb = np.stack([x * 3 % 256, y * 3 % 256, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[(x - 40) ** 2 + (y - 40) ** 2 < 300] = (250, 250, 20)
    rgb[10:20, 5:70] = (10, 10, 200)
    image = Image.fromarray(rgb)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode(), image


async def test_canny_inline_equals_sending_its_edge_map(engine):
    from engine.preprocessors import canny

    uri, image = photo()
    inline = await pixels(engine, task(controlNet=[control(guideImage=uri, preprocessor="canny", lowThresholdCanny=50,
                                                           highThresholdCanny=150)]))
    edges = canny(image.resize((64, 64), Image.Resampling.LANCZOS), 50, 150)
    assert 0 < (np.asarray(edges) > 0).mean() < 0.5  # an edge map: some white, mostly black
    out = io.BytesIO()
    edges.save(out, format="PNG")
    sent = await pixels(engine, task(controlNet=[control(guideImage="data:image/png;base64," + base64.b64encode(out.getvalue()).decode())]))
    raw = await pixels(engine, task(controlNet=[control(guideImage=uri)]))
    assert np.array_equal(inline, sent) and not np.array_equal(inline, raw)


@pytest.mark.parametrize(("name", "needs"), [("depth_midas", "depth estimator"), ("openpose_face", "pose estimator"),
                                             ("softedge_hed", "soft-edge network"), ("magic", "no preprocessor")])
async def test_preprocessors_that_need_a_model_are_refused_naming_it(engine, name, needs):
    from engine.preprocessors import PreprocessorUnavailable

    with pytest.raises(PreprocessorUnavailable) as refused:
        await engine.generate(task(controlNet=[control(preprocessor=name)]), team="t", owner="a")
    assert refused.value.parameter == "controlNet[0].preprocessor" and needs in refused.value.message


async def test_an_uploaded_controlnet_runs_like_the_builtin_it_was_made_from(engine, tmp_path):
    """The built-in ControlNet's own file, uploaded (diffusers layout): the same weights, stored at 16 bits, so nearly
    the same image (the upload's storage rounding is the only difference)."""
    import shutil

    from engine.controlnets import BUILTIN_CONTROLNETS
    from protocol.models import ModelUpload

    from engine.models import LOAD_LOCK

    with LOAD_LOCK:  # a first build imports diffusers: never beside the worker thread's own imports
        folder = BUILTIN_CONTROLNETS[BUILTIN_CONTROLNET_SD15_AIR].builtin_controlnet.build(engine.config.data_dir)
    path = tmp_path / "my-controlnet.safetensors"
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", path)
    if engine.registry.source_team("cnsrc") is None:
        engine.registry.create_source("cnsrc", "t")
    air = f"cnsrc:{uuid.uuid4().hex[:8]}@1"

    async def emit(status: str, message: str) -> None:
        pass

    body = dict(taskUUID=str(uuid.uuid4()), air=air, category="controlnet", architecture="sd1x", conditioning="canny",
                downloadURL="https://example.invalid/c.safetensors", uniqueIdentifier=uuid.uuid4().hex, name="mine", version="1")
    await engine.upload_model(msgspec.convert({"taskType": "modelUpload", **body}, ModelUpload), "t", emit, local_source=path)
    uploaded = await pixels(engine, task(controlNet=[control(air)]))
    builtin = await pixels(engine, task(controlNet=[control()]))
    plain = await pixels(engine, task())
    assert np.abs(uploaded - builtin).mean() < 0.1 * np.abs(builtin - plain).mean()
    with pytest.raises(InvalidInput) as wrong_family:  # an SD-1.x ControlNet on the SDXL model
        await engine.generate(task(BUILTIN_SDXL_AIR, controlNet=[control(air)]), team="t", owner="a")
    assert wrong_family.value.parameter == "controlNet[0].model"


async def test_outpaint_returns_the_extended_size_and_keeps_the_seed_pixels(engine):
    """Outpaint (issue 15): the extended size, the seed image's own pixels kept exactly outside the feathered seam."""
    _, source = photo(48)
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    seed = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    out = await pixels(engine, task(seedImage=seed, width=64, height=64, outpaint={"top": 8, "right": 0, "bottom": 8, "left": 16,
                                                                                    "blur": 4}))
    assert out.shape[:2] == (64, 64)
    assert np.array_equal(out[8:56, 16:64], np.asarray(source).astype(int))  # the seed image, as sent
    assert np.abs(out[:8, :] - np.asarray(source)[0:1, :1]).mean() > 0  # the margins were painted, not left blank
    with pytest.raises(InvalidInput) as wrong_size:
        await engine.generate(task(seedImage=seed, width=64, height=64, outpaint={"top": 8, "left": 16}), team="t", owner="a")
    assert wrong_size.value.parameter == "height" and "64×56" in wrong_size.value.message


async def test_hires_fix_returns_the_larger_size_from_a_second_pass(engine):
    plain = await pixels(engine, task(steps=3))
    fixed = await pixels(engine, task(steps=3, hiresFix=True))
    assert plain.shape[:2] == (64, 64) and fixed.shape[:2] == (128, 128)
    custom = await pixels(engine, task(steps=3, hiresFix={"scale": 1.5, "strength": 0.7, "steps": 4}))
    assert custom.shape[:2] == (96, 96)
    again = await pixels(engine, task(steps=3, advancedFeatures={"hiresFix": True}))  # runware 0.5's spelling
    assert np.array_equal(again, fixed)
    upscaled = np.asarray(Image.fromarray(plain.astype(np.uint8)).resize((128, 128), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(fixed - upscaled).mean() > 1  # refined, not merely enlarged


@pytest.mark.parametrize("model", [BUILTIN_SD15_AIR, BUILTIN_SDXL_AIR])
async def test_prompt_weighting_neutral_weights_equal_the_plain_prompt(engine, model):
    plain = await pixels(engine, task(model, positivePrompt="a red fox", negativePrompt="blurry"))
    compel = await pixels(engine, task(model, positivePrompt="a (red)1.0 fox", negativePrompt="blurry", promptWeighting="compel"))
    a1111 = await pixels(engine, task(model, positivePrompt="a (red:1.0) fox", negativePrompt="blurry", promptWeighting="sdembeds"))
    if model == BUILTIN_SD15_AIR:
        assert np.array_equal(compel, plain) and np.array_equal(a1111, plain)
    else:  # SDXL: compel tokenizes a weighted prompt fragment by fragment; an unweighted one encodes exactly as diffusers
        unweighted = await pixels(engine, task(model, positivePrompt="a red fox", negativePrompt="blurry", promptWeighting="compel"))
        assert np.array_equal(unweighted, plain) and np.array_equal(a1111, compel)
    heavier = await pixels(engine, task(model, positivePrompt="a red++ fox", negativePrompt="blurry", promptWeighting="compel"))
    a1111_heavier = await pixels(engine, task(model, positivePrompt="a (red:1.5) fox", negativePrompt="blurry", promptWeighting="sdEmbeds"))
    assert not np.array_equal(heavier, plain) and not np.array_equal(a1111_heavier, plain)


async def test_a_long_prompts_tail_counts_when_weighted(engine):
    """The built-in tokenizer is byte-level: 100 characters are past CLIP's 77 tokens."""
    head = "a fox " + "in a quiet field " * 6
    first, second = head + "at night", head + "at noon under a yellow sun"
    cut = [await pixels(engine, task(positivePrompt=p)) for p in (first, second)]
    assert np.array_equal(cut[0], cut[1])  # without weighting CLIP cuts at 77 tokens, as before
    chunked = [await pixels(engine, task(positivePrompt=p, promptWeighting="compel")) for p in (first, second)]
    assert not np.array_equal(chunked[0], chunked[1])


def test_tile_and_shuffle_preprocessors_are_honest_image_operations():
    from engine.preprocessors import apply, check

    _, image = photo(96)
    source = np.asarray(image).astype(float)
    for name in ("tile", "tile_gaussian", "tile_resample"):
        out = np.asarray(apply(check(name, "p"), image)).astype(float)
        assert out.shape == source.shape
        # smoother: less curvature (second differences) across the shapes' edges, same mean colour
        assert np.abs(np.diff(out, n=2, axis=1)).mean() < 0.8 * np.abs(np.diff(source, n=2, axis=1)).mean()
        assert np.abs(out.mean(axis=(0, 1)) - source.mean(axis=(0, 1))).max() < 3
    first = np.asarray(apply("shuffle", image))
    assert np.array_equal(first, np.asarray(apply("shuffle", image)))  # seeded: the same input, the same guide
    assert first.shape == np.asarray(image).shape and not np.array_equal(first, np.asarray(image))


async def test_inline_tile_and_shuffle_guides_run(engine):
    uri, _ = photo()
    raw = await pixels(engine, task(controlNet=[control(guideImage=uri)]))
    for name in ("tile", "shuffle"):
        out = await pixels(engine, task(controlNet=[control(guideImage=uri, preprocessor=name)]))
        assert not np.array_equal(out, raw), name
