"""The fleet's ranking of replicas (engine.fleet.routing): pure, no Ray."""

from __future__ import annotations

from engine.fleet.routing import BATCH_CREDIT, SPILL_QUEUE, Hint, Recent, ReplicaState, affinity, batch_hint, rank, tier

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


def test_a_job_goes_where_a_compatible_one_waits_to_share_its_pass():
    key = batch_hint("m", False, 64, 64, 20, "Default", 7.0, None, ())
    hint = Hint(model="m", batch=key)
    states = [state("idle", device=["m"], queue=1), state("waiting", device=["m"], queue=3, waiting=[key])]
    assert rank(states, hint) == ["waiting", "idle"]  # three queued, one of them this job's batch-mate: it rides along
    other = Hint(model="m", batch=batch_hint("m", False, 64, 64, 30, "Default", 7.0, None, ()))  # other steps
    assert rank(states, other) == ["idle", "waiting"]
    far = [state("idle", device=["m"], queue=0), state("waiting", device=["m"], queue=1 + BATCH_CREDIT, waiting=[key])]
    assert rank(far, hint) == ["idle", "waiting"]  # the credit is bounded: a long queue still loses
    assert batch_hint("m", True, 64, 64, 20, "Default", 7.0, None, ()) == ""  # a job that never batches has no hint
    assert rank(states, Hint(model="m")) == ["idle", "waiting"]
    assert batch_hint("m", False, 64, 64, 20, "Default", 7, None, ()) == key  # 7 and 7.0 are one CFG
    assert Hint.from_dict(hint.as_dict()) == hint and ReplicaState.from_stats("r", {"waiting": [key, 3]}).waiting == {key}


def test_the_front_end_names_batchable_jobs_only():
    import msgspec

    from engine.fleet.frontend import routing_hint
    from engine.jobs import InferenceJob, LoraRef, ModelRef

    base = InferenceJob(task_uuid="t", team="a", owner="o", model=ModelRef(air="x:y@1", architecture="sd1x", builtin=False, sha256="s" * 64), prompt="p",
                        negative_prompt=None, width=64, height=64, steps=4, cfg_scale=7.0, scheduler="Default", seeds=(1,))  # fmt: skip
    hint = routing_hint(base)
    assert hint.model == "s" * 64 and hint.batch
    assert routing_hint(msgspec.structs.replace(base, prompt="another prompt", seeds=(9,))).batch == hint.batch  # prompt, seed: free
    assert routing_hint(msgspec.structs.replace(base, steps=5)).batch != hint.batch
    lora = (LoraRef(air="l:l@1", sha256="l" * 64, weight=1.0),)
    assert routing_hint(msgspec.structs.replace(base, loras=lora)).batch not in ("", hint.batch)
    for alone in ({"seeds": (1, 2)}, {"seed_image": "uuid"}, {"hires": (128, 128, 0.5, 4)}, {"prompt_weighting": "compel"}):
        assert routing_hint(msgspec.structs.replace(base, **alone)).batch == ""


def test_a_replica_slow_to_give_its_queue_length_keeps_its_rank_for_half_a_second():
    """Serve skips to the next rank when a replica's queue length comes later than the router's deadline: with
    Serve's 0.1 s a warm replica on a busy machine lost requests to one that had to load the model."""
    from ray.serve._private.request_router.request_router import RequestRouter

    from engine.fleet.router import WispRouter

    assert RequestRouter.queue_len_response_deadline_s == 0.1  # Serve's own, which the router raises
    assert WispRouter.queue_len_response_deadline_s == 0.5 <= WispRouter.max_queue_len_response_deadline_s
