"""How the fleet ranks replicas for a job: where the model's bytes already are, then where they may go.

Pure functions over what each replica last reported (:class:`ReplicaState`,
from its ``record_routing_stats``) and what the job needs (:class:`Hint`);
:mod:`engine.fleet.router` applies them inside Ray Serve.

The ranks, best first:

0. the model is resident in the replica's **device** tier;
1. resident in its **host** tier (a move, not a load);
2. being **loaded** there (reported, or routed there by this router within the last few seconds: stats are
   polled, so a burst must not outrun them);
3. the replica has **free budget** for the model's bytes: its device budget less what models *in use* hold
   (idle resident models can be evicted, so they do not count: otherwise a model would follow whichever
   replica evicted last, and the fleet's models would scatter instead of partitioning);
4. the rest (every byte is in use there: the model would wait or overflow).

Inside ranks 3 and 4 replicas are ordered by rendezvous (highest-random-weight)
hashing of the model's key with each replica's id: every front end computes
the same order without talking to the others, so a cold herd for one model
lands on one replica and loads once.  Replicas holding the model (ranks 0–2)
are ordered by queue first — a second copy still loading with one job queued
beats a resident one fifteen deep — then by rank, then by how many of the
job's LoRAs they already hold.  Queues are the larger of what the replica
last reported and what this router has sent it and not seen complete.

**Batch compatibility:** a holder where a job the new one could share a
pass with is still waiting (same :func:`batch_hint`: model, size, steps,
scheduler, CFG, LoRAs; one-image txt2img) counts ``BATCH_CREDIT`` fewer
queued jobs: the new job rides in that pass (the replica's dynamic batching
merges them) instead of costing a pass of its own elsewhere.  It is a hint
only: the replica's engine decides what batches, from the full request.

**A second replica for a hot model, deliberately:** when every replica
holding the model (ranks 0–2) reports a queue of at least ``spill_queue``
jobs and some other replica has at most half that queue, the least-loaded
such replica is put first.  It loads the model and from then on ranks 0 as
well, so a model that stays busy spreads over two replicas (then three, …)
instead of sticking to one (ray#65691); one that is merely warm never moves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

COUNTERS: dict[str, int] = {"routed": 0, "spills": 0}
"""This process's routing decisions (the router runs in the front end): requests ranked, deliberate spills."""
QUEUE_PROBE_DEADLINE_S = 0.5
"""The router's first wait for a replica's queue length (:class:`engine.fleet.router.WispRouter`; Serve's is 0.1 s)."""
SPILL_QUEUE = 8
"""A replica holding the model with this many jobs queued lets a lightly loaded replica take the next one."""
BATCH_CREDIT = 4
"""Queued jobs a replica is credited with when a batch-compatible job waits there (half a batch of 8)."""
RECENT_S = 5.0
"""How long this router remembers having sent a model to a replica (covers the stats period and a load's start)."""


@dataclass(frozen=True)
class Hint:
    """What the router needs to know of a job: its model's key and bytes, and its LoRAs' keys."""

    model: str
    """The checkpoint's sha256, or a built-in model's AIR."""
    size: int = 0
    loras: tuple[str, ...] = ()
    batch: str = ""
    """:func:`batch_hint` of the job ("" when it runs alone)."""

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "size": self.size, "loras": list(self.loras), "batch": self.batch}

    @classmethod
    def from_dict(cls, data: object) -> "Hint | None":
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return None
        batch = data.get("batch")
        return cls(model=data["model"], size=int(data.get("size") or 0), loras=tuple(data.get("loras") or ()),
                   batch=batch if isinstance(batch, str) else "")


