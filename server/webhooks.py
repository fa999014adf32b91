"""Webhook delivery: POST each result to the task's ``webhookURL``.

The body is ``{"data": [item]}`` for a result and ``{"errors": [error]}`` for a
failure, the same objects the socket carries.  Each POST is retried with
backoff (``webhook_retries`` times) on a network error or a 5xx answer.
Targets pass the same URL guard as downloads, first before the task is
acknowledged (:meth:`WebhookSender.refusal`), then at every POST.  Only the status line counts:
at most :data:`MAX_RESPONSE_BYTES` of a response body are read (a hook that
answers with an endless body is hung up on), and each attempt has a total
deadline.  Deliveries are tracked tasks: a failure is logged, never lost
silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from engine.errors import DownloadFailed, URLNotAllowed
from engine.net import NetPolicy, check_url, guarded_async_client
from protocol.errors import ErrorCode, WireError, wire_error

log = logging.getLogger("wisp.webhooks")

MAX_RESPONSE_BYTES = 64 * 1024
"""The most of a webhook's response body that is read (the body itself is unused)."""

REFUSAL_CHECK_S = 5.0
"""How long the check before the ack waits for DNS; a host that does not answer by then is checked again at delivery."""
WEBHOOK_FIELDS = ("webhookURL", "webhook")
"""Where a task names its webhook (``webhook``: the seed APIs' spelling, on training)."""


class WebhookSender:
    def __init__(self, policy: NetPolicy, timeout_s: float, retries: int) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.retries = retries
        self.failures = 0
        """Deliveries given up (after their retries, or answered 4xx): a counter for /metrics."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None

    async def refusal(self, task: Any, task_type: str | None, task_uuid: str | None) -> WireError | None:
        """``urlNotAllowed`` for a task whose webhook the guard refuses, else None; call it before the ack.

        The same check as each POST makes (engine.net, honouring
        ``--allow-private-urls``); the name is resolved off the event loop.  A
        host that does not resolve (yet) is not refused here: delivery checks
        it again and logs what fails.
        """
        for parameter in WEBHOOK_FIELDS:
            url = getattr(task, parameter, None)
            if not isinstance(url, str) or not url:
                continue
            try:
                async with asyncio.timeout(REFUSAL_CHECK_S):
                    await check_url(url, self.policy, parameter)
            except URLNotAllowed as exc:
                return wire_error(ErrorCode.URL_NOT_ALLOWED, exc.message, task_type=task_type, task_uuid=task_uuid, parameter=parameter)
            except (DownloadFailed, TimeoutError):
                continue
        return None

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
                async with asyncio.timeout(self.timeout_s * 2):
                    status = await self._post_once(url, body)
                if status < 500:
                    if status >= 400:
                        self.failures += 1
                        log.warning("webhook %s answered %s; not retried", url, status)
                    return
                reason: Any = f"HTTP {status}"
            except Exception as exc:  # network errors and refused targets alike
                reason = exc
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.failures += 1
        log.warning("webhook %s failed after %d attempts: %s", url, self.retries + 1, reason)

    async def _post_once(self, url: str, body: bytes) -> int:
        """POST once; the status code, after reading at most MAX_RESPONSE_BYTES of the body."""
        assert self._client is not None
        headers = {"content-type": "application/json"}
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES:
                    break  # leaving the block closes the connection instead of draining it
            return response.status_code

    async def aclose(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in self._tasks:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
