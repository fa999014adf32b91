"""``mediaStorage`` (upload / delete) and ``accountManagement`` (getDetails / getUsageActivity): issue 15."""

from __future__ import annotations

import base64
import io
import uuid

import httpx
from PIL import Image
from runware import IImageInference, Runware

from tests.server.test_model_library import Socket


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


async def test_the_official_sdk_uploads_media_and_uses_it_as_a_seed_image(wisp_server, tmp_path):
    """runware 0.5.24's ``uploadMedia`` (a local file, sent as base64) → a mediaUUID that works as an imageUUID."""
    path = tmp_path / "seed.png"
    path.write_bytes(png_bytes())
    client = Runware(api_key=wisp_server.key, url=wisp_server.ws_url)
    await client.connect()
    try:
        stored = await client.uploadMedia(str(path))
        uuid.UUID(stored.mediaUUID)
        images = await client.imageInference(requestImage=IImageInference(
            model="wisp:tiny-sd15@1", positivePrompt="a red square", width=64, height=64, steps=4, strength=0.5,
            seedImage=stored.mediaUUID, outputType="base64Data"))
    finally:
        await client.disconnect()
    assert images and images[0].imageBase64Data


async def test_upload_answers_a_url_and_delete_removes_it_for_its_own_team_only(wisp_server):
    sock = await Socket.open(wisp_server)
    other = await Socket.open(wisp_server, wisp_server.create_key(f"media-{uuid.uuid4().hex[:6]}"))
    try:
        data_uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
        items, errors = await sock.run({"taskType": "mediaStorage", "operation": "upload", "media": data_uri})
        assert not errors, errors
        (item,) = items
        media_uuid = item["mediaUUID"]
        assert item["taskType"] == "mediaStorage" and item["status"] == "success"
        fetched = httpx.get(item["mediaURL"], timeout=10)
        assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (64, 64)

        _, errors = await other.run({"taskType": "mediaStorage", "operation": "delete", "mediaUUID": media_uuid})
        assert errors and errors[0]["code"] == "imageNotFound"  # another team's media looks missing
        assert httpx.get(item["mediaURL"], timeout=10).status_code == 200  # and survives

        items, errors = await sock.run({"taskType": "mediaStorage", "operation": "delete", "mediaUUID": media_uuid})
        assert not errors and items[0]["status"] == "deleted" and items[0]["mediaUUID"] == media_uuid
        assert httpx.get(item["mediaURL"], timeout=10).status_code == 404
        _, errors = await sock.infer(seedImage=media_uuid, strength=0.5, steps=4)
        assert errors and errors[0]["code"] == "imageNotFound"
        _, errors = await sock.run({"taskType": "mediaStorage", "operation": "delete", "mediaUUID": media_uuid})
        assert errors and errors[0]["code"] == "imageNotFound"
    finally:
        await sock.close()
        await other.close()


async def test_bad_media_requests_get_clear_errors(wisp_server):
    sock = await Socket.open(wisp_server)
    try:
        _, errors = await sock.run({"taskType": "mediaStorage", "operation": "upload"})
        assert errors[0]["code"] == "missingParameter" and errors[0]["parameter"] == "media"
        _, errors = await sock.run({"taskType": "mediaStorage", "operation": "delete"})
        assert errors[0]["code"] == "missingParameter" and errors[0]["parameter"] == "mediaUUID"
        _, errors = await sock.run({"taskType": "mediaStorage", "operation": "rename", "media": "x"})
        assert errors[0]["code"] == "invalidParameter" and errors[0]["parameter"] == "operation"
        _, errors = await sock.run({"taskType": "mediaStorage", "operation": "upload", "media": base64.b64encode(b"not an image").decode()})
        assert errors[0]["code"] == "invalidImage"
    finally:
        await sock.close()


async def test_account_details_and_usage_activity_of_the_sessions_own_team(wisp_server):
    team = f"acct-{uuid.uuid4().hex[:6]}"
    key = wisp_server.create_key(team)
    sock = await Socket.open(wisp_server, key)
    try:
        assert not (await sock.infer(seed=5))[1]
        items, errors = await sock.run({"taskType": "accountManagement", "operation": "getDetails"})
        assert not errors, errors
        (details,) = items
        assert details["team"] == team and details["operation"] == "getDetails"
        assert details["defaultSource"] in details["sources"]
        assert [k["prefix"] for k in details["keys"]] == [key[:len(details["keys"][0]["prefix"])]]
        assert key not in str(details)  # keys by prefix, never the key
        assert details["storage"] == {"models": 0, "modelBytes": 0, "images": 1}
        items, errors = await sock.run({"taskType": "accountManagement", "operation": "getUsageActivity", "days": 7})
        assert not errors, errors
        activity = items[0]
        assert activity["team"] == team and activity["days"] == 7
        assert activity["tasks"]["imageInference"] == {"success": 1}
        _, errors = await sock.run({"taskType": "accountManagement", "operation": "getInvoices"})
        assert errors[0]["code"] == "invalidParameter" and errors[0]["parameter"] == "operation"
    finally:
        await sock.close()
