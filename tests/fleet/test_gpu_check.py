"""``bench/gpu_check.py`` keeps working on CPU (issue 14): CI runs it ``--quick``, fleet rows included."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_runs_on_cpu_and_prints_every_row(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    table = done.stdout
    assert "device cpu" in table
    for row in ("SD-1.x built-in", "SDXL built-in", "full-size SD-1.5", "LoRA switch", "cache tier moves", "dynamic batching",
                "fleet, 1 replica(s)", "fleet, 2 replica(s)", "fleet, 2 replicas vs 1"):
        assert row in table, table
    assert "to host 0," not in table  # the one-model device tier really moved models out
    assert "Traceback" not in done.stderr
