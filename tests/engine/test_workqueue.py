"""The fair, bounded work queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.errors import QueueFull
from engine.workqueue import FairQueue, StepRelay, Worker, _Job, submit


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


def _relay_run(live: bool, interval_s: float, pause_s: float) -> tuple[list[tuple[int, int, object]], int, set[int], list[int]]:
    """A worker thread reports 4 steps through a relay; returns the deliveries, the loop wake-ups the
    worker caused, the threads ``deliver`` ran on, and how many steps had arrived before ``finish``."""
    delivered: list[tuple[int, int, object]] = []
    threads: set[int] = set()
    wakes = [0]
    before_finish: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            wakes[0] += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        relay = StepRelay(loop, lambda *a: (delivered.append(a), threads.add(threading.get_ident())), live=live, interval_s=interval_s)
        relay.starting()()

        def work() -> None:
            for step in range(1, 5):
                time.sleep(pause_s)
                relay.report(step, 4, f"p{step}")

        await asyncio.to_thread(work)
        await asyncio.sleep(0)  # a live relay's last call_soon_threadsafe runs now
        before_finish.append(len(delivered))
        relay.finish()
        wakes[0] -= 1  # to_thread's own result hand-over
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]

    main = threading.get_ident()
    asyncio.run(scenario())
    assert threads <= {main}  # always delivered on the loop's thread
    return delivered, wakes[0], threads, before_finish


def test_step_relay_live_hands_over_each_step_at_once():
    delivered, wakes, _, before_finish = _relay_run(live=True, interval_s=60, pause_s=0)
    assert delivered == [(s, 4, f"p{s}") for s in range(1, 5)]
    assert wakes == 4 and before_finish == [4]


def test_step_relay_otherwise_never_wakes_the_loop_per_step_yet_delivers_every_step_in_order():
    delivered, wakes, _, before_finish = _relay_run(live=False, interval_s=60, pause_s=0)
    assert delivered == [(s, 4, f"p{s}") for s in range(1, 5)]
    assert wakes == 0 and before_finish == [0]  # all handed over by finish(), in order


def test_step_relay_fetches_on_its_own_timer_while_the_job_runs():
    delivered, wakes, _, before_finish = _relay_run(live=False, interval_s=0.01, pause_s=0.05)
    assert delivered == [(s, 4, f"p{s}") for s in range(1, 5)]
    assert wakes == 0 and before_finish[0] >= 1  # the loop's timer fetched steps before the end
