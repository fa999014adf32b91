"""Red-team findings on outbound URLs (issue 18): the address guard and webhooks.

The address tests use literal IPv6 URLs: ``getaddrinfo`` answers a literal
with itself, so they exercise the real resolver path without DNS.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import URLNotAllowed
from engine.net import NetPolicy, check_url, check_url_sync
from protocol import decode_frame
from protocol.errors import ErrorCode
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


# ---- 20: a webhookURL the guard refuses is refused with the task, before its ack ---------

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
INFERENCE = {"taskType": "imageInference", "taskUUID": UUID, "model": "wisp:tiny-sd15@1", "positivePrompt": "a",
             "deliveryMethod": "async"}
UPLOAD = {"taskType": "modelUpload", "taskUUID": UUID, "air": "a:b@1", "category": "lora", "architecture": "sd1x",
          "downloadURL": "http://example.com/x.safetensors", "uniqueIdentifier": "u", "name": "n", "version": "1"}
TRAINING = {"taskType": "training", "taskUUID": UUID, "deliveryMethod": "async", "inputs": {"dataset": ["x"]}}


@pytest.mark.parametrize(
    ("task", "parameter"),
    [({**INFERENCE, "webhookURL": "ftp://example.com/hook"}, "webhookURL"),
     ({**INFERENCE, "webhookURL": "file:///etc/passwd"}, "webhookURL"),
     ({**UPLOAD, "webhookURL": "gopher://example.com/"}, "webhookURL"),
     ({**TRAINING, "webhookURL": "http:///no-host"}, "webhookURL"),
     ({**TRAINING, "webhook": "javascript:alert(1)"}, "webhook")],
)
def test_a_webhook_that_is_not_http_is_refused_at_decode(task, parameter):
    (item,) = decode_frame(json.dumps([task]).encode())
    assert item.error is not None and item.error.code == ErrorCode.URL_NOT_ALLOWED, item.error
    assert item.error.parameter == parameter


@pytest.mark.parametrize(
    ("task", "parameter"),
    [({**INFERENCE, "webhookURL": "http://127.0.0.1:9/hook"}, "webhookURL"),
     ({**INFERENCE, "webhookURL": "http://[::ffff:10.0.0.1]/hook"}, "webhookURL"),
     ({**UPLOAD, "webhookURL": "http://169.254.169.254/latest"}, "webhookURL"),
     ({**TRAINING, "webhook": "http://192.168.1.1/"}, "webhook")],
)
async def test_the_guard_refuses_a_private_webhook(task, parameter):
    (item,) = decode_frame(json.dumps([task]).encode())
    assert item.task is not None, item.error
    strict = WebhookSender(NetPolicy(allow_private=False), timeout_s=5, retries=0)
    error = await strict.refusal(item.task, item.task_type, item.task_uuid)
    assert error is not None and error.code == ErrorCode.URL_NOT_ALLOWED and error.parameter == parameter, error
    assert error.taskUUID == UUID and error.taskType == task["taskType"]
    lenient = WebhookSender(NetPolicy(allow_private=True), timeout_s=5, retries=0)
    assert await lenient.refusal(item.task, item.task_type, item.task_uuid) is None  # --allow-private-urls


async def test_a_task_without_webhook_or_with_a_public_one_passes():
    strict = WebhookSender(NetPolicy(allow_private=False), timeout_s=5, retries=0)
    for task in (INFERENCE, {**INFERENCE, "webhookURL": "http://93.184.216.34/hook"}, {**TRAINING, "webhook": ""}):
        (item,) = decode_frame(json.dumps([task]).encode())
        assert await strict.refusal(item.task, item.task_type, item.task_uuid) is None


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import start_server, stop_server

    server = start_server(tmp_path_factory.mktemp("strict-hooks") / "data", allow_private=False, env={"WISP_WARM_BUILTIN": "0"})
    yield server
    stop_server(server)


async def test_a_private_webhook_is_refused_before_the_ack(strict_server):
    from websockets.asyncio.client import connect

    async with connect(strict_server.ws_url) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": strict_server.key}]))
        assert "data" in json.loads(await ws.recv())
        task_uuid = str(uuid.uuid4())
        task = {**INFERENCE, "taskUUID": task_uuid, "width": 64, "height": 64, "steps": 1,
                "webhookURL": "http://127.0.0.1:9/hook"}
        await ws.send(json.dumps([task]))
        reply = json.loads(await ws.recv())
        assert reply.get("errors", [{}])[0].get("code") == "urlNotAllowed", reply  # not an ack
        assert reply["errors"][0]["parameter"] == "webhookURL" and reply["errors"][0]["taskUUID"] == task_uuid
