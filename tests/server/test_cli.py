"""The ``wisp`` CLI: keys and graceful shutdown of ``wisp serve``."""

from __future__ import annotations

import signal
import subprocess

import httpx

from tests.conftest import ROOT, WISP, start_server, stop_server


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(WISP + list(args), capture_output=True, text=True, cwd=ROOT)


def test_keys_create_list_revoke_and_server_refuses_revoked(tmp_path):
    data = tmp_path / "data"
    created = run("keys", "create", "--team", "blue", "--data-dir", str(data))
    assert created.returncode == 0
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("wisp_") and len(key) > 40
    assert key not in (data / "wisp.db").read_bytes().decode("latin-1")  # stored hashed
    listing = run("keys", "list", "--data-dir", str(data))
    assert "blue" in listing.stdout and key[:12] in listing.stdout and key not in listing.stdout
    server = start_server(data)
    try:
        body = [{"taskType": "ping", "ping": True}]
        assert httpx.post(f"{server.http_url}/v1", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        revoked = run("keys", "revoke", key[:12], "--data-dir", str(data))
        assert revoked.returncode == 0
        response = httpx.post(f"{server.http_url}/v1", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.json()["errors"][0]["code"] == "invalidApiKey"
        assert run("keys", "revoke", key[:12], "--data-dir", str(data)).returncode == 1
    finally:
        stop_server(server)


def test_first_start_prints_a_key_and_sigterm_stops_cleanly(tmp_path):
    data = tmp_path / "fresh"
    data.mkdir()
    (data / "tmp").mkdir()
    (data / "tmp" / "half-written.part").write_bytes(b"x")
    proc = subprocess.Popen(WISP + ["serve", "--port", "0", "--data-dir", str(data)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "wisp listening on" in line:
                break
        text = "".join(lines)
        assert "created API key for team 'default'" in text
        assert not (data / "tmp" / "half-written.part").exists()  # crashed writes cleaned at start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
