"""DNS rebinding: a name that is public when checked and loopback when connected never reaches loopback."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from engine.errors import URLNotAllowed
from engine.net import NetPolicy, fetch_bytes
from engine.upload.fetch import download
from tests.conftest import FileServer

PUBLIC = "93.184.216.34"


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch):
    """``rebind.test`` resolves to a public address the first time, to 127.0.0.1 every time after."""
    real = socket.getaddrinfo
    calls = {"n": 0}

    def fake(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        calls["n"] += 1
        address = PUBLIC if calls["n"] == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


@pytest.fixture
def served(tmp_path: Path):
    server = FileServer(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"secret from inside")
    try:
        yield server
    finally:
        server.close()


def test_download_connects_only_to_the_address_it_checked(rebinding, served: FileServer, tmp_path: Path):
    port = served.httpd.server_address[1]
    with pytest.raises(URLNotAllowed):
        download(f"http://rebind.test:{port}/model.safetensors", tmp_path / "out", NetPolicy(timeout_s=3), max_bytes=1 << 20, retries=0)
    assert served.hits == {}  # the loopback server was never reached
    assert rebinding["n"] >= 2  # checked, then resolved again at connect time (and refused)


def test_image_fetch_connects_only_to_the_address_it_checked(rebinding, served: FileServer):
    port = served.httpd.server_address[1]
    with pytest.raises(URLNotAllowed):
        asyncio.run(fetch_bytes(f"http://rebind.test:{port}/model.safetensors", NetPolicy(timeout_s=3), 1 << 20, "seedImage"))
    assert served.hits == {}


def test_allowed_private_targets_still_work(served: FileServer, tmp_path: Path):
    url = served.url(tmp_path / "model.safetensors")
    assert asyncio.run(fetch_bytes(url, NetPolicy(allow_private=True), 1 << 20, "seedImage")) == b"secret from inside"
    got = download(url, tmp_path / "out", NetPolicy(allow_private=True), max_bytes=1 << 20, retries=0)
    assert got.size == len(b"secret from inside")
