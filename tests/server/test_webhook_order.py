"""Webhook posts of one task arrive in the order they were made, even when an earlier one is slow."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine.net import NetPolicy
from server.webhooks import WebhookSender


class SlowFirst:
    """Records POST bodies; the first POST of each path is answered only after a pause."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.seen: set[str] = set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path not in hook.seen:
                    hook.seen.add(self.path)
                    time.sleep(0.5)
                hook.bodies.append(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


async def test_a_sequence_keeps_its_order():
    hook = SlowFirst()
    sender = WebhookSender(NetPolicy(allow_private=True), timeout_s=5, retries=0)
    try:
        for i in range(5):
            sender.post(hook.url + "/a", json.dumps({"n": i}).encode(), sequence="task-a")
        deadline = time.monotonic() + 10
        while len(hook.bodies) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [b["n"] for b in hook.bodies] == [0, 1, 2, 3, 4]
        # The hook records a body before it answers: the last POST ends a moment after it arrived.
        while sender._last and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sender._last == {}  # finished sequences are forgotten
    finally:
        await sender.aclose()
        hook.server.shutdown()
