"""engine.heap.keep_freed_memory: a thread that frees and reallocates the same big blocks stops page-faulting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHURN = textwrap.dedent("""
    import json, sys, threading
    tuned = None
    if sys.argv[1] == "tuned":
        from engine.heap import keep_freed_memory
        tuned = keep_freed_memory()

    def minor_faults():
        with open(f"/proc/self/task/{threading.get_native_id()}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    counts = []
    full = int(sys.argv[2])

    def request_like():
        # a model's weights fill the thread's first 64 MB heap (``full`` KB; 0: none) ...
        weights = [bytearray(64 << 10) for _ in range(full // 64)]
        # ... then each "request": a few MB of activations, all freed at its end
        for _ in range(8):
            before = minor_faults()
            blocks = [bytearray(512 << 10) for _ in range(48 if not full else 8)]
            del blocks
            counts.append(minor_faults() - before)

    worker = threading.Thread(target=request_like)
    worker.start()
    worker.join()
    print(json.dumps({"tuned": tuned, "faults": counts}))
""")

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
                                 reason="glibc's malloc on Linux only")


def churn(mode: str, full_kb: int = 0, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode, str(full_kb)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return json.loads(out.stdout)


@linux_glibc
@pytest.mark.parametrize("full_kb", [0, 65000], ids=["above-the-thresholds", "a-heap-emptied-per-request"])
def test_freed_blocks_are_reused_without_page_faults(full_kb: int):
    plain = churn("plain", full_kb)
    tuned = churn("tuned", full_kb)
    assert tuned["tuned"] is True
    # glibc's defaults: each "request" touches its blocks anew (24 MB: ~6,000 faults; 4 MB in a heap of its own that is
    # unmapped when emptied: ~1,000); tuned: only the first one does
    assert min(plain["faults"][1:]) > 500, plain  # type: ignore[index]
    assert max(tuned["faults"][1:]) < 50, tuned  # type: ignore[index]


@linux_glibc
def test_the_operators_malloc_settings_stand():
    kept = churn("tuned", env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert kept["tuned"] is False
