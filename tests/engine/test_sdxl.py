"""SDXL next to SD-1.x: the built-in tiny SDXL, uploaded SGM single files, SDXL LoRAs, defaults by architecture.

Everything runs on ``wisp:tiny-sdxl@1`` (real SDXL classes and wiring, random
weights) and on single files written from it; full-size SDXL is checked on
the meta device and with a sparse file (a real header, no tensor bytes).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image

from engine.builtin.sdxl_config import SDXL_FIRST_CONV, ensure_sdxl_config
from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR, ensure_tiny_sdxl
from engine.errors import EngineError, InvalidInput
from engine.models import ARCHITECTURE_DEFAULTS, BUILTIN_MODELS, ModelDefaults, architecture_defaults
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.loading import ModelLoadError, check_checkpoint, load_folder, load_single_file
from engine.pipelines.stable_diffusion_xl import StableDiffusionXLModel
from engine.registry.models import ModelRow
from engine.upload.sniff import ARCHITECTURE_FAMILIES
from protocol.inference import ImageInference
from protocol.models import ModelSearch, ModelUpload
from tests.engine.test_sd15_config import write_sparse_safetensors
from tests.fixtures.checkpoints import (
    SDXL_CLIP_L_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    open_clip_to_sgm,
    unet_to_ldm,
    vae_to_ldm,
    write_sdxl_single_file,
)
from tests.fixtures.loras import write_lora
from tests.fixtures.sdxl_loras import write_sdxl_lora

TEAM = "xl-team"
SOURCE = "xlsrc"


def task(**fields: Any) -> ImageInference:
    base = dict(taskUUID=str(uuid.uuid4()), model=BUILTIN_SDXL_AIR, positivePrompt="a red fox", width=64, height=64, steps=3, seed=7)
    base.update(fields)
    return msgspec.convert({"taskType": "imageInference", **base}, ImageInference)


def data_uri(image: Image.Image) -> str:
    import base64

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def spec(**fields: Any) -> GenerationSpec:
    base: dict[str, Any] = dict(
        prompt="a lighthouse", negative_prompt=None, width=64, height=64, steps=3, cfg_scale=5.0, scheduler="Default", seeds=(3,)
    )
    base.update(fields)
    return GenerationSpec(**base)


def pixels(images: list[Image.Image]) -> list[bytes]:
    return [np.asarray(i).tobytes() for i in images]


@pytest.fixture(scope="module")
def tiny_xl(engine_data_dir: Path) -> Path:
    return ensure_tiny_sdxl(engine_data_dir)


@pytest.fixture(scope="module")
def xl_model(tiny_xl: Path) -> StableDiffusionXLModel:
    torch.set_num_threads(1)
    model = load_folder(tiny_xl)
    assert isinstance(model, StableDiffusionXLModel)
    return model


# ---- the built-in model ---------------------------------------------------------------------


def test_builtin_is_real_sdxl_shape(tiny_xl: Path, xl_model: StableDiffusionXLModel):
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert BUILTIN_MODELS[BUILTIN_SDXL_AIR].architecture == "sdxl"
    assert json.loads((tiny_xl / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    pipe = xl_model.base
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    # Cross-attention over both encoders' hidden states; the add-embedding takes 6 size numbers + the pooled text.
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.tokenizer_2.pad_token == "!"
    assert ensure_tiny_sdxl(tiny_xl.parent.parent) == tiny_xl  # built once


def test_txt2img_img2img_inpaint_one_copy(xl_model: StableDiffusionXLModel):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    txt = xl_model.run(spec())
    img = xl_model.run(spec(init_image=init, strength=0.6))
    inp = xl_model.run(spec(init_image=init, mask_image=mask))
    margin = xl_model.run(spec(init_image=init, mask_image=mask, mask_margin=8))
    assert all(len(r) == 1 and r[0].size == (64, 64) for r in (txt, img, inp, margin))
    assert len({pixels(r)[0] for r in (txt, img, inp)}) == 3
    assert pixels(margin)[0] != pixels(inp)[0]  # maskMargin crops around the mask
    for mode in ("img2img", "inpaint"):
        variant = xl_model._variant(mode)
        assert type(variant).__name__.startswith("StableDiffusionXL")
        assert variant.unet is xl_model.base.unet and variant.text_encoder_2 is xl_model.base.text_encoder_2


def test_seeds_are_per_image_and_reproducible(xl_model: StableDiffusionXLModel):
    pair = pixels(xl_model.run(spec(seeds=(11, 12))))
    assert pair == pixels(xl_model.run(spec(seeds=(11, 12))))
    assert pair[0] != pair[1]
    assert pair[1] == pixels(xl_model.run(spec(seeds=(12,))))[0]


def test_scheduler_clip_skip_and_prompts_change_the_image(xl_model: StableDiffusionXLModel):
    base = pixels(xl_model.run(spec()))[0]
    assert pixels(xl_model.run(spec(scheduler="DPM++ 2M Karras")))[0] != base
    assert pixels(xl_model.run(spec(clip_skip=2)))[0] != base
    assert pixels(xl_model.run(spec(prompt="a whale")))[0] != base
    assert pixels(xl_model.run(spec(negative_prompt="blurry")))[0] != base
    assert pixels(xl_model.run(spec()))[0] == base  # the default scheduler comes back


async def test_engine_generates_all_three_modes_on_the_builtin(engine):
    first = await engine.generate(task(numberResults=2), team=TEAM, owner="a")
    again = await engine.generate(task(numberResults=2), team=TEAM, owner="a")
    assert [r.seed for r in first] == [7, 8] and [r.data for r in first] == [r.data for r in again]
    source = data_uri(Image.new("RGB", (64, 64), (20, 160, 90)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    img = await engine.generate(task(seedImage=source, strength=0.7), team=TEAM, owner="a")
    inp = await engine.generate(task(seedImage=source, maskImage=data_uri(mask.convert("RGB"))), team=TEAM, owner="a")
    assert len({first[0].data, img[0].data, inp[0].data}) == 3
    assert Image.open(io.BytesIO(inp[0].data)).size == (64, 64)


async def test_model_search_lists_the_builtin(engine):
    found = await engine.search_models(msgspec.convert({"taskUUID": str(uuid.uuid4()), "architecture": "sdxl"}, ModelSearch), TEAM)
    assert [m.air for m in found.results if m.air.startswith("wisp:")] == [BUILTIN_SDXL_AIR, "wisp:tiny-controlnet-sdxl@1"]
    listed = await engine.search_models(msgspec.convert({"taskUUID": str(uuid.uuid4()), "category": "checkpoint"}, ModelSearch), TEAM)
    assert {"wisp:tiny-sd15@1", BUILTIN_SDXL_AIR} <= {m.air for m in listed.results}


# ---- single files ---------------------------------------------------------------------------


def test_sgm_single_file_loads_bit_exact(tiny_xl: Path, xl_model: StableDiffusionXLModel, tmp_path: Path):
    path = write_sdxl_single_file(tiny_xl, tmp_path / "xl.safetensors")
    keys = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert any(k.startswith("model.diffusion_model.label_emb.0.0.") for k in keys)
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight") for k in keys)
    loaded = load_single_file(path, tiny_xl)
    assert isinstance(loaded, StableDiffusionXLModel)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(loaded.base, name).state_dict(), getattr(xl_model.base, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert pixels(loaded.run(spec())) == pixels(xl_model.run(spec()))


def test_broken_sdxl_files_are_refused_clearly(tiny_xl: Path, tmp_path: Path):
    no_te2 = write_sdxl_single_file(
        tiny_xl, tmp_path / "no-te2.safetensors",
        edit=lambda s: [s.pop(k) for k in [k for k in s if k.startswith(SDXL_OPEN_CLIP_PREFIX)]],
    )  # fmt: skip
    with pytest.raises(ModelLoadError, match="no second text encoder .OpenCLIP. weights.*not a full SDXL checkpoint"):
        check_checkpoint(no_te2, tiny_xl)
    missing = write_sdxl_single_file(
        tiny_xl, tmp_path / "missing.safetensors", edit=lambda s: s.pop(UNET_PREFIX + "label_emb.0.2.weight")
    )
    with pytest.raises(ModelLoadError, match=r"is missing \d+ UNet tensor\(s\): add_embedding"):
        load_single_file(missing, tiny_xl)


def test_sd1_file_against_the_sdxl_config_is_refused(tiny_xl: Path, engine_data_dir: Path, tmp_path: Path):
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.checkpoints import write_sd15_single_file

    sd1 = write_sd15_single_file(ensure_tiny_sd15(engine_data_dir), tmp_path / "sd1.safetensors")
    with pytest.raises(ModelLoadError, match="not a full SDXL checkpoint"):
        check_checkpoint(sd1, tiny_xl)


# ---- full-size SDXL: configs on the meta device, a sparse file ------------------------------

# Parameter counts of stabilityai/stable-diffusion-xl-base-1.0's components.
FULL_PARAMS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


@pytest.fixture(scope="module")
def full_meta(engine_data_dir: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = ensure_sdxl_config(engine_data_dir)
    text = lambda name, cls: cls(CLIPTextConfig.from_pretrained(str(folder / name), local_files_only=True))  # noqa: E731
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet"))),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae"))),
            "text_encoder": text("text_encoder", CLIPTextModel),
            "text_encoder_2": text("text_encoder_2", CLIPTextModelWithProjection),
        }


def full_sgm_shapes(folder: Path, models: dict[str, Any], in_channels: int = 4) -> dict[str, tuple[tuple[int, ...], str]]:
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    state: dict[str, Any] = {}
    state |= {UNET_PREFIX + k: v for k, v in unet_to_ldm(models["unet"].state_dict(), unet_config).items()}
    state |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(models["vae"].state_dict(), vae_config).items()}
    state |= {SDXL_CLIP_L_PREFIX + k: v for k, v in models["text_encoder"].state_dict().items()}
    state |= {SDXL_OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_sgm(models["text_encoder_2"].state_dict()).items()}
    shapes = {k: (tuple(v.shape), "F16") for k, v in state.items()}
    shapes[UNET_PREFIX + "input_blocks.0.0.weight"] = ((320, in_channels, 3, 3), "F16")
    return shapes


def test_full_size_config_is_sdxl_base(full_meta: dict[str, Any]):
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in full_meta.items()}
    assert counts == FULL_PARAMS


def test_full_size_file_picks_the_full_config(engine_data_dir: Path, full_meta: dict[str, Any], tmp_path: Path, library):
    folder = ensure_sdxl_config(engine_data_dir)
    path = write_sparse_safetensors(tmp_path / "xl-full.safetensors", full_sgm_shapes(folder, full_meta))
    assert library.config_folder("sdxl", path) == folder
    assert library.config_folder("pony", path) == folder  # the whole SDXL family
    check_checkpoint(path, folder)  # every name and shape fits, from the header alone
    inpaint = write_sparse_safetensors(tmp_path / "xl-inpaint.safetensors", full_sgm_shapes(folder, full_meta, in_channels=9))
    with pytest.raises(InvalidInput, match="9 input channels") as info:
        library.config_folder("sdxl", inpaint)
    assert f"{list(SDXL_FIRST_CONV)}" in info.value.message and info.value.parameter == "model"


@pytest.fixture
def library(engine_data_dir: Path, tmp_path: Path):
    from engine.models import ModelLibrary
    from engine.registry.db import Database
    from engine.registry.models import ModelRegistry
    from engine.upload.store import ModelStore

    return ModelLibrary(engine_data_dir, "cpu", ModelRegistry(Database(tmp_path / "wisp.db")), ModelStore(tmp_path / "store"))


# ---- through modelUpload: checkpoints, LoRAs, defaults --------------------------------------


async def upload(engine, path: Path, air: str, category: str, architecture: str, **fields: Any) -> list[str]:
    if engine.registry.source_team(SOURCE) is None:
        engine.registry.create_source(SOURCE, TEAM)
    phases: list[str] = []

    async def emit(status: str, message: str) -> None:
        phases.append(status)

    body = dict(
        taskUUID=str(uuid.uuid4()), air=air, category=category, architecture=architecture,
        downloadURL="https://example.invalid/model.safetensors", uniqueIdentifier=uuid.uuid4().hex,
        name=air, version="1", **({"type": "base"} if category == "checkpoint" else {}),
    )  # fmt: skip
    body.update(fields)
    await engine.upload_model(msgspec.convert({"taskType": "modelUpload", **body}, ModelUpload), TEAM, emit, local_source=path)
    return phases


@pytest.fixture(scope="module")
def files(tiny_xl: Path, engine_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15

    root = tmp_path_factory.mktemp("sdxl-files")
    return {
        "checkpoint": write_sdxl_single_file(tiny_xl, root / "xl.safetensors", noise_seed=5),
        "kohya": write_sdxl_lora(tiny_xl, root / "kohya.safetensors", fmt="kohya"),
        "diffusers": write_sdxl_lora(tiny_xl, root / "diffusers.safetensors", fmt="diffusers"),
        "sd1-lora": write_lora(ensure_tiny_sd15(engine_data_dir), root / "sd1.safetensors", fmt="kohya"),
    }


async def test_uploaded_sdxl_checkpoint_runs(engine, files: dict[str, Path]):
    air = f"{SOURCE}:ckpt@1"
    phases = await upload(engine, files["checkpoint"], air, "checkpoint", "sdxl")
    assert phases == ["validated", "downloaded", "optimized", "stored", "ready"]
    ours = await engine.generate(task(model=air), team=TEAM, owner="a")
    builtin = await engine.generate(task(), team=TEAM, owner="a")
    assert ours[0].data != builtin[0].data  # other UNet weights
    assert (await engine.generate(task(model=air), team=TEAM, owner="a"))[0].data == ours[0].data
    img = await engine.generate(task(model=air, seedImage=data_uri(Image.new("RGB", (64, 64), "white"))), team=TEAM, owner="a")
    assert img[0].data != ours[0].data


async def test_sdxl_loras_change_the_image_and_weight_zero_is_exact(engine, files: dict[str, Path]):
    await upload(engine, files["kohya"], f"{SOURCE}:kohya@1", "lora", "sdxl")
    await upload(engine, files["diffusers"], f"{SOURCE}:diffusers@1", "lora", "pony")  # same family: usable
    base = (await engine.generate(task(), team=TEAM, owner="a"))[0].data
    kohya = (await engine.generate(task(lora=[{"model": f"{SOURCE}:kohya@1", "weight": 1.0}]), team=TEAM, owner="a"))[0].data
    diffusers = (await engine.generate(task(lora=[{"model": f"{SOURCE}:diffusers@1", "weight": 1.0}]), team=TEAM, owner="a"))[0].data
    zero = (await engine.generate(task(lora=[{"model": f"{SOURCE}:kohya@1", "weight": 0.0}]), team=TEAM, owner="a"))[0].data
    assert kohya != base and zero == base
    assert Image.open(io.BytesIO(kohya)).tobytes() == Image.open(io.BytesIO(diffusers)).tobytes()  # same update, two formats
    assert (await engine.generate(task(), team=TEAM, owner="a"))[0].data == base  # removing restores the base


async def test_sd1_lora_is_refused_on_sdxl_and_back(engine, files: dict[str, Path]):
    await upload(engine, files["sd1-lora"], f"{SOURCE}:sd1lora@1", "lora", "sd1x")
    with pytest.raises(InvalidInput, match="is a LoRA for sd1x; the model wisp:tiny-sdxl@1 is sdxl") as info:
        await engine.generate(task(lora=[{"model": f"{SOURCE}:sd1lora@1"}]), team=TEAM, owner="a")
    assert info.value.parameter == "lora[0].model"
    if engine.registry.get(f"{SOURCE}:kohya@1") is None:
        await upload(engine, files["kohya"], f"{SOURCE}:kohya@1", "lora", "sdxl")
    with pytest.raises(InvalidInput, match="LoRA for sdxl"):
        await engine.generate(task(model="wisp:tiny-sd15@1", lora=[{"model": f"{SOURCE}:kohya@1"}]), team=TEAM, owner="a")


async def test_sdxl_lora_declared_sd1_is_refused_at_upload(engine, files: dict[str, Path]):
    with pytest.raises(EngineError, match="looks like a lora for sdxl") as info:
        await upload(engine, files["kohya"], f"{SOURCE}:liar@1", "lora", "sd1x")
    assert info.value.parameter == "architecture"


# ---- defaults by architecture ---------------------------------------------------------------


def test_every_sd1_and_sdxl_tag_has_defaults_and_the_fast_ones_are_fast():
    loadable = [a for a, f in ARCHITECTURE_FAMILIES.items() if f in ("sd1x", "sdxl")]
    assert set(loadable) <= set(ARCHITECTURE_DEFAULTS)
    for tag in ("sdxlturbo", "sdxllightning", "sdxllcm", "sd1xlcm", "sdxlhyper", "sdhyper"):
        fast = architecture_defaults(tag)
        assert fast.steps <= 8 and fast.cfg_scale <= 1.5 and fast.scheduler != "Default", tag
    assert architecture_defaults("sdxllcm").scheduler == "LCM"
    assert architecture_defaults("sdxl") == BUILTIN_MODELS[BUILTIN_SDXL_AIR].defaults
    assert architecture_defaults("flux1d") == ModelDefaults()  # not runnable anyway: refused at resolve


async def test_uploaded_turbo_runs_with_turbo_defaults_unless_the_upload_sets_its_own(engine, files: dict[str, Path]):
    await upload(engine, files["checkpoint"], f"{SOURCE}:turbo@1", "checkpoint", "sdxlturbo")
    await upload(engine, files["checkpoint"], f"{SOURCE}:own@1", "checkpoint", "sdxllightning", defaultSteps=6, defaultScheduler="DDIM")
    turbo = engine.library.resolve(f"{SOURCE}:turbo@1", TEAM)
    assert turbo.defaults == architecture_defaults("sdxlturbo")
    own = engine.library.resolve(f"{SOURCE}:own@1", TEAM)
    lightning = architecture_defaults("sdxllightning")
    assert (own.defaults.steps, own.defaults.scheduler, own.defaults.cfg_scale) == (6, "DDIM", lightning.cfg_scale)
    no_steps = msgspec.structs.replace(task(model=f"{SOURCE}:turbo@1"), steps=None)
    _, prepared = await engine.prepare(no_steps, TEAM)
    assert (prepared.steps, prepared.cfg_scale, prepared.scheduler) == (turbo.defaults.steps, turbo.defaults.cfg_scale, "Euler a trailing")
    results = await engine.generate(no_steps, team=TEAM, owner="a")
    assert results[0].data.startswith(b"\x89PNG")


async def test_pony_skips_one_clip_layer_unless_the_request_says(engine, files: dict[str, Path]):
    await upload(engine, files["checkpoint"], f"{SOURCE}:pony@1", "checkpoint", "pony")
    _, default = await engine.prepare(task(model=f"{SOURCE}:pony@1"), TEAM)
    _, explicit = await engine.prepare(msgspec.structs.replace(task(model=f"{SOURCE}:pony@1"), clipSkip=0), TEAM)
    assert default.clip_skip == 1 and default.scheduler == "Euler a"
    assert explicit.clip_skip == 0


def test_other_architectures_are_refused_at_inference(engine):
    row = ModelRow(
        air=f"{SOURCE}:flux@1", team=TEAM, category="checkpoint", architecture="flux1d", format="safetensors", name="f",
        version="1", unique_identifier="f", sha256="0" * 64, size_bytes=1, private=True, type="base", conditioning=None, meta={},
    )  # fmt: skip
    engine.registry.upsert(row)
    with pytest.raises(InvalidInput, match="architecture flux1d cannot run on this build") as info:
        asyncio.run(engine.generate(task(model=row.air), team=TEAM, owner="a"))
    assert info.value.parameter == "model" and "sdxlturbo" in info.value.message


async def test_sd2_checkpoints_are_still_refused_at_upload(engine, files: dict[str, Path]):
    with pytest.raises(EngineError, match="cannot be loaded by this build") as info:
        await upload(engine, files["checkpoint"], f"{SOURCE}:sd2@1", "checkpoint", "sd2x")
    assert info.value.parameter == "architecture"
