"""LyCORIS LoHa/LoKr: converted at upload to an exactly equivalent kohya LoRA; OFT and foreign files refused.

The files are written for the tiny SD-1.x model (``tests/fixtures/lycoris.py``);
the reference update of each layer comes from peft's own LoHa/LoKr weight
functions, and the reference image from adding those updates to a copy of
the model's weights (a merge), so nothing here trusts the converter's math.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any, Iterator

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR, ensure_tiny_sdxl
from engine.core import Engine, EngineConfig
from engine.lora import lora_format
from engine.pipelines.stable_diffusion import StableDiffusionModel
from engine.upload.lycoris import to_kohya_lora
from engine.upload.safetensors_check import InvalidModelFile, read_safetensors_info
from protocol.inference import ImageInference
from protocol.models import ModelUpload
from tests.fixtures.sdxl_loras import write_sdxl_lora
from tests.fixtures.lycoris import (
    kohya_deltas,
    lora_as_loha,
    merge_into,
    reference_deltas,
    write_foreign_loha,
    write_loha,
    write_lokr,
    write_oft,
)

TEAM = "lycoris-team"
SOURCE = "lysrc"


@pytest.fixture(scope="module")
def builtin(engine_data_dir: Path) -> Path:
    return ensure_tiny_sd15(engine_data_dir)


@pytest.fixture(scope="module")
def files(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lycoris")
    return {
        "loha": write_loha(builtin, d / "loha.safetensors"),
        "loha-r8-f16": write_loha(builtin, d / "loha8.safetensors", rank=8, seed=1, dtype=torch.float16),  # r² > width: SVD
        "lokr": write_lokr(builtin, d / "lokr.safetensors"),
        "oft": write_oft(builtin, d / "oft.safetensors"),
        "foreign": write_foreign_loha(d / "foreign.safetensors"),
    }


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


# --------------------------------------------------------------------------- the conversion itself


@pytest.mark.parametrize("name, kind", [("loha", "LyCORIS LoHa"), ("loha-r8-f16", "LyCORIS LoHa"), ("lokr", "LyCORIS LoKr")])
def test_conversion_reproduces_every_update(files, builtin, tmp_path, name, kind):
    out = tmp_path / "lora.safetensors"
    assert to_kohya_lora(read_safetensors_info(files[name]), out, "sd1x") == kind
    assert lora_format(_keys(out)) == "kohya"
    reference, converted = reference_deltas(files[name], builtin), kohya_deltas(out, builtin)
    assert converted.keys() == reference.keys()
    for stem, delta in reference.items():
        assert delta.norm() > 0
        assert float((converted[stem] - delta).norm() / delta.norm()) < 1e-5, stem


def test_layers_keep_their_names_and_convs_become_kohya_conv_loras(files, tmp_path):
    out = tmp_path / "lora.safetensors"
    to_kohya_lora(read_safetensors_info(files["loha"]), out, "sd1x")
    with safe_open(str(out), "pt") as f:
        shape = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        alpha = {k: float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")}
    stem = "lora_unet_down_blocks_1_resnets_0_conv1"  # 3×3, 32 → 64, factors flattened to 288 columns
    assert shape[f"{stem}.lora_down.weight"] == (16, 32, 3, 3) and shape[f"{stem}.lora_up.weight"] == (64, 16, 1, 1)
    stem = "lora_unet_up_blocks_0_upsamplers_0_conv"  # Tucker cores
    assert shape[f"{stem}.lora_down.weight"] == (16, 64, 3, 3)
    stem = "lora_unet_down_blocks_1_attentions_0_proj_in"  # SD 1.x: a 1×1 conv
    assert shape[f"{stem}.lora_down.weight"] == (16, 64, 1, 1)
    stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # rank r1·r2 = 16 of a 32×32 layer
    assert shape[f"{stem}.lora_down.weight"] == (16, 32) and shape[f"{stem}.lora_up.weight"] == (32, 16)
    assert all(a == shape[k.replace(".alpha", ".lora_down.weight")][0] for k, a in alpha.items())  # scale 1


def test_a_file_without_loha_or_lokr_is_left_alone(files, tmp_path):
    out = tmp_path / "lora.safetensors"
    assert to_kohya_lora(read_safetensors_info(files["oft"]), out, "sd1x") is None
    assert not out.exists()


def test_oft_mixed_into_a_loha_is_refused(files, tmp_path):
    from safetensors.torch import load_file, save_file

    mixed = tmp_path / "mixed.safetensors"
    save_file(load_file(str(files["loha"])) | load_file(str(files["oft"])), str(mixed))
    with pytest.raises(InvalidModelFile, match="^LyCORIS OFT/BOFT adapters are not supported"):
        to_kohya_lora(read_safetensors_info(mixed), tmp_path / "out.safetensors", "sd1x")


def test_factors_that_do_not_fit_together_are_refused(tmp_path):
    from safetensors.torch import save_file

    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "bad.safetensors"
    save_file({
        f"{stem}.hada_w1_a": torch.zeros(64, 4), f"{stem}.hada_w1_b": torch.zeros(4, 64),
        f"{stem}.hada_w2_a": torch.zeros(64, 4), f"{stem}.hada_w2_b": torch.zeros(4, 32),
    }, str(path))  # fmt: skip
    with pytest.raises(InvalidModelFile, match="factors of different shapes"):
        to_kohya_lora(read_safetensors_info(path), tmp_path / "out.safetensors", "sd1x")
    conv = "lora_unet_down_blocks_1_resnets_0_conv1"  # a 3×3 conv whose flattened factor is 100 wide
    save_file({
        f"{conv}.hada_w1_a": torch.zeros(64, 4), f"{conv}.hada_w1_b": torch.zeros(4, 100),
        f"{conv}.hada_w2_a": torch.zeros(64, 4), f"{conv}.hada_w2_b": torch.zeros(4, 100),
    }, str(path))  # fmt: skip
    with pytest.raises(InvalidModelFile, match="fit no 3×3 convolution"):
        to_kohya_lora(read_safetensors_info(path), tmp_path / "out.safetensors", "sd1x")


# --------------------------------------------------------------------------- through modelUpload and imageInference


@pytest.fixture
def engine(engine_data_dir: Path) -> Iterator[Engine]:
    """Stores F32, so the stored LoRA is the converter's output itself (see the F16 test below)."""
    eng = Engine(EngineConfig(data_dir=engine_data_dir, torch_threads=1, storage_dtype="F32"))
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()


