"""``PUT /v1/files`` on a full disk answers 507 instead of resetting the connection (issue 18 #18).

The upload goes through the real HTTP protocol and a real :class:`FileSink`,
whose file is swapped for ``/dev/full`` (every write fails with ENOSPC, as on
a full disk).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import h11
import httpx
import pytest

from server.files import FileDrop, FileSink
from server.http import HTTPProtocol, json_response

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


async def test_a_body_that_cannot_be_stored_is_answered_507(tmp_path: Path):
    drop = FileDrop(tmp_path / "uploads")
    sinks: list[FileSink] = []

    def sink_factory(request: h11.Request, peer: str) -> FileSink | None:
        if request.method != b"PUT":
            return None
        sink = drop.sink("team", 1 << 30)
        sink._file.close()
        sink._file = open("/dev/full", "wb", buffering=0)
        sinks.append(sink)
        return sink

    async def handler(request, body, sink, peer):
        return json_response(201, {"stored": True})

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTPProtocol(handler, 1 << 20, sink_factory), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as http:
            response = await http.put(f"http://127.0.0.1:{port}/v1/files", content=b"x" * 300_000)
            assert response.status_code == 507
            assert response.json()["errors"][0] == {"code": "insufficientStorage",
                                                     "message": "the server has no room left to store this upload"}
            # The connection was answered, not reset, and the server still serves the next request.
            again = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert again.status_code == 201
        assert sinks and not sinks[0].part.exists()  # the partial file is gone
    finally:
        server.close()
        await server.wait_closed()
