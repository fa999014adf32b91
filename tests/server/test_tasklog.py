"""Task lines and task metrics leave the event loop: the loop queues, the write-behind thread observes and writes (issue 16)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from engine.registry.db import Database
from engine.registry.writer import WriteBehind
from server import metrics, tasklog
from tests.fixtures.writer_wakes import WakeCounter, wait_for


@pytest.fixture
def writer(tmp_path: Path):
    """The database's write-behind queue, as ``wisp serve`` gives it to the task log (a short interval for the tests)."""
    behind = WriteBehind(Database(tmp_path / "wisp.db"), interval_s=0.05)
    yield behind
    behind.close()


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, writer: WriteBehind):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging._srcfile, logging.logThreads, logging.logProcesses)  # type: ignore[attr-defined]
    monkeypatch.setenv("WISP_LOG_FORMAT", "json")
    monkeypatch.setenv("WISP_LOG_LEVEL", "INFO")
    out = io.StringIO()
    tasklog.configure(out)
    tasklog.ride_on(writer)
    try:
        yield out
    finally:
        tasklog.flush()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging._srcfile, logging.logThreads, logging.logProcesses = saved[2:]  # type: ignore[attr-defined]


def _count(task_type: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value("wisp_tasks_total", {"task_type": task_type, "outcome": outcome})
    return value or 0.0


def test_the_loop_only_queues_and_the_line_keeps_the_tasks_own_time(configured: io.StringIO):
    before = _count("imageInference", "testQueued")
    ended = time.time()
    tasklog.task_finished("imageInference", "u-1", "team-a", "wisp:tiny-sd15@1", "testQueued", time.monotonic() - 0.5,
                          time.monotonic() - 0.2, images=1, sent_bytes=10)
    assert configured.getvalue() == ""  # nothing written on the caller's thread
    time.sleep(0.35)  # the writer gathers for 0.05 s
    line = json.loads(configured.getvalue().splitlines()[0])
    assert line["taskUUID"] == "u-1" and line["outcome"] == "testQueued" and line["images"] == 1
    assert abs(line["time"] - ended) < 0.05  # stamped when the task ended, not when it was written
    assert 250 < line["queuedMs"] < 400 and 150 < line["runningMs"] < 300
    assert _count("imageInference", "testQueued") == before + 1


def test_an_idle_writer_sleeps_and_the_next_finished_task_wakes_it(
    configured: io.StringIO, writer: WriteBehind, monkeypatch: pytest.MonkeyPatch,
):
    passes: list[str] = []
    real_drain = tasklog.drain

    def counted_drain() -> None:
        passes.append(threading.current_thread().name)
        real_drain()

    tasklog.ride_on(writer)  # (the fixture shared the real drain: swap in the counting one)
    writer.unshare(real_drain)
    writer.share(counted_drain, tasklog._waiting)
    tasklog.task_finished("imageInference", "w-0", "team-a", None, "testWoken", time.monotonic(), None)
    assert wait_for(lambda: "w-0" in configured.getvalue())
    assert wait_for(lambda: writer._asleep)  # nothing queued: it sleeps instead of polling
    passes.clear()
    time.sleep(0.3)
    assert passes == []  # no pass every interval while nothing is queued
    tasklog.task_finished("imageInference", "w-1", "team-a", None, "testWoken", time.monotonic(), None)
    assert wait_for(lambda: "w-1" in configured.getvalue())
    assert json.loads(configured.getvalue().splitlines()[-1])["taskUUID"] == "w-1"
    assert set(passes) == {writer.name}  # written by the write-behind thread, not the caller's or a thread of its own
    assert not any(t.name == "wisp-tasklog" for t in threading.enumerate())
    assert wait_for(lambda: writer._asleep)  # and asleep again once the line is written


def test_a_task_line_and_the_journal_statement_beside_it_share_one_wake_up(configured: io.StringIO, tmp_path: Path):
    """The loop queues the task's outcome statement, then its line: one thread is woken, once, and does both."""
    # A long gather: a second wake-up would need the writer to commit and fall asleep between the two calls below.
    writer = WriteBehind(Database(tmp_path / "gather.db"), interval_s=1.0)
    try:
        tasklog.ride_on(writer)
        writer.put("CREATE TABLE IF NOT EXISTS t (a TEXT)")
        assert wait_for(lambda: writer._asleep)
        wakes = WakeCounter(writer)
        writer.put("INSERT INTO t VALUES (?)", ("outcome",))
        tasklog.task_finished("imageInference", "s-1", "team-a", None, "testShared", time.monotonic(), None)
        assert wait_for(lambda: "s-1" in configured.getvalue())
        assert wakes.count == 1  # the statement woke it; the line found it awake and gathering
        assert writer.sync()
        assert [tuple(row) for row in writer.db.connect().execute("SELECT a FROM t")] == [("outcome",)]
    finally:
        writer.close()


def test_after_the_writer_closes_lines_are_written_by_their_caller(configured: io.StringIO, writer: WriteBehind):
    writer.close()
    tasklog.task_finished("imageInference", "c-1", "team-a", None, "testClosed", time.monotonic(), None)
    assert "c-1" in configured.getvalue()  # at once, on this thread: nothing is left queued behind a stopped thread


def test_drain_counts_every_ended_task_at_once(configured: io.StringIO):
    before = _count("modelSearch", "testDrained")
    for n in range(5):
        tasklog.task_finished("modelSearch", f"s-{n}", "team-a", None, "testDrained", time.monotonic(), None, level=logging.DEBUG)
    tasklog.drain()  # what /metrics does before a scrape
    assert _count("modelSearch", "testDrained") == before + 5
    assert configured.getvalue() == ""  # logged at DEBUG: counted, not written


def test_without_the_writer_tasks_are_counted_at_once():
    assert tasklog._writer is None
    before = _count("imageUpload", "testDirect")
    tasklog.task_finished("imageUpload", "d-1", "t", None, "testDirect", time.monotonic(), None)
    assert _count("imageUpload", "testDirect") == before + 1


def test_queries_answered_from_memory_are_counted_without_a_line(configured: io.StringIO):
    before = _count("modelSearch", "success")
    for n in range(7):
        tasklog.query_answered("modelSearch", f"q-{n}", "team-a", time.monotonic())
    tasklog.drain()  # what /metrics does before a scrape
    assert _count("modelSearch", "success") == before + 7
    tasklog.drain()  # counted once, not again
    assert _count("modelSearch", "success") == before + 7
    assert configured.getvalue() == ""


def test_queries_answered_from_memory_get_their_line_at_debug(configured: io.StringIO):
    logging.getLogger("wisp.tasks").setLevel(logging.DEBUG)
    try:
        before = _count("modelSearch", "success")
        tasklog.query_answered("modelSearch", "q-debug", "team-a", time.monotonic())
        tasklog.drain()
        assert _count("modelSearch", "success") == before + 1
        line = json.loads(configured.getvalue().splitlines()[0])
        assert line["taskUUID"] == "q-debug" and line["level"] == "DEBUG" and line["outcome"] == "success"
    finally:
        logging.getLogger("wisp.tasks").setLevel(logging.NOTSET)


def test_without_the_writer_queries_are_counted_at_once():
    assert tasklog._writer is None
    before = _count("modelSearch", "success")
    tasklog.query_answered("modelSearch", "q-direct", "t", time.monotonic())
    assert _count("modelSearch", "success") == before + 1
