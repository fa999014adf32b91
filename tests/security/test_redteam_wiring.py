"""The last connections of issue 18's fixes: the REST dialects refuse lone surrogates like the socket
does, and the CLI refuses the reserved source without a traceback."""

from __future__ import annotations

import pytest

from server.dialects.errors import DialectError
from server.dialects.request import DialectRequest
from server.gateway import RequestContext
from tests.conftest import wisp_cli


def test_a_dialect_body_with_a_lone_surrogate_is_an_invalid_parameter():
    request = DialectRequest("POST", "/v3/async/txt2img", {}, {}, b'{"request": {"prompt": "a \\ud800 cat"}}',
                             RequestContext(base_url="http://x", own_hosts=frozenset()))
    with pytest.raises(DialectError) as refused:
        request.json_object()
    assert refused.value.code == "invalidParameter" and refused.value.parameter == "request.prompt"
    assert refused.value.status == 400


def test_teams_set_default_source_wisp_is_refused_in_one_line(tmp_path):
    out = wisp_cli("teams", "set", "default", "--default-source", "wisp", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "reserved" in out.stderr and "Traceback" not in out.stderr


async def test_an_image_uuid_is_an_input_for_its_own_team_only(wisp_server):
    """Another team's imageUUID looks missing as a seedImage (its URL, a capability, still works for whoever holds it)."""
    import asyncio
    import json
    import uuid as uuidlib

    from websockets.asyncio.client import connect

    async def session(key: str):
        ws = await connect(wisp_server.ws_url, max_size=None)
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        await ws.recv()
        return ws

    async def answer(ws, task: dict) -> dict:
        task = {"taskUUID": str(uuidlib.uuid4()), **task}
        await ws.send(json.dumps([task]))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            parts = frame.get("data", []) + frame.get("errors", [])
            if any(p.get("taskUUID") == task["taskUUID"] for p in parts):
                return frame

    owner, stranger = await session(wisp_server.key), await session(wisp_server.create_key("image-strangers"))
    try:
        made = await answer(owner, {"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "x",
                                    "width": 64, "height": 64, "steps": 1})
        image = made["data"][0]
        img2img = {"taskType": "imageInference", "model": "wisp:tiny-sd15@1", "positivePrompt": "y", "width": 64, "height": 64,
                   "steps": 4, "strength": 0.5}
        refused = await answer(stranger, {**img2img, "seedImage": image["imageUUID"]})
        assert refused["errors"][0]["code"] == "imageNotFound" and refused["errors"][0]["parameter"] == "seedImage"
        uploaded = await answer(stranger, {"taskType": "imageUpload", "image": image["imageUUID"]})
        assert uploaded["errors"][0]["code"] == "imageNotFound"
        assert "data" in await answer(owner, {**img2img, "seedImage": image["imageUUID"]})
        assert "data" in await answer(stranger, {**img2img, "seedImage": image["imageURL"]})
    finally:
        await owner.close()
        await stranger.close()


async def test_url_not_allowed_names_the_switch_that_allows_private_hosts():
    from engine.errors import URLNotAllowed
    from engine.net import NetPolicy, check_url

    with pytest.raises(URLNotAllowed) as refused:
        await check_url("http://127.0.0.1:9/x", NetPolicy(allow_private=False), "webhookURL")
    assert "--allow-private-urls" in refused.value.message and refused.value.parameter == "webhookURL"


@pytest.mark.parametrize("content, says", [
    (b"hello, this is my model\n", "this looks like text (it starts with 'hello, t'"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "this is a PNG image"),
    (b"GGUF\x03\x00\x00\x00" + b"\0" * 32, "a GGUF model"),
])
def test_a_file_that_is_not_safetensors_says_what_it_looks_like(tmp_path, content: bytes, says: str):
    from engine.upload.safetensors_check import InvalidModelFile, read_safetensors_info

    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile) as refused:
        read_safetensors_info(path)
    assert says in refused.value.message and "header length" not in refused.value.message
