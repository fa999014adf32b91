"""The fair, bounded work queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.errors import QueueFull
from engine.workqueue import FairQueue, Worker, _Job, submit


def test_round_robin_between_owners():
    queue = FairQueue(max_depth=100)
    loop = asyncio.new_event_loop()
    try:
        for i in range(5):
            queue.put("burst", _Job(lambda i=i: ("burst", i), loop.create_future(), loop))
        queue.put("lone", _Job(lambda: ("lone", 0), loop.create_future(), loop))
        order = [queue.get().fn() for _ in range(6)]
    finally:
        loop.close()
    assert order[:2] == [("burst", 0), ("lone", 0)]
    assert [o for o in order if o[0] == "burst"] == [("burst", i) for i in range(5)]


def test_bounded():
    queue = FairQueue(max_depth=2)
    loop = asyncio.new_event_loop()
    try:
        queue.put("a", _Job(lambda: 1, loop.create_future(), loop))
        queue.put("b", _Job(lambda: 1, loop.create_future(), loop))
        with pytest.raises(QueueFull):
            queue.put("c", _Job(lambda: 1, loop.create_future(), loop))
        assert len(queue.close()) == 2
    finally:
        loop.close()


async def test_worker_runs_off_the_loop_and_reports_failures():
    queue = FairQueue(max_depth=10)
    Worker(queue, "test-worker").start()
    loop_thread = threading.get_ident()
    try:
        assert await submit(queue, "o", threading.get_ident) != loop_thread

        def boom() -> None:
            raise ValueError("bad")

        with pytest.raises(ValueError):
            await submit(queue, "o", boom)
        assert await submit(queue, "o", lambda: 42) == 42  # the worker survived
    finally:
        queue.close()
