"""The task journal on its write-behind queue: statements are committed in bunches, without waking the writer per statement."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from engine.registry.db import Database
from engine.registry.writer import WriteBehind
from server.journal import TaskJournal

UUIDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]


def rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return {task_uuid: status for task_uuid, status in db.execute("SELECT task_uuid, status FROM tasks")}


def journal_on(path: Path, interval_s: float) -> TaskJournal:
    db = Database(path)
    return TaskJournal(db, WriteBehind(db, interval_s=interval_s))


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


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


def test_a_busy_writer_is_not_woken_per_statement_and_an_idle_one_sleeps_until_the_next(tmp_path: Path):
    journal = journal_on(tmp_path / "wisp.db", interval_s=0.05)
    writer = journal.writer
    try:
        # idle: after an interval without work the writer waits for a wake-up, not for a timer
        journal.claimed("t", UUIDS[0], "imageInference", {})  # starts the writer
        assert wait_for(lambda: writer._asleep)
        journal.claimed("t", UUIDS[0], "imageInference", {})  # wakes it
        assert wait_for(lambda: UUIDS[0] in rows(tmp_path / "wisp.db"))
        # busy: statements keep coming within the interval, so none of them sets the wake-up event
        wakes: list[bool] = []
        fed = 0
        while fed < 40:  # a statement every ~10 ms: always within the writer's 50 ms interval
            if not writer._asleep:
                journal.claimed("t", UUIDS[1 + fed % 19], "imageInference", {})
                wakes.append(writer._wake.is_set())
            fed += 1
            time.sleep(0.01)
        assert len(wakes) >= 30 and sum(wakes) <= 2, wakes  # at most a wake-up raced with the writer's own
        assert journal.writer.sync(timeout_s=10)
        assert len(rows(tmp_path / "wisp.db")) == 20
    finally:
        journal.close()
