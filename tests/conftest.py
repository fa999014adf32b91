"""Shared fixtures: a real ``wisp serve`` subprocess on a free port.

The server runs with its own temporary data directory, private URLs allowed
(tests serve files from loopback), and one API key created through the CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# The 0.5 SDK waits this long for each getResponse answer that is still
# "processing"; shorten it so polling tests don't idle (read at import time).
os.environ.setdefault("RUNWARE_VIDEO_INITIAL_TIMEOUT", "2000")

ROOT = Path(__file__).resolve().parents[1]
WISP = [sys.executable, "-m", "server.cli"]


@dataclass
class RunningServer:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    key: str
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_key(self, team: str = "default") -> str:
        return create_key(self.data_dir, team)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def create_key(data_dir: Path, team: str = "default") -> str:
    out = subprocess.run(
        WISP + ["keys", "create", "--team", team, "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


def start_server(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120.0, allow_private: bool = True
) -> RunningServer:
    """Start ``wisp serve --port 0`` and wait for its ``listening on`` line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key = create_key(data_dir)
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    log_file = open(log_path, "w")
    # Tests send many bad keys from 127.0.0.1 on purpose; the limiter has its own test.
    # PNG parameters off: tests that compare image bytes compare pixels (test_png_parameters turns them on).
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WISP_TORCH_THREADS": "1", "WISP_AUTH_MAX_FAILURES": "100000",
                "WISP_PNG_PARAMETERS": "0", **(env or {})}
    proc = subprocess.Popen(
        WISP + ["serve", "--port", "0", "--data-dir", str(data_dir), *(["--allow-private-urls"] if allow_private else []), *extra],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"wisp listening on ws://[^:]+:(\d+)/v1", log_path.read_text(errors="replace"))
        if match:
            return RunningServer(proc, int(match.group(1)), data_dir, key, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"wisp serve did not start:\n{log_path.read_text(errors='replace')}")


def stop_server(server: RunningServer) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="session")
def wisp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the whole session (tests use their own taskUUIDs)."""
    server = start_server(tmp_path_factory.mktemp("wisp") / "data")
    try:
        yield server
    finally:
        stop_server(server)


def wisp_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(WISP + list(args), capture_output=True, text=True, cwd=ROOT)


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the project root (import-order and process-wide state checks)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A loopback port nothing listens on once this returns (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FileServer:
    """A loopback HTTP server over a folder, counting GETs per path (for 'no download' checks)."""

    def __init__(self, root: Path) -> None:
        import functools
        import http.server
        import threading

        self.root = root
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits[self.path] = hits.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: Path | str) -> str:
        rel = Path(path).resolve().relative_to(self.root.resolve()) if Path(path).is_absolute() else Path(path)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{rel.as_posix()}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    server = FileServer(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.close()