def batch_hint(model: str, mode_alone: bool, width: int, height: int, steps: int, scheduler: str, cfg_scale: float,
               clip_skip: int | None, loras: tuple[tuple[str, float], ...]) -> str:
    """A short, stable name for what must match for two jobs to share a device pass ("" when ``mode_alone``: the
    job never batches).  Mirrors the engine's ``batch_key`` closely enough to route by; never decides a batch."""
    if mode_alone:
        return ""
    text = repr((model, width, height, steps, scheduler, float(cfg_scale), clip_skip, loras))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class ReplicaState:
    """One replica as it last reported (``record_routing_stats``), plus its id."""

    id: str
    device: frozenset[str] = frozenset()
    host: frozenset[str] = frozenset()
    loading: frozenset[str] = frozenset()
    loras: frozenset[str] = frozenset()
    free_device: int = 0
    free_host: int = 0
    queue: int = 0
    waiting: frozenset[str] = frozenset()
    """Batch hints of jobs accepted there and not yet started."""

    @classmethod
    def from_stats(cls, replica_id: str, stats: dict[str, object] | None) -> "ReplicaState":
        s = stats or {}

        def keys(name: str) -> frozenset[str]:
            value = s.get(name)
            return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, (list, tuple, set, frozenset)) else frozenset()

        def number(name: str) -> int:
            value = s.get(name)
            return int(value) if isinstance(value, (int, float)) else 0

        return cls(id=replica_id, device=keys("device"), host=keys("host"), loading=keys("loading"), loras=keys("loras"),
                   free_device=number("free_device"), free_host=number("free_host"), queue=number("queue"),
                   waiting=keys("waiting"))


def affinity(key: str, replica_id: str) -> int:
    """Rendezvous weight of ``key`` on a replica: the same on every front end."""
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest(), "big")


@dataclass
class Recent:
    """Models this router sent to replicas lately: (model key, replica id) → when."""

    sent: dict[tuple[str, str], float] = field(default_factory=dict)

    def note(self, model: str, replica_id: str, now: float) -> None:
        self.sent[(model, replica_id)] = now
        if len(self.sent) > 4096:
            self.forget(now)

    def has(self, model: str, replica_id: str, now: float) -> bool:
        when = self.sent.get((model, replica_id))
        return when is not None and now - when < RECENT_S

    def forget(self, now: float) -> None:
        for key in [k for k, when in self.sent.items() if now - when >= RECENT_S]:
            del self.sent[key]


def tier(state: ReplicaState, hint: Hint, recent: Recent | None = None, now: float = 0.0) -> int:
    """The rank (0 best … 4) of ``state`` for ``hint`` (see the module docstring)."""
    if hint.model in state.device:
        return 0
    if hint.model in state.host:
        return 1
    if hint.model in state.loading or (recent is not None and recent.has(hint.model, state.id, now)):
        return 2
    if state.free_device >= hint.size:
        return 3
    return 4


def rank(states: list[ReplicaState], hint: Hint, recent: Recent | None = None, now: float = 0.0,
         spill_queue: int = SPILL_QUEUE, counters: dict[str, int] | None = None) -> list[str]:
    """Replica ids for ``hint``, best first (every replica appears once); ``counters["spills"]`` counts second replicas
    given to a hot model."""
    tiers = {state.id: tier(state, hint, recent, now) for state in states}

    def order(state: ReplicaState) -> tuple[int, int, int, int, int]:
        t = tiers[state.id]
        if t <= 2:  # holders: the shortest queue first (a copy still loading beats a resident one 15 deep), then the tier
            queue = state.queue - (BATCH_CREDIT if hint.batch and hint.batch in state.waiting else 0)
            return (0, queue, t, -len(state.loras.intersection(hint.loras)), -affinity(hint.model, state.id))
        return (t, 0, 0, 0, -affinity(hint.model, state.id))

    ordered = sorted(states, key=order)
    holders = [s for s in ordered if tiers[s.id] <= 2]
    if holders and min(s.queue for s in holders) >= spill_queue:
        busiest_best = min(s.queue for s in holders)
        others = [s for s in ordered if s not in holders and s.queue * 2 <= busiest_best]
        if others:
            spare = min(others, key=lambda s: (s.queue, order(s)))
            ordered.remove(spare)
            ordered.insert(0, spare)
            if counters is not None:
                counters["spills"] = counters.get("spills", 0) + 1
    return [s.id for s in ordered]
