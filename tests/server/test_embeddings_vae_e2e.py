"""Embeddings and VAE overrides end to end: modelUpload, then imageInference through a real server.

The files fit the built-in tiny models (``tests/fixtures/embeddings.py``).
Checked over the wire: an embedding (positive or negative) changes the
image and the next request without it gets the base bytes again; weight 0 is
the base; a VAE override changes the image and is gone on the next request;
the same for the tiny SDXL; a file of the other family, of the wrong
category, missing or private to another team is refused naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.builtin.tiny_sdxl import ensure_tiny_sdxl
from tests.conftest import FileServer, RunningServer
from tests.fixtures.embeddings import write_a1111_embedding, write_diffusers_embedding, write_ldm_vae, write_sdxl_embedding
from tests.fixtures.loras import write_lora
from tests.server.test_model_library import Socket, new_source, serve

SD15, SDXL = "wisp:tiny-sd15@1", "wisp:tiny-sdxl@1"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ti-vae")
    sd15 = ensure_tiny_sd15(d / "builtin")
    sdxl = ensure_tiny_sdxl(d / "builtin")
    return {
        "ti": write_a1111_embedding(d / "ti.safetensors", seed=1),
        "ti-diffusers": write_diffusers_embedding(d / "ti-diffusers.safetensors", token="<neg>", seed=2),
        "ti-xl": write_sdxl_embedding(d / "ti-xl.safetensors", seed=3),
        "vae": write_ldm_vae(sd15, d / "vae.safetensors", seed=1),
        "vae-xl": write_ldm_vae(sdxl, d / "vae-xl.safetensors", seed=2, prefix="first_stage_model."),
        "lora": write_lora(sd15, d / "lora.safetensors", fmt="kohya", seed=1),
    }


@pytest.fixture(scope="module")
def library(wisp_server: RunningServer, file_server: FileServer, files: dict[str, Path]) -> dict[str, str]:
    """Everything uploaded once (private), by the default team, under a fresh source: name → AIR."""
    return asyncio.run(_upload_all(wisp_server, file_server, files))


async def _upload_all(wisp_server: RunningServer, file_server: FileServer, files: dict[str, Path]) -> dict[str, str]:
    source = new_source(wisp_server)
    uploads: dict[str, dict[str, Any]] = {
        "ti": dict(file="ti", category="embeddings", type="positive", positiveTriggerWords="foxy, other"),
        "neg": dict(file="ti-diffusers", category="embeddings", type="negative"),
        "ti-xl": dict(file="ti-xl", category="embeddings", type="positive", architecture="sdxl"),
        "vae": dict(file="vae", category="vae"),
        "vae-xl": dict(file="vae-xl", category="vae", architecture="sdxl"),
        "lora": dict(file="lora", category="lora"),
    }
    sock = await Socket.open(wisp_server)
    airs = {}
    try:
        for name, fields in uploads.items():
            air = f"{source}:{name}@1"
            path = files[fields.pop("file")]
            items, errors = await sock.upload(air=air, downloadURL=serve(file_server, path), **fields)
            assert not errors, (name, errors)
            assert items[-1]["status"] == "ready"
            airs[name] = air
    finally:
        await sock.close()
    airs["source"] = source
    return airs


@pytest.fixture
async def sock(wisp_server: RunningServer):
    s = await Socket.open(wisp_server)
    yield s
    await s.close()


async def image(sock: Socket, **fields: Any) -> bytes:
    items, errors = await sock.infer(**fields)
    assert not errors, errors
    return base64.b64decode(items[0]["imageBase64Data"])


async def error(sock: Socket, **fields: Any) -> dict[str, Any]:
    items, errors = await sock.infer(**fields)
    assert errors and not items, items
    return errors[0]


async def test_embeddings_change_the_image_and_leave_no_trace(sock, library):
    base = await image(sock)
    embedded = await image(sock, embeddings=[{"model": library["ti"]}])
    assert embedded != base
    assert await image(sock) == base
    assert await image(sock, embeddings=[{"model": library["ti"], "weight": 0}]) == base
    # trigger word in the prompt: the embedding goes there instead of being appended
    assert await image(sock, positivePrompt="foxy quiet harbour", embeddings=[{"model": library["ti"]}]) not in (base, embedded)
    negative = await image(sock, embeddings=[{"model": library["neg"]}], CFGScale=7)
    assert negative not in (base, embedded)
    both = await image(sock, embeddings=[{"model": library["ti"], "weight": 0.5}, {"model": library["neg"]}],
                       lora=[{"model": library["lora"]}])
    assert both not in (base, embedded, negative)
    assert await image(sock) == base


async def test_vae_override_changes_the_image_and_is_restored(sock, library):
    base = await image(sock)
    swapped = await image(sock, vae=library["vae"])
    assert swapped != base
    assert await image(sock) == base
    assert await image(sock, vae=library["vae"]) == swapped  # cached VAE, same result
    with_both = await image(sock, vae=library["vae"], embeddings=[{"model": library["ti"]}])
    assert with_both not in (base, swapped)
    assert await image(sock) == base


async def test_sdxl_embedding_and_vae(sock, library):
    base = await image(sock, model=SDXL)
    assert await image(sock, model=SDXL, embeddings=[{"model": library["ti-xl"]}]) != base
    assert await image(sock, model=SDXL, vae=library["vae-xl"]) != base
    assert await image(sock, model=SDXL) == base


@pytest.mark.parametrize(
    ("fields", "code", "parameter", "text"),
    [
        (dict(model=SDXL, embeddings=[{"model": "ti"}]), "invalidParameter", "embeddings[0].model", "sd1x"),
        (dict(model=SD15, embeddings=[{"model": "ti-xl"}]), "invalidParameter", "embeddings[0].model", "sdxl"),
        (dict(model=SDXL, vae="vae"), "invalidParameter", "vae", "sd1x"),
        (dict(embeddings=[{"model": "ti"}, {"model": "lora"}]), "invalidParameter", "embeddings[1].model", "not an embedding"),
        (dict(vae="ti"), "invalidParameter", "vae", "not a VAE"),
        (dict(embeddings=[{"model": "ti"}, {"model": "ti"}]), "invalidParameter", "embeddings[1].model", "twice"),
        (dict(embeddings=[{"model": "ti", "weight": 9}]), "invalidParameter", "embeddings[0].weight", ""),
        (dict(embeddings=[{"model": "missing"}]), "modelNotFound", "embeddings[0].model", ""),
        (dict(vae="missing"), "modelNotFound", "vae", ""),
    ],
)
async def test_refusals_name_the_field(sock, library, fields, code, parameter, text):
    def air(name: str) -> str:
        return library.get(name) or f"{library['source']}:{name}@1"

    if "embeddings" in fields:
        fields["embeddings"] = [dict(e, model=air(e["model"])) for e in fields["embeddings"]]
    if "vae" in fields:
        fields["vae"] = air(fields["vae"])
    err = await error(sock, **fields)
    assert (err["code"], err["parameter"]) == (code, parameter), err
    assert text in err["message"], err


async def test_private_embeddings_and_vaes_of_another_team_look_missing(wisp_server, library):
    other = await Socket.open(wisp_server, wisp_server.create_key("team-ti"))
    try:
        missing = f"{library['source']}:nothing-{uuid.uuid4().hex[:6]}@1"
        for field, private in (("embeddings", library["ti"]), ("vae", library["vae"])):
            def value(air: str) -> Any:
                return [{"model": air}] if field == "embeddings" else air

            hidden = await error(other, **{field: value(private)})
            absent = await error(other, **{field: value(missing)})
            assert hidden["code"] == absent["code"] == "modelNotFound"
            assert hidden["parameter"] == absent["parameter"]
            assert hidden["message"].replace(private, "X") == absent["message"].replace(missing, "X")
    finally:
        await other.close()
