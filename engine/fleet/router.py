"""The fleet's Ray Serve request router: :func:`engine.fleet.routing.rank` over the replicas' reported state.

Serve calls :meth:`WispRouter.choose_replicas` in the front end's process for
every request to the engine deployment.  The first argument of a call is the
job's routing hint (:class:`~engine.fleet.routing.Hint` as a dict); calls
without one (none today) go to any replica.  Each rank is one replica, so
Serve tries them in exactly this order, moving on only when a replica is at
its ``max_ongoing_requests``; ``should_backoff`` is set so a fleet that is
full everywhere waits with backoff instead of spinning.

Serve pickles this module *by value* into the caller's router (its globals
are copies): state meant to be read elsewhere in the process lives in
:mod:`engine.fleet.routing`, reached through the module.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica  # noqa: F401

from engine.fleet import routing
from engine.fleet.routing import QUEUE_PROBE_DEADLINE_S, SPILL_QUEUE, Hint, Recent, ReplicaState, rank


class WispRouter(RequestRouter):
    queue_len_response_deadline_s = QUEUE_PROBE_DEADLINE_S
    """How long Serve waits for a replica's queue length before it tries the next rank (Serve's default: 0.1 s,
    doubled on each retry up to 1 s).  A new front end knows no queue lengths and probes each replica first; with
    0.1 s, a replica that answered late on a busy machine lost the request to the next rank, which then loaded a
    model the first one held warm (seconds).  A replica that never answers costs a routing this long once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recent = Recent()
        self._spill_queue = SPILL_QUEUE
        self._in_flight: dict[str, int] = {}
        """Requests this router sent to each replica and not yet completed: exact and current, where the replicas'
        reported queues are a stats period old (a burst would all go to the replica that looked shortest)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._spill_queue = int(kwargs.get("spill_queue", SPILL_QUEUE))

    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        hint = Hint.from_dict(pending_request.args[0]) if pending_request is not None and pending_request.args else None
        if hint is None:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        states = []
        for rid, replica in by_id.items():
            state = ReplicaState.from_stats(rid, replica.routing_stats)
            states.append(dataclasses.replace(state, queue=max(state.queue, self._in_flight.get(rid, 0))))
        now = time.monotonic()
        counters = routing.COUNTERS  # through the module: Serve pickles this module by value, routing by reference
        counters["routed"] += 1
        ordered = rank(states, hint, self._recent, now, self._spill_queue, counters)
        self._recent.note(hint.model, ordered[0], now)
        return [[by_id[rid]] for rid in ordered]

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        key = replica_id.unique_id
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
        key = replica_id.unique_id
        self._in_flight[key] = max(0, self._in_flight.get(key, 0) - 1)
