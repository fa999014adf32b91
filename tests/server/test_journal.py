"""The task journal on its write-behind queue: statements are committed in bunches, without waking the writer per statement."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from engine.registry.db import Database
from engine.registry.writer import WriteBehind
from server.journal import TaskJournal
from tests.fixtures.writer_wakes import WakeCounter, wait_for

UUIDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]


def rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return {task_uuid: status for task_uuid, status in db.execute("SELECT task_uuid, status FROM tasks")}


def journal_on(path: Path, interval_s: float) -> TaskJournal:
    db = Database(path)
    return TaskJournal(db, WriteBehind(db, interval_s=interval_s))


def test_sync_commits_everything_queued_before_it(tmp_path: Path):
    journal = journal_on(tmp_path / "wisp.db", interval_s=60.0)  # the interval alone would not write them
    try:
        for task_uuid in UUIDS[:5]:
            journal.claimed("t", task_uuid, "imageInference", {"positivePrompt": "a cat"})
        journal.finished("t", UUIDS[0], "success", [{"imageUUID": "x"}], [])
        assert journal.writer.sync(timeout_s=10)
        assert rows(tmp_path / "wisp.db") == {UUIDS[0]: "success", **{u: "processing" for u in UUIDS[1:5]}}
    finally:
        journal.close()


def test_statements_reach_the_database_within_the_interval_and_close_writes_the_rest(tmp_path: Path):
    journal = journal_on(tmp_path / "wisp.db", interval_s=0.02)
    journal.claimed("t", UUIDS[0], "imageInference", {})
    assert wait_for(lambda: rows(tmp_path / "wisp.db") == {UUIDS[0]: "processing"})
    journal.finished("t", UUIDS[0], "error", [], [{"code": "x"}])
    journal.claimed("t", UUIDS[1], "imageInference", {})
    journal.released("t", UUIDS[1])
    journal.claimed("t", UUIDS[2], "imageInference", {})
    journal.close()
    assert rows(tmp_path / "wisp.db") == {UUIDS[0]: "error", UUIDS[2]: "processing"}
    assert journal.writer._thread is not None and not journal.writer._thread.is_alive()
    journal.claimed("t", UUIDS[3], "imageInference", {})  # after close: written at once by the caller
    assert UUIDS[3] in rows(tmp_path / "wisp.db")


def test_a_busy_writer_is_woken_once_per_interval_not_per_statement_and_an_idle_one_sleeps(tmp_path: Path):
    journal = journal_on(tmp_path / "wisp.db", interval_s=0.05)
    writer = journal.writer
    wakes = WakeCounter(writer)
    try:
        # idle: once the queue is empty after a commit, the writer waits for a wake-up, not for a timer
        journal.claimed("t", UUIDS[0], "imageInference", {})  # starts the writer
        assert wait_for(lambda: UUIDS[0] in rows(tmp_path / "wisp.db"))
        assert wait_for(lambda: writer._asleep)
        waits: list[float | None] = []
        real_wait = writer._wake.wait

        def recorded_wait(timeout: float | None = None) -> bool:
            waits.append(timeout)
            return real_wait(timeout)

        writer._wake.wait = recorded_wait  # type: ignore[method-assign]
        journal.finished("t", UUIDS[0], "success", [], [])  # wakes it: written within the interval, no sync
        assert wait_for(lambda: rows(tmp_path / "wisp.db") == {UUIDS[0]: "success"})
        assert wait_for(lambda: writer._asleep and 0.05 in waits and waits[-1] is None)
        # one gather, then asleep at once: no empty interval timed out first (a leading None: the sleep it was entering)
        assert [w for w in waits if w is not None] == [0.05], waits
        # busy: a statement every ~10 ms; the first after a commit wakes the writer, the rest of the
        # interval's statements find it awake and gathering
        wakes.reset()
        for fed in range(40):
            journal.claimed("t", UUIDS[1 + fed % 19], "imageInference", {})
            time.sleep(0.01)
        assert 1 <= wakes.count <= 20, wakes.count  # ~8 intervals in 0.4 s (and a slow box's extra ones); per statement would be 40
        assert journal.writer.sync(timeout_s=10)
        assert len(rows(tmp_path / "wisp.db")) == 20
        assert wait_for(lambda: writer._asleep)  # and asleep again once the queue is written
    finally:
        journal.close()


def test_the_journal_interval_setting_reaches_the_write_behind_queue(tmp_path: Path, monkeypatch):
    from server.config import ServerConfig

    monkeypatch.setenv("WISP_JOURNAL_INTERVAL", "0.2")
    assert ServerConfig.from_env().journal_interval_s == 0.2
    monkeypatch.setenv("WISP_JOURNAL_INTERVAL", "3600")
    assert ServerConfig.from_env().journal_interval_s == 10.0  # at most MAX_WRITE_INTERVAL_S
    monkeypatch.setenv("WISP_JOURNAL_INTERVAL", "-1")
    assert ServerConfig.from_env().journal_interval_s == 0.0
    monkeypatch.delenv("WISP_JOURNAL_INTERVAL")
    assert ServerConfig.from_env().journal_interval_s == 0.05
    assert Database(tmp_path / "a.db", write_interval_s=0.2).writer.interval_s == 0.2
    assert Database(tmp_path / "b.db").writer.interval_s == 0.05
