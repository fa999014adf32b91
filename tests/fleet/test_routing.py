"""The fleet's ranking of replicas (engine.fleet.routing): pure, no Ray."""

from __future__ import annotations

from engine.fleet.routing import SPILL_QUEUE, Hint, Recent, ReplicaState, affinity, rank, tier

MB = 1_000_000


def state(rid: str, **fields) -> ReplicaState:
    base = dict(free_device=100 * MB)
    base.update(fields)
    return ReplicaState.from_stats(rid, base)


def test_resident_on_device_beats_host_beats_loading_beats_free_budget():
    hint = Hint(model="m", size=10 * MB)
    states = [state("free"), state("loading", loading=["m"]), state("host", host=["m"]), state("device", device=["m"]),
              state("full", free_device=0)]
    assert rank(states, hint) == ["device", "host", "loading", "free", "full"]
    assert [tier(s, hint) for s in states] == [3, 2, 1, 0, 4]


def test_cold_models_follow_rendezvous_order_the_same_on_every_front_end():
    states = [state(f"r{i}") for i in range(6)]
    for model in ("a", "b", "c", "d"):
        hint = Hint(model=model, size=MB)
        first = rank(states, hint)
        assert first == rank(list(reversed(states)), hint)  # independent of the order replicas are listed in
        assert first[0] == max(states, key=lambda s: affinity(model, s.id)).id
    assert len({rank(states, Hint(model=m))[0] for m in "abcdefghijkl"}) > 1  # models spread over replicas


def test_a_burst_follows_the_first_choice_before_stats_catch_up():
    recent = Recent()
    states = [state("r0"), state("r1"), state("r2")]
    hint = Hint(model="cold", size=MB)
    first = rank(states, hint, recent, now=1.0)[0]
    recent.note("cold", first, 1.0)
    busy = [state(s.id, queue=3 if s.id == first else 0) for s in states]  # the chosen one looks busier
    assert rank(busy, hint, recent, now=2.0)[0] == first  # still where the load is happening
    assert rank(busy, hint, recent, now=100.0)[0] == first  # affinity alone keeps it there once remembered is gone


def test_a_hot_model_with_a_long_queue_gets_a_second_replica():
    hint = Hint(model="hot", size=MB)
    states = [state("a", device=["hot"], queue=SPILL_QUEUE), state("b", queue=0), state("c", queue=SPILL_QUEUE)]
    counters: dict[str, int] = {}
    assert rank(states, hint, counters=counters)[0] == "b" and counters == {"spills": 1}
    calm = [state("a", device=["hot"], queue=SPILL_QUEUE - 1), state("b", queue=0)]
    assert rank(calm, hint)[0] == "a"  # merely warm: it stays where it is
    both_busy = [state("a", device=["hot"], queue=8), state("b", queue=6)]
    assert rank(both_busy, hint)[0] == "a"  # no replica is much less busy: no spill


def test_shorter_queue_then_more_of_the_loras_inside_a_rank():
    hint = Hint(model="m", loras=("l1", "l2"))
    states = [state("x", device=["m"], queue=2), state("y", device=["m"], queue=1), state("z", device=["m"], queue=1, loras=["l1"])]
    assert rank(states, hint) == ["z", "y", "x"]


def test_garbage_stats_and_hints_are_harmless():
    assert ReplicaState.from_stats("r", None) == ReplicaState(id="r")
    weird = ReplicaState.from_stats("r", {"device": "not-a-list", "queue": "many", "loras": [1, "l"]})
    assert weird.device == frozenset() and weird.queue == 0 and weird.loras == frozenset({"l"})
    assert Hint.from_dict(None) is None and Hint.from_dict({"model": 3}) is None
    assert Hint.from_dict(Hint(model="m", size=5, loras=("a",)).as_dict()) == Hint(model="m", size=5, loras=("a",))


def test_among_holders_the_shorter_queue_wins_even_over_a_better_tier():
    """A second copy still loading, one job deep, takes the next job before a resident copy fifteen deep."""
    hint = Hint(model="m")
    states = [state("resident", device=["m"], queue=15), state("loading", loading=["m"], queue=1), state("cold", queue=0)]
    assert rank(states, hint) == ["loading", "resident", "cold"]
