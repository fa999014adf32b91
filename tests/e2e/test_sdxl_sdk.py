"""SDXL end to end with the official Runware Python SDK (PyPI ``runware`` 0.5.x), unchanged.

The built-in ``wisp:tiny-sdxl@1`` through txt2img, img2img and inpainting; an
SGM-layout SDXL checkpoint and an SDXL LoRA uploaded with ``modelUpload`` and
used at once; an SD-1.x LoRA refused on the SDXL model.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from PIL import Image
from runware import IImageInference
from runware.types import ILora, IModelSearch, IUploadModelCheckPoint, IUploadModelLora
from runware.utils import RunwareAPIError

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR, ensure_tiny_sdxl
from tests.conftest import wisp_cli
from tests.e2e.test_runware_sdk import rw  # noqa: F401  (the SDK client fixture)
from tests.fixtures.checkpoints import write_sdxl_single_file
from tests.fixtures.loras import write_lora
from tests.fixtures.sdxl_loras import write_sdxl_lora


def request(**fields) -> IImageInference:
    base = dict(model=BUILTIN_SDXL_AIR, positivePrompt="a lighthouse at dusk", width=64, height=64, steps=3, outputType="base64Data")
    base.update(fields)
    return IImageInference(**base)


@pytest.fixture(scope="module")
def served(file_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An SDXL checkpoint, an SDXL LoRA and an SD-1.x LoRA on the test file server."""
    built = tmp_path_factory.mktemp("sdxl-sdk-builtin")
    xl, sd1 = ensure_tiny_sdxl(built), ensure_tiny_sd15(built)
    folder: Path = file_server.root / uuid.uuid4().hex
    folder.mkdir()
    return {
        "checkpoint": file_server.url(write_sdxl_single_file(xl, folder / "xl.safetensors", noise_seed=9)),
        "lora": file_server.url(write_sdxl_lora(xl, folder / "xl-lora.safetensors", fmt="kohya")),
        "sd1-lora": file_server.url(write_lora(sd1, folder / "sd1-lora.safetensors", fmt="kohya")),
    }


@pytest.fixture(scope="module")
def source(wisp_server) -> str:
    name = "xl" + uuid.uuid4().hex[:8]
    assert wisp_cli("sources", "create", name, "--data-dir", str(wisp_server.data_dir)).returncode == 0
    return name


def write_png(path: Path, color: tuple[int, int, int] | int, mode: str = "RGB") -> str:
    Image.new(mode, (64, 64), color).save(path)
    return str(path)


async def test_sdxl_txt2img_img2img_inpaint(rw, tmp_path: Path):
    pair = await rw.imageInference(requestImage=request(numberResults=2, seed=40))
    again = await rw.imageInference(requestImage=request(numberResults=2, seed=40))
    assert [i.seed for i in pair] == [40, 41]
    assert [i.imageBase64Data for i in pair] == [i.imageBase64Data for i in again]
    assert pair[0].imageBase64Data != pair[1].imageBase64Data
    source = write_png(tmp_path / "source.png", (30, 120, 200))
    mask_path = tmp_path / "mask.png"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(mask_path)
    (img,) = await rw.imageInference(requestImage=request(seedImage=source, strength=0.6, seed=40))
    (inp,) = await rw.imageInference(requestImage=request(seedImage=source, maskImage=str(mask_path), seed=40))
    assert len({pair[0].imageBase64Data, img.imageBase64Data, inp.imageBase64Data}) == 3
    assert base64.b64decode(inp.imageBase64Data).startswith(b"\x89PNG")


async def test_sdxl_upload_checkpoint_and_lora_then_generate(rw, served, source):
    checkpoint = await rw.modelUpload(
        IUploadModelCheckPoint(
            air=f"{source}:1@1", architecture="sdxl", name="sdk sdxl", downloadURL=served["checkpoint"],
            uniqueIdentifier="xl-1", version="1.0", format="safetensors", private=True, tags=["xl"], type="base",
            defaultScheduler="Euler",  # the SDK requires one for checkpoints
        )
    )  # fmt: skip
    assert [p["status"] for p in checkpoint] == ["validated", "downloaded", "optimized", "stored", "ready"]
    lora = await rw.modelUpload(
        IUploadModelLora(
            air=f"{source}:2@1", architecture="sdxl", name="sdk sdxl lora", downloadURL=served["lora"],
            uniqueIdentifier="xl-lora-1", version="1.0", format="safetensors", private=True, tags=["xl"],
        )
    )  # fmt: skip
    assert lora[-1]["status"] == "ready"
    (base,) = await rw.imageInference(requestImage=request(model=f"{source}:1@1", seed=5))
    (builtin,) = await rw.imageInference(requestImage=request(seed=5))
    assert base.imageBase64Data != builtin.imageBase64Data
    (styled,) = await rw.imageInference(requestImage=request(model=f"{source}:1@1", seed=5, lora=[ILora(model=f"{source}:2@1", weight=1.0)]))
    (zero,) = await rw.imageInference(requestImage=request(model=f"{source}:1@1", seed=5, lora=[ILora(model=f"{source}:2@1", weight=0.0)]))
    assert styled.imageBase64Data != base.imageBase64Data
    assert zero.imageBase64Data == base.imageBase64Data
    found = await rw.modelSearch(IModelSearch(architecture="sdxl", category="checkpoint"))
    assert {BUILTIN_SDXL_AIR, f"{source}:1@1"} <= {m.air for m in found.results}


async def test_sd1_lora_is_refused_on_sdxl(rw, served, source):
    await rw.modelUpload(
        IUploadModelLora(
            air=f"{source}:3@1", architecture="sd1x", name="sd1 lora", downloadURL=served["sd1-lora"],
            uniqueIdentifier="sd1-lora-1", version="1.0", format="safetensors", private=True, tags=[],
        )
    )  # fmt: skip
    with pytest.raises(RunwareAPIError) as info:
        await rw.imageInference(requestImage=request(lora=[ILora(model=f"{source}:3@1", weight=1.0)]))
    assert info.value.code == "invalidParameter"
