"""Webhook delivery: POST each result to the task's ``webhookURL``.

The body is ``{"data": [item]}`` for a result and ``{"errors": [error]}`` for a
failure, the same objects the socket carries.  Each POST is retried with
backoff (``webhook_retries`` times) on a network error or a 5xx answer.
Targets pass the same URL guard as downloads.  Deliveries are tracked tasks:
a failure is logged, never lost silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from engine.net import NetPolicy, check_url, guarded_async_client

log = logging.getLogger("wisp.webhooks")


class WebhookSender:
    def __init__(self, policy: NetPolicy, timeout_s: float, retries: int) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.retries = retries
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None

    def post(self, url: str, body: bytes, *, sequence: str | None = None) -> None:
        """Deliver ``body`` in the background; posts with the same ``sequence`` arrive in the order posted.

        A long task's statuses (training) use its taskUUID as ``sequence``: each
        POST waits until the previous one is delivered or given up.
        """
        previous = self._last.get(sequence) if sequence is not None else None
        task = asyncio.get_running_loop().create_task(self._deliver(url, body, after=previous))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if sequence is not None:
            self._last[sequence] = task
            task.add_done_callback(lambda t, key=sequence: self._last.get(key) is t and self._last.pop(key))

    async def _deliver(self, url: str, body: bytes, after: "asyncio.Task[None] | None" = None) -> None:
        if after is not None:
            await asyncio.wait([after])
        if self._client is None:
            self._client = guarded_async_client(self.policy, "webhookURL", self.timeout_s)
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                await check_url(url, self.policy, "webhookURL")
                response = await self._client.post(url, content=body, headers={"content-type": "application/json"})
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("webhook %s answered %s; not retried", url, response.status_code)
                    return
                reason: Any = f"HTTP {response.status_code}"
            except Exception as exc:  # network errors and refused targets alike
                reason = exc
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("webhook %s failed after %d attempts: %s", url, self.retries + 1, reason)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in self._tasks:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
