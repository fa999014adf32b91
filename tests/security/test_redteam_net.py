"""Red-team findings on outbound URLs (issue 18): the address guard and webhooks.

The address tests use literal IPv6 URLs: ``getaddrinfo`` answers a literal
with itself, so they exercise the real resolver path without DNS.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import URLNotAllowed
from engine.net import NetPolicy, check_url, check_url_sync
from server.webhooks import MAX_RESPONSE_BYTES, WebhookSender

STRICT = NetPolicy(allow_private=False)

EMBEDDED_PRIVATE = [
    "http://[::127.0.0.1]/",  # IPv4-compatible loopback
    "http://[::10.0.0.1]/",  # IPv4-compatible private
    "http://[::169.254.169.254]/",  # IPv4-compatible link-local (cloud metadata)
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:192.168.1.1]/",  # IPv4-mapped private
    "http://[64:ff9b::127.0.0.1]/",  # NAT64 well-known prefix
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[64:ff9b:1::a00:1]/",  # NAT64 local-use prefix (RFC 8215)
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
    "http://[2002:c0a8:101::1]:8080/",  # 6to4 of 192.168.1.1
]


@pytest.mark.parametrize("url", EMBEDDED_PRIVATE)
def test_embedded_private_ipv4_is_refused(url: str):
    with pytest.raises(URLNotAllowed):
        asyncio.run(check_url(url, STRICT, "webhookURL"))
    with pytest.raises(URLNotAllowed):
        check_url_sync(url, STRICT, "webhookURL")


@pytest.mark.parametrize(
    "url", ["http://[::8.8.8.8]/", "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::8.8.8.8]/", "http://[2002:808:808::1]/"]
)
def test_embedded_public_ipv4_is_treated_like_the_ipv4(url: str):
    asyncio.run(check_url(url, STRICT, "webhookURL"))
    check_url_sync(url, STRICT, "webhookURL")


def test_allowed_private_still_allows_embedded_forms():
    asyncio.run(check_url("http://[::ffff:127.0.0.1]/", NetPolicy(allow_private=True), "webhookURL"))


# ---- webhooks -----------------------------------------------------------------

class EndlessHook:
    """Answers every POST with 200 and a body that never ends; counts what it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    while hook.sent < 2 * 1024**3:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        hook.sent += len(chunk)
                except OSError:
                    pass
                hook.closed.set()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


async def test_an_endless_webhook_response_is_not_read_to_its_end():
    hook = EndlessHook()
    sender = WebhookSender(NetPolicy(allow_private=True), timeout_s=30, retries=0)
    try:
        sender.post(hook.url, json.dumps({"data": [{"taskType": "imageInference"}]}).encode())
        deadline = time.monotonic() + 60
        while sender._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not sender._tasks, f"the delivery is still reading after {hook.sent} bytes"
        # The sender hung up after its cap; the hook's writes fail soon after (socket buffers aside).
        await asyncio.to_thread(hook.closed.wait, 30)
        assert hook.closed.is_set()
        assert hook.sent < MAX_RESPONSE_BYTES + 64 * 1024**2
    finally:
        await sender.aclose()
        hook.server.shutdown()
