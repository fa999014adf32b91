"""A bounded queue that is fair between owners, and the worker thread it feeds.

Each owner (a session) has its own FIFO; the worker takes one job from each
owner in turn, so one client's burst of 20 tasks cannot starve another's
single task.  The total depth is bounded: ``put`` raises :class:`QueueFull`
instead of growing, and the client gets a retryable error.

Jobs run on the worker thread; their results are handed back to the event
loop with ``call_soon_threadsafe``.  Nothing here runs on the loop but
``submit`` and :class:`StepRelay`'s loop side.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from engine.errors import EngineStopped, JobCancelled, QueueFull
from engine.threads import name_os_thread

log = logging.getLogger("wisp.engine")


class _Job:
    __slots__ = ("fn", "future", "loop", "batch", "on_start", "cancel", "owner", "on_start_here")

    def __init__(
        self, fn: Callable[[], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop, batch: "Batchable | None" = None,
        on_start: Callable[[], None] | None = None, cancel: threading.Event | None = None,
        on_start_here: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.batch = batch
        self.on_start = on_start
        self.cancel = cancel
        """Set by ``taskCancel``: a queued job is withdrawn, a running one is asked to stop (its own check)."""
        self.owner = ""
        self.on_start_here = on_start_here
        """Called on the worker thread when it takes the job (no wake-up of the loop; see :meth:`StepRelay.started`)."""


@dataclass(frozen=True)
class Batchable:
    """How a job may share one device call with compatible jobs (dynamic batching).

    Jobs with equal ``key`` can run together: ``run([payload, …])`` returns
    one result per payload, in order.  ``fn`` of the job still runs it alone.
    """

    key: Hashable
    payload: Any
    run: Callable[[list[Any]], list[Any]]


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
            job.owner = owner
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

    def withdraw(self, cancel: threading.Event) -> "_Job | None":
        """Take out the queued job carrying ``cancel`` (None: it is not waiting, it runs or ran)."""
        with self._cond:
            for owner, queue in self._queues.items():
                for job in queue:
                    if job.cancel is cancel:
                        queue.remove(job)
                        self._size -= 1
                        if not queue:
                            del self._queues[owner]
                        return job
        return None

    def take_compatible(self, key: Hashable, limit: int, window_s: float = 0.0, leader: str | None = None) -> list[_Job]:
        """Up to ``limit`` queued jobs batchable under ``key``, oldest first.

        Fair between owners: while any owner waits with work that cannot
        join the batch, companions come only from owners other than the
        ``leader`` (the owner whose turn it is), one job each — the jobs the
        round-robin would have run next anyway — so a batch never makes
        another team wait longer than its turn.  With nobody else waiting,
        companions come from anyone, any number.  Waits up to ``window_s``
        for more to arrive when fewer are queued (0: take only what is
        already waiting, so a lone job never waits).
        """
        taken: list[_Job] = []
        used: set[str] = set()
        deadline = time.monotonic() + window_s
        with self._cond:
            while True:
                blocked = any(j.batch is None or j.batch.key != key for q in self._queues.values() for j in q)
                for owner in list(self._queues):
                    if blocked and (owner == leader or owner in used):
                        continue
                    queue = self._queues[owner]
                    share = 1 if blocked else limit
                    for job in [j for j in queue if j.batch is not None and j.batch.key == key][: min(share, limit - len(taken))]:
                        queue.remove(job)
                        self._size -= 1
                        taken.append(job)
                        used.add(owner)
                    if not queue:
                        del self._queues[owner]
                    elif blocked and owner in used:
                        self._queues.move_to_end(owner)  # its turn was this companion: back of the line
                    if len(taken) >= limit:
                        return taken
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return taken
                self._cond.wait(left)

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
    """One thread per device, running jobs from a :class:`FairQueue`.

    A batchable job takes compatible queued jobs with it (up to
    ``max_batch`` in all, waiting at most ``batch_window_s`` for more) and
    they run as one device call; every job still gets its own result.
    """

    def __init__(
        self, queue: FairQueue, name: str, on_start: Callable[[], None] | None = None,
        max_batch: int = 1, batch_window_s: float = 0.0,
    ) -> None:
        self.queue = queue
        self._on_start = on_start
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.batches: dict[int, int] = {}
        """Batch size → how many device calls ran with it (for tests and metrics)."""
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        name_os_thread()  # top -H and per-thread CPU figures show the device thread by name
        if self._on_start is not None:
            self._on_start()
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs = [job]
            if job.batch is not None and self.max_batch > 1:
                jobs += self.queue.take_compatible(job.batch.key, self.max_batch - 1, self.batch_window_s, leader=job.owner)
            self.batches[len(jobs)] = self.batches.get(len(jobs), 0) + 1
            for one in jobs:
                if one.on_start_here is not None:
                    one.on_start_here()
                elif one.on_start is not None:  # the job leaves the queue: "queued" becomes "running"
                    try:
                        one.loop.call_soon_threadsafe(one.on_start)
                    except RuntimeError:
                        pass
            try:
                if len(jobs) == 1:
                    results, error = [job.fn()], None
                else:
                    assert job.batch is not None
                    results, error = job.batch.run([j.batch.payload for j in jobs]), None  # type: ignore[union-attr]
            except BaseException as exc:  # every failure is answered, none kills the worker
                results, error = [None] * len(jobs), exc
            for one, result in zip(jobs, results):
                outcome = error
                if one.cancel is not None and one.cancel.is_set() and not isinstance(error, JobCancelled):
                    outcome = JobCancelled("cancelled by taskCancel")  # a batch companion's result is not delivered
                try:
                    one.loop.call_soon_threadsafe(_settle, one.future, result, outcome)
                except RuntimeError:
                    log.warning("event loop closed before a job's result could be delivered")


class StepRelay:
    """A job's step reports, from the worker thread to ``deliver(step, steps, payload)`` on the event loop.

    Waking the loop from the worker (``call_soon_threadsafe``) costs a
    cross-thread wake-up and a GIL hand-off between two busy threads: on a
    2-core VM about 0.7 ms of CPU per denoising step, which was most of what
    wisp added to a guided request (bench/inference.py, RESULTS.md,
    2026-12-04).  So a report crosses at once only when ``live`` (someone
    streams every step: the client asked for progress items).  Otherwise
    the worker queues it, and the loop fetches what is queued itself: every
    ``interval_s`` while the job runs (a loop timer, no wake-up from the
    worker) and once more when the job ends.  Either way every step is
    delivered, in order, before the job's result is returned.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, deliver: Callable[[int, int, Any], None], *, live: bool, interval_s: float = 0.5
    ) -> None:
        self.loop = loop
        self.deliver = deliver
        self.live = live
        self.interval_s = interval_s
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False

    def report(self, step: int, steps: int, payload: Any = None) -> None:
        """Worker thread: one step done."""
        if self.live:
            self.loop.call_soon_threadsafe(self.deliver, step, steps, payload)
        else:
            self._pending.append((self.deliver, (step, steps, payload)))  # deque append/popleft are thread-safe

    def begin(self) -> None:
        """Loop, when the job is queued: start fetching (a timer every ``interval_s``; an empty fetch is free)."""
        self._poll_later()

    def started(self, then: Callable[[float], None]) -> Callable[[], None]:
        """A worker-thread ``on_start_here`` for :func:`submit`: ``then(when)`` on the loop when the worker takes the job.

        Live, at once; otherwise queued with the steps and fetched with them, so
        taking a job costs the loop no wake-up either.  ``when`` is the
        ``time.monotonic()`` at which the worker took it, since the call itself
        may come much later.
        """

        def on_start() -> None:
            when = time.monotonic()
            if self.live:
                self.loop.call_soon_threadsafe(then, when)
            else:
                self._pending.append((then, (when,)))

        return on_start

    def starting(self, then: Callable[[], None] | None = None) -> Callable[[], None]:
        """An ``on_start`` for :func:`submit`: begin fetching when the worker takes the job, then call ``then``."""

        def on_start() -> None:
            self._poll_later()
            if then is not None:
                then()

        return on_start

    def finish(self) -> None:
        """Loop: the job ended (any way); deliver the steps not yet delivered and stop fetching."""
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fetch()

    def _poll_later(self) -> None:
        if not self.live and not self._finished and self._timer is None:
            self._timer = self.loop.call_later(self.interval_s, self._poll)

    def _poll(self) -> None:
        self._timer = None
        self._fetch()
        self._poll_later()

    def _fetch(self) -> None:
        while self._pending:
            fn, args = self._pending.popleft()
            fn(*args)


async def submit(
    queue: FairQueue, owner: str, fn: Callable[[], Any], batch: Batchable | None = None, on_start: Callable[[], None] | None = None,
    cancel: threading.Event | None = None, on_start_here: Callable[[], None] | None = None,
) -> Any:
    """Queue ``fn`` for the worker and wait for its result on the loop (``batch``: it may run batched;
    ``on_start`` is called on the loop when the worker takes the job, ``on_start_here`` instead on the
    worker thread; ``cancel``: see :func:`withdraw`)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    queue.put(owner, _Job(fn, future, loop, batch, on_start, cancel, on_start_here))
    return await future


def withdraw(queue: FairQueue, cancel: threading.Event) -> bool:
    """``taskCancel`` of a job submitted with ``cancel``: set the flag; a queued job is answered at once.

    Returns True when the job was still queued.  A running one sees the flag
    between its steps (its ``fn`` checks it) and ends with :class:`JobCancelled`.
    """
    cancel.set()
    job = queue.withdraw(cancel)
    if job is None:
        return False
    _settle(job.future, None, JobCancelled("cancelled by taskCancel before it started"))
    return True
