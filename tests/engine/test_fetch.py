"""Model downloads: hashing on the way, size caps, retries and the guard on every hop."""

from __future__ import annotations

import hashlib
import os

import pytest

from engine.errors import DownloadFailed, URLNotAllowed
from engine.net import NetPolicy
from engine.upload import fetch
from engine.upload.fetch import PipelinedHash, copy_and_hash, download
from tests.conftest import FileServer

ALLOW = NetPolicy(allow_private=True, timeout_s=10)


@pytest.fixture
def served(tmp_path):
    server = FileServer(tmp_path / "root") if (tmp_path / "root").mkdir() is None else None
    yield server
    server.close()


def test_pipelined_hash_matches_hashlib():
    data = [os.urandom(1000 * i + 7) for i in range(50)]
    with PipelinedHash(depth=2) as digest:
        for chunk in data:
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(b"".join(data)).hexdigest()


def test_download_hashes_and_caps(served, tmp_path):
    body = os.urandom(3 * 1024 * 1024 + 5)
    (served.root / "m.safetensors").write_bytes(body)
    got = download(served.url("m.safetensors"), tmp_path / "out", ALLOW, max_bytes=10 * 1024 * 1024)
    assert got.sha256 == hashlib.sha256(body).hexdigest() and got.size == len(body)
    assert (tmp_path / "out").read_bytes() == body
    with pytest.raises(DownloadFailed) as info:
        download(served.url("m.safetensors"), tmp_path / "small", ALLOW, max_bytes=1024)
    assert "limit" in info.value.message and not (tmp_path / "small").exists()
    with pytest.raises(DownloadFailed):
        download(served.url("missing.safetensors"), tmp_path / "missing", ALLOW, max_bytes=1024, retries=0)
    copied = copy_and_hash(served.root / "m.safetensors", tmp_path / "copy", 10 * 1024 * 1024)
    assert copied.sha256 == got.sha256


def test_every_redirect_hop_is_checked(served, tmp_path, monkeypatch):
    import http.server
    import threading

    target = served.url("m.safetensors")
    (served.root / "m.safetensors").write_bytes(b"x" * 100)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    checked: list[str] = []
    real = fetch.check_url_sync

    def spy(url, policy, parameter):
        checked.append(url)
        real(url, policy, parameter)

    monkeypatch.setattr(fetch, "check_url_sync", spy)
    try:
        first = f"http://127.0.0.1:{redirector.server_address[1]}/start"
        assert download(first, tmp_path / "r", ALLOW, max_bytes=1000).size == 100
        assert checked == [first, target]
        with pytest.raises(URLNotAllowed):
            download(first, tmp_path / "r2", NetPolicy(allow_private=False), max_bytes=1000)
    finally:
        redirector.shutdown()
        redirector.server_close()
