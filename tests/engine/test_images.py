"""Image decoding limits, the store's path handling and the URL guard."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import pytest
from PIL import Image

from engine.errors import DownloadFailed, InvalidImage, URLNotAllowed
from engine.images.codec import decode_image, encode_image
from engine.images.store import ImageStore
from engine.net import NetPolicy, check_url, fetch_bytes


def png_bytes(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (width + 1) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decode_ok():
    image = decode_image(png_bytes((10, 6)), "seedImage")
    assert image.size == (10, 6) and image.mode == "RGB"


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(InvalidImage) as info:
        decode_image(bomb_png(50_000, 50_000), "seedImage")
    assert info.value.parameter == "seedImage"


def test_limits_and_garbage():
    with pytest.raises(InvalidImage):
        decode_image(b"", "maskImage")
    with pytest.raises(InvalidImage):
        decode_image(b"GIF89a" + b"\x00" * 20, "maskImage")
    with pytest.raises(InvalidImage):
        decode_image(png_bytes(), "seedImage", max_bytes=10)


def test_encoding_is_deterministic():
    image = Image.new("RGB", (16, 16), (9, 9, 9))
    assert encode_image(image, "PNG", 95) == encode_image(image, "PNG", 95)
    assert encode_image(image, "JPG", 90)[:3] == b"\xff\xd8\xff"


def test_store_refuses_traversal(tmp_path):
    store = ImageStore(tmp_path / "images", tmp_path / "tmp")
    image_uuid, name = store.put(b"abc", "png")
    assert store.path_for_name(name).read_bytes() == b"abc"
    assert store.find(image_uuid).name == name
    (tmp_path / "secret.png").write_bytes(b"x")
    for evil in ("../secret.png", "..%2Fsecret.png", "/etc/passwd", f"{image_uuid}.png/..", "a.png"):
        assert store.path_for_name(evil) is None
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/x.png", "http://localhost/x", "http://10.0.0.1/x", "http://[::1]/x", "http://169.254.169.254/latest", "file:///etc/passwd", "ftp://example.com/x", "http:///nohost"],
)
async def test_private_and_odd_urls_refused(url):
    with pytest.raises(URLNotAllowed):
        await check_url(url, NetPolicy(allow_private=False), "seedImage")


async def test_fetch_respects_size_cap_and_status():
    body = b"x" * 5000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if b"GET /missing" in request:
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        elif b"GET /redirect" in request:
            writer.write(b"HTTP/1.1 302 Found\r\nlocation: /ok\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    allow = NetPolicy(allow_private=True)
    try:
        assert await fetch_bytes(f"http://127.0.0.1:{port}/ok", allow, 10_000, "p") == body
        assert await fetch_bytes(f"http://127.0.0.1:{port}/redirect", allow, 10_000, "p") == body
        with pytest.raises(DownloadFailed):
            await fetch_bytes(f"http://127.0.0.1:{port}/ok", allow, 100, "p")
        with pytest.raises(DownloadFailed):
            await fetch_bytes(f"http://127.0.0.1:{port}/missing", allow, 10_000, "p")
        with pytest.raises(URLNotAllowed):
            await fetch_bytes(f"http://127.0.0.1:{port}/ok", NetPolicy(), 10_000, "p")
    finally:
        server.close()
        await server.wait_closed()


def test_owners_written_behind_are_enforced_at_once_and_committed_soon(tmp_path):
    import sqlite3

    from engine.registry.db import Database

    db = Database(tmp_path / "wisp.db")
    store = ImageStore(tmp_path / "images", tmp_path / "tmp", db, write_behind=True)
    mine, _ = store.put(b"\x89PNG one", "png", team="team-a", ttl_s=3600)
    # before the writer's commit: the owner is known from memory
    assert store.find(mine, team="team-b") is None
    assert store.find(mine, team="team-a") is not None
    assert db.sync_writes()
    with sqlite3.connect(tmp_path / "wisp.db") as conn:
        assert conn.execute("SELECT team FROM image_owners WHERE image_uuid=?", (mine,)).fetchone() == ("team-a",)
    assert store._unwritten == {}  # committed: read from SQLite from now on
    assert store.find(mine, team="team-b") is None and store.find(mine, team="team-a") is not None
    # deleted before its row was committed: the queued INSERT does not bring the row back
    other, _ = store.put(b"\x89PNG two", "png", team="team-a")
    assert store.delete(other, "team-b") is False
    assert store.delete(other, "team-a") is True
    assert db.sync_writes()
    with sqlite3.connect(tmp_path / "wisp.db") as conn:
        assert conn.execute("SELECT count(*) FROM image_owners WHERE image_uuid=?", (other,)).fetchone() == (0,)
    assert store.find(other, team="team-a") is None
