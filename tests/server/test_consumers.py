"""Dead and slow consumers: a half-open socket is dropped and its results wait for a resume."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from tests.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def keepalive_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("keepalive") / "data",
                          env={"WISP_KEEPALIVE_INTERVAL": "0.5", "WISP_KEEPALIVE_TIMEOUT": "0.5"})
    yield server
    stop_server(server)


class DeadPeer:
    """A WebSocket client (websockets' sans-I/O protocol over a plain socket) that goes silent on demand."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        uri = parse_uri(url)
        self.sock = socket.create_connection((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._pump_until(lambda: self.protocol.handshake_exc is not None or self.protocol.state.name == "OPEN")

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def _pump_until(self, done) -> list:
        events = []
        self.sock.settimeout(30)
        while not done():
            data = self.sock.recv(65536)
            if not data:
                break
            self.protocol.receive_data(data)
            events += self.protocol.events_received()
            self._flush()
        return events

    def send(self, payload) -> None:
        self.protocol.send_text(json.dumps(payload).encode())
        self._flush()


def read_text(peer: DeadPeer) -> dict:
    peer.sock.settimeout(30)
    while True:
        for event in peer.protocol.events_received():
            if event.opcode.name == "TEXT":
                return json.loads(event.data)
        data = peer.sock.recv(65536)
        assert data, "server closed"
        peer.protocol.receive_data(data)
        peer._flush()  # answers pings while we are still 'alive'


async def test_half_open_socket_is_dropped_and_its_result_resumed(keepalive_server):
    peer = DeadPeer(keepalive_server.ws_url)
    peer.send([{"taskType": "authentication", "apiKey": keepalive_server.key}])
    session_uuid = read_text(peer)["data"][0]["connectionSessionUUID"]
    task_uuid = str(uuid.uuid4())
    peer.send([{"taskType": "imageInference", "taskUUID": task_uuid, "model": "wisp:tiny-sd15@1", "positivePrompt": "ghost",
                "width": 512, "height": 512, "steps": 8}])
    # Now the peer goes silent: it answers none of the server's pings (a half-open TCP peer).
    # The server must give up on it (keepalive 0.5 s + 0.5 s) and close the connection...
    peer.sock.settimeout(15)
    started = asyncio.get_running_loop().time()
    while await asyncio.to_thread(peer.sock.recv, 65536):  # bytes are read but never answered
        pass
    assert asyncio.get_running_loop().time() - started < 15
    async with connect(keepalive_server.ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": keepalive_server.key, "connectionSessionUUID": session_uuid}]))
        auth = json.loads(await ws.recv())
        assert auth["data"][0]["connectionSessionUUID"] == session_uuid  # ...but keep its session for a resume
        result = json.loads(await asyncio.wait_for(ws.recv(), 60))  # produced after the drop: buffered, then delivered
        assert result["data"][0]["taskUUID"] == task_uuid
    peer.sock.close()
