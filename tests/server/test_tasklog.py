"""Task lines and task metrics leave the event loop: the loop queues, a writer thread observes and writes (issue 16)."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from server import metrics, tasklog


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging._srcfile, logging.logThreads, logging.logProcesses)  # type: ignore[attr-defined]
    monkeypatch.setenv("WISP_LOG_FORMAT", "json")
    monkeypatch.setenv("WISP_LOG_LEVEL", "INFO")
    out = io.StringIO()
    tasklog.configure(out)
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
    time.sleep(0.35)  # the writer runs every 0.1 s
    line = json.loads(configured.getvalue().splitlines()[0])
    assert line["taskUUID"] == "u-1" and line["outcome"] == "testQueued" and line["images"] == 1
    assert abs(line["time"] - ended) < 0.05  # stamped when the task ended, not when it was written
    assert 250 < line["queuedMs"] < 400 and 150 < line["runningMs"] < 300
    assert _count("imageInference", "testQueued") == before + 1


def test_an_idle_writer_sleeps_and_the_next_finished_task_wakes_it(configured: io.StringIO, monkeypatch: pytest.MonkeyPatch):
    writer = tasklog._writer
    assert writer is not None
    passes = 0
    real_drain = tasklog.drain

    def counted_drain() -> None:
        nonlocal passes
        passes += 1
        real_drain()

    monkeypatch.setattr(tasklog, "drain", counted_drain)
    deadline = time.monotonic() + 5
    while not writer._asleep and time.monotonic() < deadline:  # nothing queued: it sleeps instead of polling
        time.sleep(0.01)
    assert writer._asleep
    passes = 0
    time.sleep(0.5)
    assert passes == 0  # no pass every 0.1 s while nothing is queued
    tasklog.task_finished("imageInference", "w-1", "team-a", None, "testWoken", time.monotonic(), None)
    deadline = time.monotonic() + 5
    while "w-1" not in configured.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(configured.getvalue().splitlines()[-1])["taskUUID"] == "w-1"
    deadline = time.monotonic() + 5
    while not writer._asleep and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer._asleep  # and asleep again once the line is written


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
