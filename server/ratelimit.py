"""Failed-authentication limiting, per client address.

API keys carry 256 bits of randomness, so guessing one is hopeless; the limit
is there to make scanning loud and cheap to refuse: after ``max_failures``
failed attempts within ``window_s`` from one address, further attempts from
it are answered ``authRateLimited`` without looking at the key, until the
window has passed.  Memory is bounded (oldest addresses are forgotten).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class AuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_addresses: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._pending: dict[str, int] = {}
        """Attempts being checked now, per address."""

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) < self.max_failures:
            return 0.0
        return max(0.0, self.window_s - (now - times[0]))

    def begin(self, address: str) -> float:
        """Count an attempt about to be checked; returns the seconds to wait instead (0: go ahead, then call :meth:`end`).

        Attempts in flight count as failures until they end, so N concurrent
        wrong keys from one address are stopped at the limit, not after all
        N were checked.
        """
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) + self._pending.get(address, 0) >= self.max_failures:
            return max(0.001, self.window_s - (now - times[0])) if len(times) >= self.max_failures else 1.0
        self._pending[address] = self._pending.get(address, 0) + 1
        return 0.0

    def end(self, address: str, failed: bool) -> None:
        left = self._pending.get(address, 0) - 1
        if left > 0:
            self._pending[address] = left
        else:
            self._pending.pop(address, None)
        if failed:
            self.failed(address)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
