"""Client commands facing a server that is not there: one clear line and exit 1, never a traceback (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import server_ws_url
from tests.conftest import free_port, wisp_cli


@pytest.mark.parametrize("given, expected", [
    ("ws://127.0.0.1:7788/v1", "ws://127.0.0.1:7788/v1"),
    ("http://127.0.0.1:7788", "ws://127.0.0.1:7788/v1"),
    ("https://wisp.example/", "wss://wisp.example/v1"),
    ("127.0.0.1:9000", "ws://127.0.0.1:9000/v1"),
    ("wss://h/prefix/v1/", "wss://h/prefix/v1"),
])
def test_server_urls_in_either_spelling(given: str, expected: str):
    assert server_ws_url(given) == expected


def test_upload_train_and_cancel_with_no_server_say_so_in_one_line(tmp_path: Path):
    port = free_port()
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    for args in (
        ["upload", str(model), "--air", "a:b@1", "--category", "lora", "--server", f"http://127.0.0.1:{port}", "--api-key", "k", "--quiet"],
        ["upload", "https://example.invalid/m.safetensors", "--air", "a:b@1", "--category", "lora",
         "--server", f"ws://127.0.0.1:{port}/v1", "--api-key", "k", "--quiet"],
        ["train", str(image), "--server", f"127.0.0.1:{port}", "--api-key", "k", "--quiet"],
        ["train", "--cancel", "00000000-0000-4000-8000-000000000000", "--server", f"ws://127.0.0.1:{port}/v1", "--api-key", "k"],
    ):
        out = wisp_cli(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.startswith("wisp: ")]
        assert lines == [f"wisp: cannot reach ws://127.0.0.1:{port}/v1: nothing answered there "
                         "(is `wisp serve` running, on that host and port?)"], out.stderr


def test_admin_commands_say_which_data_dir_and_do_not_read_a_missing_one(tmp_path: Path):
    empty = tmp_path / "typo"
    for args in (["keys", "list"], ["sources", "list"], ["teams", "list"], ["usage"], ["keys", "revoke", "wisp_x"]):
        out = wisp_cli(*args, "--data-dir", str(empty))
        assert out.returncode == 1 and f"no wisp database in {empty}" in out.stderr and "Traceback" not in out.stderr, args
    assert not (empty / "wisp.db").exists()
    data = tmp_path / "data"
    created = wisp_cli("keys", "create", "--data-dir", str(data))
    assert created.returncode == 0 and f"wisp: data dir {data} (a new database)" in created.stderr
    listed = wisp_cli("keys", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and f"wisp: data dir {data}\n" in listed.stderr and "default" in listed.stdout


def test_loadtest_exits_non_zero_with_the_reason_when_nothing_authenticated(wisp_server):
    out = wisp_cli("loadtest", "--url", wisp_server.ws_url, "--api-key", "wisp_wrong", "--sockets", "2", "--duration", "1", "--mix", "ping=1")
    assert out.returncode == 1, out.stderr
    assert "no socket connected and authenticated" in out.stderr and "invalidApiKey" in out.stderr
    nowhere = wisp_cli("loadtest", "--url", f"ws://127.0.0.1:{free_port()}/v1", "--api-key", "k", "--sockets", "1", "--duration", "1")
    assert nowhere.returncode == 1 and "failed connections" in nowhere.stderr and "Traceback" not in nowhere.stderr
    ok = wisp_cli("loadtest", "--url", wisp_server.ws_url, "--api-key", wisp_server.key, "--sockets", "1", "--duration", "1",
                  "--mix", "ping=1")
    assert ok.returncode == 0, ok.stderr


def test_train_on_a_missing_file_says_no_such_file(tmp_path: Path):
    out = wisp_cli("train", str(tmp_path / "nope.png"), "--server", f"127.0.0.1:{free_port()}", "--api-key", "k")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"wisp: no such file: {tmp_path / 'nope.png'}" in out.stderr


def test_help_speaks_of_prices_not_of_the_seed():
    out = wisp_cli("--help")
    usage = wisp_cli("usage", "--help")
    assert "seed's" not in out.stdout + usage.stdout
    assert "$0.05 per started GB" in out.stdout
