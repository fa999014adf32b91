"""A fleet that cannot be reached is said plainly at start-up, and wisp exits (no hang, no traceback)."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT, WISP, free_port


def test_an_unreachable_cluster_ends_start_up_with_a_plain_error(tmp_path):
    port = free_port()  # nothing listens here
    env = {**os.environ, "HOME": str(tmp_path / "home"), "WISP_FLEET_CONNECT_TIMEOUT": "5", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(WISP + ["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--engine", "ray",
                                  "--ray-address", f"127.0.0.1:{port}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"wisp: the Ray cluster at 127.0.0.1:{port} did not answer within 5 s" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
