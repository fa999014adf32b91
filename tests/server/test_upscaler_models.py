"""Uploaded upscaler models end to end: modelUpload (category upscaler), modelSearch, then upscale through a real server.

The files are real spandrel architectures with seeded random weights
(``tests/fixtures/upscalers.py``): Real-ESRGAN's Compact ×2, ESRGAN ×4, and a
DnCNN denoiser for the refusal.  Checked over the wire: an upload is detected
and listed with its network; upscaling with it gives the model's scale by
default (or the requested factor) and not the Lanczos image; a second request
reuses the loaded network (the model cache's counters, from ``/healthz``);
each refusal names its field; another team cannot use a team's private upscaler.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import FileServer, RunningServer, wisp_cli
from tests.fixtures import bad_files
from tests.fixtures.upscalers import write_compact, write_dncnn, write_esrgan
from tests.server.test_model_library import Socket, new_source, serve

if importlib.util.find_spec("spandrel") is None:
    pytest.skip("spandrel is not installed (.ci/spandrel.sh could not fetch it): upscaler models are off", allow_module_level=True)


def png_uri(size: tuple[int, int] = (24, 16)) -> str:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((20, 20, 220), (4, 3, size[0] - 6, size[1] - 5))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("upscalers")
    return {
        "compact": write_compact(d / "compact-x2.safetensors", seed=1),
        "esrgan": write_esrgan(d / "esrgan-x4.safetensors", seed=2),
        "dncnn": write_dncnn(d / "dncnn.safetensors", seed=3),
        "lora": bad_files.write_sd1_kohya_lora(d),
    }


@pytest.fixture(scope="module")
def library(wisp_server: RunningServer, file_server: FileServer, files: dict[str, Path]) -> dict[str, str]:
    """The two upscalers (private) and a LoRA, uploaded once by the default team under a fresh source: name → AIR."""

    async def upload_all() -> dict[str, str]:
        source = new_source(wisp_server)
        airs = {"source": source}
        sock = await Socket.open(wisp_server)
        try:
            for name, category in (("compact", "upscaler"), ("esrgan", "upscaler"), ("lora", "lora")):
                architecture = "upscaler" if category == "upscaler" else "sd1x"
                items, errors = await sock.upload(air=f"{source}:{name}@1", category=category, architecture=architecture,
                                                  downloadURL=serve(file_server, files[name]), comment=f"the {name} test file")
                assert not errors, (name, errors)
                assert [i["status"] for i in items][-1] == "ready"
                airs[name] = f"{source}:{name}@1"
        finally:
            await sock.close()
        return airs

    return asyncio.run(upload_all())


@pytest.fixture
async def sock(wisp_server: RunningServer):
    s = await Socket.open(wisp_server)
    yield s
    await s.close()


async def upscale(sock: Socket, **fields: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    task = {"taskType": "upscale", "inputImage": png_uri(), "outputType": "base64Data", **fields}
    return await sock.run({k: v for k, v in task.items() if v is not None})


async def upscaled(sock: Socket, **fields: Any) -> Image.Image:
    items, errors = await upscale(sock, **fields)
    assert not errors, errors
    return Image.open(io.BytesIO(base64.b64decode(items[0]["imageBase64Data"])))


async def refusal(sock: Socket, **fields: Any) -> dict[str, Any]:
    items, errors = await upscale(sock, **fields)
    assert errors and not items, items
    return errors[0]


async def cache_counters(server: RunningServer) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        cache = (await http.get(f"{server.http_url}/healthz")).json()["modelCache"]
    return {k: cache[k] for k in ("hits", "misses")}


async def test_upscalers_are_detected_and_listed(sock, library):
    found = await sock.search(category="upscaler", search=library["source"])
    by_air = {r["air"]: r for r in found["results"]}
    assert set(by_air) == {library["compact"], library["esrgan"]}
    compact, esrgan = by_air[library["compact"]], by_air[library["esrgan"]]
    assert compact["category"] == esrgan["category"] == "upscaler" and compact["architecture"] == "upscaler"
    assert compact["comment"].startswith("RealESRGAN Compact ×2 upscaler") and compact["comment"].endswith("the compact test file")
    assert esrgan["comment"].startswith("ESRGAN ×4 upscaler")
    everything = await sock.search(category="upscaler", limit=100)
    assert "wisp:lanczos-upscaler@1" in {r["air"] for r in everything["results"]}  # the built-in one is listed too
    assert all(r["category"] == "upscaler" for r in everything["results"])
    by_network = await sock.search(search="esrgan", category="upscaler", visibility="private")
    assert library["esrgan"] in {r["air"] for r in by_network["results"]}  # the detected network is searchable


async def test_model_upscale_uses_its_scale_and_differs_from_lanczos(sock, library):
    compact = await upscaled(sock, model=library["compact"])
    assert compact.size == (48, 32)  # ×2: the model's scale, no upscaleFactor given
    lanczos = await upscaled(sock, upscaleFactor=2)
    assert lanczos.size == (48, 32) and compact.tobytes() != lanczos.tobytes()
    assert (await upscaled(sock, model=library["compact"])).tobytes() == compact.tobytes()  # deterministic
    esrgan = await upscaled(sock, model=library["esrgan"])
    assert esrgan.size == (96, 64)  # ×4
    three = await upscaled(sock, model=library["compact"], upscaleFactor=3)
    assert three.size == (72, 48)  # the ×2 output resized to ×3 by Lanczos
    assert three.tobytes() == compact.resize((72, 48), Image.Resampling.LANCZOS).tobytes()
    settings = await upscaled(sock, taskType="imageUpscale", model=library["esrgan"], settings={"upscaleFactor": 2})
    assert settings.size == (48, 32)


async def test_lanczos_is_unchanged(sock):
    source = Image.open(io.BytesIO(base64.b64decode(png_uri().split(",", 1)[1]))).convert("RGB")
    expected = source.resize((60, 40), Image.Resampling.LANCZOS).tobytes()
    assert (await upscaled(sock, upscaleFactor=2.5)).tobytes() == expected
    assert (await upscaled(sock, model="wisp:lanczos-upscaler@1", upscaleFactor=2.5)).tobytes() == expected
    assert (await upscaled(sock)).size == (48, 32)  # no model, no factor: 2


async def test_a_second_request_reuses_the_loaded_model(sock, wisp_server, library):
    await upscaled(sock, model=library["esrgan"], upscaleFactor=1)  # loaded (or already resident)
    before = await cache_counters(wisp_server)
    await upscaled(sock, model=library["esrgan"], upscaleFactor=1)
    after = await cache_counters(wisp_server)
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 1


async def test_upload_refusals_name_the_field(sock, wisp_server, file_server, files):
    source = new_source(wisp_server)

    async def upload_error(name: str, **fields: Any) -> dict[str, Any]:
        items, errors = await sock.upload(air=f"{source}:{name}@1", downloadURL=serve(file_server, files[fields.pop("file")]),
                                          **fields)
        assert errors and not any(i.get("status") == "ready" for i in items), (name, items)
        return errors[0]

    denoiser = await upload_error("dncnn", file="dncnn", category="upscaler", architecture="upscaler")
    assert denoiser["code"] == "invalidModelFile" and denoiser["parameter"] == "downloadURL"
    assert "DnCNN" in denoiser["message"] and "not an upscaler" in denoiser["message"]
    lora = await upload_error("lora", file="lora", category="upscaler", architecture="upscaler")
    assert lora["code"] == "invalidModelFile" and lora["parameter"] == "category" and "looks like a lora" in lora["message"]
    as_lora = await upload_error("esrgan-lora", file="esrgan", category="lora", architecture="sd1x")
    assert as_lora["code"] == "invalidModelFile" and "category upscaler" in as_lora["message"]
    sd1x = await upload_error("sd1x", file="compact", category="upscaler", architecture="sd1x")
    assert sd1x["code"] == "invalidParameter" and sd1x["parameter"] == "architecture" and "'upscaler'" in sd1x["message"]
    other = await upload_error("vae", file="compact", category="vae", architecture="upscaler")
    assert other["code"] == "invalidParameter" and other["parameter"] == "architecture"
    typed = await upload_error("typed", file="compact", category="upscaler", architecture="upscaler", type="base")
    assert typed["code"] == "invalidParameter" and typed["parameter"] == "type"
    assert (await sock.search(search=source))["totalResults"] == 0


async def test_upscale_refusals_name_the_model(sock, wisp_server, library):
    unknown = await refusal(sock, model=f"{library['source']}:nothing@1")
    assert unknown["code"] == "modelNotFound" and unknown["parameter"] == "model" and "wisp:lanczos-upscaler@1" in unknown["message"]
    checkpoint = await refusal(sock, model="wisp:tiny-sd15@1")
    assert checkpoint["code"] == "invalidParameter" and checkpoint["parameter"] == "model"
    assert "is a checkpoint, not an upscaler" in checkpoint["message"]
    lora = await refusal(sock, model=library["lora"])
    assert lora["code"] == "invalidParameter" and lora["parameter"] == "model" and "is a lora, not an upscaler" in lora["message"]
    # ESRGAN ×4 on 1100² would make 4400² on its way to ×1: refused before the network runs
    big = await refusal(sock, model=library["esrgan"], upscaleFactor=1, inputImage=png_uri((1100, 1100)))
    assert big["code"] == "workLimitExceeded" and big["parameter"] == "upscaleFactor" and "4400×4400" in big["message"]
    other = await Socket.open(wisp_server, wisp_server.create_key("upscaler-team-b"))
    try:
        hidden = await refusal(other, model=library["compact"])
        missing = await refusal(other, model=f"{library['source']}:nothing@1")
        assert hidden["code"] == missing["code"] == "modelNotFound"
        assert hidden["message"].replace(library["compact"], "X") == missing["message"].replace(f"{library['source']}:nothing@1", "X")
    finally:
        await other.close()


def test_wisp_upload_takes_an_upscaler(wisp_server, files):
    source = new_source(wisp_server)
    result = wisp_cli("upload", str(files["compact"]), "--air", f"{source}:cli@1", "--category", "upscaler",
                      "--server", wisp_server.ws_url, "--api-key", wisp_server.key, "--quiet")
    assert result.returncode == 0, result.stderr  # --architecture defaults to "upscaler" for this category
    assert result.stdout.strip().splitlines()[-1] == f"{source}:cli@1"
