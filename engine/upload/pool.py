"""Threads of their own for blocking downloads.

A model download can last an hour, and a slow or hostile server can make it
last as long as it likes.  On asyncio's default executor a handful of those
would take every thread that ``asyncio.to_thread`` shares with the rest of
the server (key checks, file reads, registry writes), and at exit Python
joins that executor's threads, so the process could not stop either.  Here
downloads get a fixed number of daemon threads: more wait in line, nothing
else waits behind them, and stopping never joins them (each download also
checks the engine's stop flag between reads, see :mod:`engine.upload.fetch`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class DaemonPool:
    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on one of the pool's threads and await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, kwargs, loop, future))
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, kwargs, loop, future = job
            if future.cancelled():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting task, raised there
                _settle(loop, future, None, exc)
            else:
                _settle(loop, future, result, None)

    def close(self) -> None:
        """Let each thread end after its current job (jobs still queued are skipped)."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Any]", result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
