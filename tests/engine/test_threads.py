"""Long-lived threads carry their Python names into the OS (top -H, /proc/PID/task/*/comm, the benches' per-thread split)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from engine.threads import name_os_thread


def _os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
def test_a_thread_takes_its_threading_name_cut_to_what_linux_keeps():
    seen: list[str] = []

    def work() -> None:
        before = _os_name()
        name_os_thread()
        seen.extend([before, _os_name()])

    thread = threading.Thread(target=work, name="wisp-a-long-thread-name")
    thread.start()
    thread.join()
    assert seen[0] != "wisp-a-long-thr"  # Python 3.11 leaves the process's name
    assert seen[1] == "wisp-a-long-thr"  # 15 bytes: the kernel's limit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
def test_the_device_thread_and_the_write_behind_writer_are_named(tmp_path: Path):
    from engine.registry.db import Database
    from engine.registry.writer import WriteBehind
    from engine.workqueue import FairQueue, Worker

    queue = FairQueue(max_depth=4)
    worker = Worker(queue, "wisp-device-7")
    worker.start()
    writer = WriteBehind(Database(tmp_path / "wisp.db"), name="wisp-db-writer")
    writer.put("CREATE TABLE t (a)")
    try:
        assert writer.sync()
        names = {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}
        assert {"wisp-device-7", "wisp-db-writer"} <= names
    finally:
        queue.close()
        writer.close()