def task(**fields: Any) -> ImageInference:
    base = dict(taskUUID=str(uuid.uuid4()), model=BUILTIN_SD15_AIR, positivePrompt="a red fox", width=64, height=64, steps=3, seed=7)
    base.update(fields)
    return msgspec.convert({"taskType": "imageInference", **base}, ImageInference)


async def upload(engine: Engine, path: Path, category: str, architecture: str = "sd1x") -> tuple[str, list[str]]:
    if engine.registry.source_team(SOURCE) is None:
        engine.registry.create_source(SOURCE, TEAM)
    air = f"{SOURCE}:{uuid.uuid4().hex[:8]}@1"
    phases: list[str] = []

    async def emit(status: str, message: str) -> None:
        phases.append(status)

    body = dict(
        taskUUID=str(uuid.uuid4()), air=air, category=category, architecture=architecture,
        downloadURL="https://example.invalid/model.safetensors", uniqueIdentifier=uuid.uuid4().hex, name=air, version="1",
    )  # fmt: skip
    await engine.upload_model(msgspec.convert({"taskType": "modelUpload", **body}, ModelUpload), TEAM, emit, local_source=path)
    return air, phases


def pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


async def render_and_merge(engine: Engine, builtin: Path, air: str, lycoris_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base image, image with the uploaded LoRA, image of the merged reference) for the same request."""
    with_lora = task(lora=[{"model": air, "weight": 1.0}])
    base = (await engine.generate(task(), team=TEAM, owner="a"))[0].data
    ours = (await engine.generate(with_lora, team=TEAM, owner="a"))[0].data
    _, spec = await engine.prepare(with_lora, TEAM)
    merged = StableDiffusionModel.load(builtin)
    merge_into(merged.base, reference_deltas(lycoris_file, builtin))
    (reference,) = merged.run(dataclasses.replace(spec, loras=()))
    return pixels(base), pixels(ours), np.asarray(reference.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name, category, kind", [("loha", "lycoris", "LyCORIS LoHa"), ("lokr", "lora", "LyCORIS LoKr")])
async def test_upload_converts_and_renders_like_the_merged_update(engine, builtin, files, name, category, kind):
    air, phases = await upload(engine, files[name], category)
    assert phases == ["validated", "downloaded", "optimized", "stored", "ready"]
    row = engine.registry.get(air)
    assert row is not None and row.meta["convertedFrom"] == kind and "lycoris" in row.tags
    stored = engine.model_store.path_for(row.sha256)
    assert lora_format(_keys(stored)) == "kohya"  # the store holds the LoRA, under its own sha256
    base, ours, merged = await render_and_merge(engine, builtin, air, files[name])
    assert np.abs(ours - base).max() > 10  # the update shows
    # PEFT computes W·x + up·(down·x), the merge (W + ΔW)·x: float order differs, nothing else
    assert np.abs(ours - merged).max() <= 1


async def test_default_f16_storage_stays_within_a_level(engine_data_dir, builtin, files):
    eng = Engine(EngineConfig(data_dir=engine_data_dir, torch_threads=1))  # storage_dtype F16, as deployed
    eng.start()
    try:
        air, _ = await upload(eng, files["loha"], "lora")
        base, ours, merged = await render_and_merge(eng, builtin, air, files["loha"])
    finally:
        eng.stop()
    assert np.abs(ours - base).max() > 10
    assert np.abs(ours - merged).max() <= 2  # float16 factors: ~1e-3 relative per layer


@pytest.mark.parametrize("category", ["lora", "lycoris"])
async def test_oft_upload_is_refused_by_name(engine, files, category):
    with pytest.raises(InvalidModelFile, match="^LyCORIS OFT/BOFT adapters are not supported") as info:
        await upload(engine, files["oft"], category)
    assert info.value.parameter == "downloadURL"


async def test_loha_for_another_architecture_is_refused(engine, files):
    with pytest.raises(InvalidModelFile, match="looks like a lora for sdxl, but was declared lycoris for sd1x") as info:
        await upload(engine, files["foreign"], "lycoris", "sd1x")
    assert info.value.parameter == "architecture"


@pytest.fixture(scope="module")
def tiny_xl(engine_data_dir: Path) -> Path:
    """Module-scoped, so it is built before the engine's worker thread starts importing."""
    return ensure_tiny_sdxl(engine_data_dir)


async def test_sdxl_loha_renders_exactly_like_the_lora_it_equals(tiny_xl, engine, tmp_path):
    """kohya SDXL names (input_blocks…, lora_te1_/lora_te2_): the LoHa twin of a LoRA gives the same bytes."""
    lora = write_sdxl_lora(tiny_xl, tmp_path / "xl.safetensors", fmt="kohya", alpha=2.0)
    lora_air, _ = await upload(engine, lora, "lora", "sdxl")
    loha_air, _ = await upload(engine, lora_as_loha(lora, tmp_path / "xl-loha.safetensors"), "lycoris", "sdxl")
    assert engine.registry.get(loha_air).meta["convertedFrom"] == "LyCORIS LoHa"
    images = [
        pixels((await engine.generate(task(model=BUILTIN_SDXL_AIR, **extra), team=TEAM, owner="a"))[0].data)
        for extra in ({}, {"lora": [{"model": lora_air}]}, {"lora": [{"model": loha_air}]})
    ]
    base, with_lora, with_loha = images
    assert np.abs(with_lora - base).max() > 10
    # the converted factors are the LoRA's own up to exact powers of two
    assert np.array_equal(with_loha, with_lora)
