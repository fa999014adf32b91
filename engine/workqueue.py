"""A bounded queue that is fair between owners, and the worker thread it feeds.

Each owner (a session) has its own FIFO; the worker takes one job from each
owner in turn, so one client's burst of 20 tasks cannot starve another's
single task.  The total depth is bounded: ``put`` raises :class:`QueueFull`
instead of growing, and the client gets a retryable error.

Jobs run on the worker thread; their results are handed back to the event
loop with ``call_soon_threadsafe``.  Nothing here runs on the loop but
``submit``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from typing import Any, Callable

from engine.errors import EngineStopped, QueueFull

log = logging.getLogger("wisp.engine")


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


class FairQueue:
    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    def put(self, owner: str, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise EngineStopped("the engine is shutting down")
            if self._size >= self.max_depth:
                raise QueueFull(f"the work queue is full ({self.max_depth} tasks); retry shortly")
            self._queues.setdefault(owner, deque()).append(job)
            self._size += 1
            self._cond.notify()

    def get(self) -> _Job | None:
        """Next job, round-robin between owners; None once closed and drained."""
        with self._cond:
            while not self._size:
                if self._closed:
                    return None
                self._cond.wait()
            owner, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            self._size -= 1
            del self._queues[owner]
            if queue:
                self._queues[owner] = queue  # back of the line
            return job

    def close(self) -> list[_Job]:
        """Stop accepting; return the jobs that never started."""
        with self._cond:
            self._closed = True
            left = [job for q in self._queues.values() for job in q]
            self._queues.clear()
            self._size = 0
            self._cond.notify_all()
            return left


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Worker:
    """One thread per device, running jobs from a :class:`FairQueue`."""

    def __init__(self, queue: FairQueue, name: str, on_start: Callable[[], None] | None = None) -> None:
        self.queue = queue
        self._on_start = on_start
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                result, error = job.fn(), None
            except BaseException as exc:  # every failure is answered, none kills the worker
                result, error = None, exc
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:
                log.warning("event loop closed before a job's result could be delivered")


async def submit(queue: FairQueue, owner: str, fn: Callable[[], Any]) -> Any:
    """Queue ``fn`` for the worker and wait for its result on the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    queue.put(owner, _Job(fn, future, loop))
    return await future
