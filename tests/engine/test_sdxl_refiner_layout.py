"""SDXL refiner-layout checkpoints (issue 15): ``sd_xl_refiner_1.0``-shaped files upload, and finish another model's image.

A refiner file holds one text encoder (OpenCLIP, as ``conditioner.embedders.0.model.*``) and a UNet conditioned on an
aesthetic score; wisp gives it a refiner config folder (full size or tiny, from the header) and runs it only as
``refiner.model``.  The tiny files are made by the fixtures from ``ensure_tiny_sdxl_refiner``'s random weights.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from engine.builtin.sdxl_config import REFINER_FIRST_CONV, ensure_sdxl_config, ensure_sdxl_refiner_config
from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR, ensure_tiny_sdxl, ensure_tiny_sdxl_refiner
from engine.errors import EngineError, InvalidInput
from engine.pipelines.stable_diffusion.loading import ModelLoadError, check_checkpoint, layout_of
from engine.upload.sniff import sniff_model
from engine.upload.safetensors_check import read_safetensors_info
from protocol.frames import decode_frame
from protocol.inference import ImageInference
from protocol.models import ModelUpload
from tests.engine.test_sd15_config import write_sparse_safetensors
from tests.fixtures.checkpoints import (
    SDXL_REFINER_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    open_clip_to_sgm,
    unet_to_ldm,
    vae_to_ldm,
    write_sdxl_refiner_single_file,
    write_sdxl_single_file,
)

TEAM = "refiner-team"
SOURCE = "refsrc"
OPEN_CLIP_BIGG_PARAMS = 694_659_840  # SDXL base's text_encoder_2: the refiner's one encoder is the same tower


def task(**fields: Any) -> ImageInference:
    base = dict(taskUUID=str(uuid.uuid4()), model=BUILTIN_SDXL_AIR, positivePrompt="a red fox", negativePrompt="blurry",
                width=64, height=64, steps=4, seed=7)  # fmt: skip
    base.update(fields)
    return msgspec.convert({"taskType": "imageInference", **base}, ImageInference)


async def upload(engine, path: Path, air: str, **fields: Any) -> list[str]:
    if engine.registry.source_team(SOURCE) is None:
        engine.registry.create_source(SOURCE, TEAM)
    phases: list[str] = []

    async def emit(status: str, message: str) -> None:
        phases.append(status)

    body = dict(taskUUID=str(uuid.uuid4()), air=air, category="checkpoint", architecture="sdxl", type="refiner",
                downloadURL="https://example.invalid/refiner.safetensors", uniqueIdentifier=uuid.uuid4().hex, name=air, version="1")  # fmt: skip
    body.update(fields)
    await engine.upload_model(msgspec.convert({"taskType": "modelUpload", **body}, ModelUpload), TEAM, emit, local_source=path)
    return phases


@pytest.fixture(scope="module")
def files(engine_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refiner-files")
    refiner_folder = ensure_tiny_sdxl_refiner(engine_data_dir)
    return {
        "refiner": write_sdxl_refiner_single_file(refiner_folder, root / "refiner.safetensors", noise_seed=3),
        "other": write_sdxl_refiner_single_file(refiner_folder, root / "other.safetensors", noise_seed=4),
        "base": write_sdxl_single_file(ensure_tiny_sdxl(engine_data_dir), root / "base.safetensors", noise_seed=5),
        "no-label-emb": write_sdxl_refiner_single_file(
            refiner_folder, root / "no-label-emb.safetensors",
            edit=lambda state: [state.pop(k) for k in list(state) if k.startswith(UNET_PREFIX + "label_emb.")],
        ),  # fmt: skip
    }


def test_a_refiner_file_gets_the_refiner_layout_and_is_checked_against_it(files: dict[str, Path], engine_data_dir: Path):
    from engine.builtin.sdxl_config import sdxl_config_for

    folder = sdxl_config_for(engine_data_dir, files["refiner"])
    assert folder == ensure_tiny_sdxl_refiner(engine_data_dir)
    assert layout_of(folder).title == "SDXL refiner" and layout_of(folder).family.name == "sdxl"
    check_checkpoint(files["refiner"], folder)
    assert sdxl_config_for(engine_data_dir, files["base"]) == ensure_tiny_sdxl(engine_data_dir)  # a base file is unchanged
    with pytest.raises(ModelLoadError, match=r"no-label-emb.safetensors is missing \d+ UNet tensor\(s\): add_embedding"):
        check_checkpoint(files["no-label-emb"], sdxl_config_for(engine_data_dir, files["no-label-emb"]))
    found = sniff_model(read_safetensors_info(files["refiner"]))
    assert (found.category, found.architecture) == ("checkpoint", "sdxl")


def _full_refiner_shapes(folder: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))
        text = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2"), local_files_only=True))
    state: dict[str, Any] = {}
    state |= {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), json.loads((folder / "unet" / "config.json").read_text())).items()}
    state |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), json.loads((folder / "vae" / "config.json").read_text())).items()}
    state |= {SDXL_REFINER_TEXT_PREFIX + k: v for k, v in open_clip_to_sgm(text.state_dict()).items()}
    return {k: (tuple(v.shape), "F16") for k, v in state.items()}, {"unet": unet, "text": text}


def test_a_full_size_refiner_file_picks_the_sdxl_refiner_config(engine_data_dir: Path, tmp_path: Path):
    from engine.builtin.sdxl_config import sdxl_config_for

    folder = ensure_sdxl_refiner_config(engine_data_dir)
    shapes, models = _full_refiner_shapes(folder)
    assert shapes[UNET_PREFIX + "input_blocks.0.0.weight"][0] == REFINER_FIRST_CONV
    assert shapes[UNET_PREFIX + "label_emb.0.0.weight"][0] == (1536, 2560)  # 5 × 256 size/crop/aesthetic + 1280 pooled
    assert models["unet"].config.cross_attention_dim == 1280
    assert sum(p.numel() for p in models["text"].parameters()) == OPEN_CLIP_BIGG_PARAMS
    path = write_sparse_safetensors(tmp_path / "sd_xl_refiner_1.0.safetensors", shapes)
    assert sdxl_config_for(engine_data_dir, path) == folder
    check_checkpoint(path, folder)  # diffusers' own converters map every SGM name onto the refiner config
    no_unet = write_sparse_safetensors(tmp_path / "no-unet.safetensors", {k: v for k, v in shapes.items() if not k.startswith(UNET_PREFIX)})
    with pytest.raises(ModelLoadError, match="not a full SDXL refiner checkpoint"):
        check_checkpoint(no_unet, folder)
    with pytest.raises(ModelLoadError, match="not a full SDXL checkpoint"):  # a refiner file against the base config
        check_checkpoint(path, ensure_sdxl_config(engine_data_dir))


async def test_an_uploaded_refiner_finishes_an_sdxl_image(engine, files: dict[str, Path]):
    air, other = f"{SOURCE}:refiner@1", f"{SOURCE}:other@1"
    assert await upload(engine, files["refiner"], air) == ["validated", "downloaded", "optimized", "stored", "ready"]
    await upload(engine, files["other"], other)
    alone = (await engine.generate(task(), team=TEAM, owner="a"))[0].data
    refined = (await engine.generate(task(refiner={"model": air, "startStep": 2}), team=TEAM, owner="a"))[0].data
    again = (await engine.generate(task(refiner={"model": air, "startStep": 2}), team=TEAM, owner="a"))[0].data
    by_other = (await engine.generate(task(refiner={"model": other, "startStep": 2}), team=TEAM, owner="a"))[0].data
    later = (await engine.generate(task(refiner={"model": air, "startStepPercentage": 75}), team=TEAM, owner="a"))[0].data
    assert refined.startswith(b"\x89PNG") and refined == again
    assert len({alone, refined, by_other, later}) == 4  # the refiner's weights and where it takes over both matter
    unweighted = (await engine.generate(task(refiner={"model": air, "startStep": 2}, promptWeighting="compel"), team=TEAM, owner="a"))[0].data
    assert unweighted == refined  # compel on the refiner's one encoder encodes an unweighted prompt exactly as diffusers
    weighted = (await engine.generate(task(positivePrompt="a red++ fox", refiner={"model": air, "startStep": 2}, promptWeighting="compel"),
                                      team=TEAM, owner="a"))[0].data  # fmt: skip
    assert weighted != refined


async def test_a_refiner_cannot_start_an_image_or_be_trained_on(engine, files: dict[str, Path]):
    air = f"{SOURCE}:refiner@1"
    if engine.registry.get(air) is None:
        await upload(engine, files["refiner"], air)
    with pytest.raises(InvalidInput, match="SDXL refiner.*refiner.model") as info:
        await engine.generate(task(model=air), team=TEAM, owner="a")
    assert info.value.parameter == "model"
    assert isinstance(info.value, EngineError)
    still = await engine.generate(task(), team=TEAM, owner="a")  # the engine goes on
    assert still[0].data.startswith(b"\x89PNG")
    training = decode_frame(json.dumps([{"taskType": "training", "taskUUID": str(uuid.uuid4()), "model": "wisp:sdxl@lora-training",
                                         "baseModel": air, "inputs": {"dataset": ["https://example.invalid/a.png"]}}]))[0].task  # fmt: skip
    with pytest.raises(InvalidInput, match="SDXL refiner") as refused:
        engine.check_training(training, TEAM)
    assert refused.value.parameter == "baseModel"
    assert not engine.library.refines_only(engine.library.resolve(BUILTIN_SDXL_AIR, TEAM, parameter="model"))
