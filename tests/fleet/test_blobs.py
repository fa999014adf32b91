"""A replica node's model-file cache (engine.fleet.blobs) against a real origin: wisp's own route on a loopback server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from engine.errors import ModelUnavailable
from engine.fleet.blobs import BlobCache, Origin
from engine.upload.store import ModelStore
from server.routes import BlobOrigin


class LoopbackOrigin:
    """wisp's ``BlobOrigin`` route behind a tiny h11-free HTTP server (http.server), counting GETs per file."""

    def __init__(self, store: ModelStore, token: str) -> None:
        import http.server

        origin = BlobOrigin(token, store)
        self.gets: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                outer.gets[name] = outer.gets.get(name, 0) + 1
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, response_headers, body = asyncio.run(origin.respond(name, headers))
                self.send_response(status)
                for key, value in response_headers:
                    self.send_header(key.decode(), value.decode())
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def origin(tmp_path: Path):
    store = ModelStore(tmp_path / "origin")
    served = LoopbackOrigin(store, "secret-token-" + "x" * 32)
    yield store, served
    served.close()


def put(store: ModelStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = store.path_for(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


def test_fetches_once_in_chunks_and_verifies(origin, tmp_path, monkeypatch):
    store, served = origin
    monkeypatch.setattr("engine.fleet.blobs.CHUNK_BYTES", 1000)
    data = os.urandom(4500)
    sha = put(store, data)
    cache = BlobCache(tmp_path / "node", budget_bytes=10**6)
    where = Origin(served.url, "secret-token-" + "x" * 32)
    with cache.holding([sha, sha], where):
        assert cache.path_for(sha).read_bytes() == data
    assert served.gets[sha] == 5  # 4500 bytes in 1000-byte ranges
    second = BlobCache(tmp_path / "node", budget_bytes=10**6)  # another replica on the same node
    with second.holding([sha], where):
        pass
    assert served.gets[sha] == 5 and second.downloads == 0


def test_wrong_token_wrong_bytes_and_no_origin_are_model_unavailable(origin, tmp_path):
    store, served = origin
    sha = put(store, b"real bytes")
    cache = BlobCache(tmp_path / "node", budget_bytes=10**6)
    with pytest.raises(ModelUnavailable, match="403"):
        with cache.holding([sha], Origin(served.url, "wrong")):
            pass
    liar = hashlib.sha256(b"promised").hexdigest()
    path = store.path_for(liar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"something else")
    with pytest.raises(ModelUnavailable, match="hash mismatch"):
        with cache.holding([liar], Origin(served.url, "secret-token-" + "x" * 32)):
            pass
    assert not cache.path_for(liar).exists() and not list((tmp_path / "node" / "tmp").iterdir())
    with pytest.raises(ModelUnavailable, match="no origin"):
        with cache.holding([sha], None):
            pass
    with pytest.raises(ModelUnavailable, match="could not fetch"):
        with cache.holding([sha], Origin("http://127.0.0.1:9", "t")):
            pass


def test_the_budget_evicts_least_recently_used_files_never_one_in_use(origin, tmp_path):
    store, served = origin
    where = Origin(served.url, "secret-token-" + "x" * 32)
    shas = [put(store, bytes([i]) * 1000) for i in range(3)]
    cache = BlobCache(tmp_path / "node", budget_bytes=2500)
    with cache.holding([shas[0]], where):
        with cache.holding([shas[1]], where):
            pass
        with cache.holding([shas[2]], where):  # 3000 > 2500: the oldest file not in use goes (shas[1])
            pass
        assert cache.path_for(shas[0]).exists() and not cache.path_for(shas[1]).exists() and cache.path_for(shas[2]).exists()
    assert cache.used_bytes() == 2000
