"""The model cache: byte budgets per tier, LRU eviction, pinning, single-flight loads, invalidation.

Two kinds of models: small torch modules of an exact byte size (pure
accounting tests, with a recording "mover" on a pretend accelerator so the
device ⇄ host moves can be checked), and several distinct tiny SD-1.x
checkpoints loaded through the real :class:`ModelLibrary` loaders.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest
import torch

from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR, ensure_tiny_sd15
from engine.cache import DEVICE, HOST, ModelCache, break_self_references, default_budgets, model_bytes, total_ram_bytes
from engine.models import ModelDefaults, ModelEntry, ModelLibrary
from engine.registry.db import Database
from engine.registry.models import ModelRegistry
from engine.upload.store import ModelStore
from tests.fixtures.checkpoints import perturbed


# ---- helpers -------------------------------------------------------------------


class Blob(torch.nn.Module):
    """A module of exactly ``nbytes`` bytes (one uint8 buffer)."""

    def __init__(self, nbytes: int, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.register_buffer("data", torch.zeros(nbytes, dtype=torch.uint8))


class Loads:
    """Loaders that count their calls per key."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: str, nbytes: int, delay: float = 0.0) -> Callable[[], Blob]:
        def load() -> Blob:
            with self.lock:
                self.calls[key] = self.calls.get(key, 0) + 1
            if delay:
                time.sleep(delay)
            return Blob(nbytes, key)

        return load


class Mover:
    """Records moves instead of making them (a pretend accelerator)."""

    def __init__(self) -> None:
        self.moves: list[tuple[str, str]] = []

    def __call__(self, model: Blob, device: str) -> Blob:
        self.moves.append((model.name, device))
        return model


def gpu_like(device_bytes: int, host_bytes: int) -> tuple[ModelCache, Mover]:
    mover = Mover()
    return ModelCache("fakegpu", device_bytes=device_bytes, host_bytes=host_bytes, mover=mover), mover


def check_budgets(cache: ModelCache, sizes: dict[str, int]) -> None:
    """Bytes per tier match the entries and stay within budget (bar one oversize model alone in its tier)."""
    s = cache.stats()
    for tier, used, budget in ((DEVICE, s.device_bytes, s.device_budget), (HOST, s.host_bytes, s.host_budget)):
        keys = cache.keys(tier)
        assert used == sum(sizes[k] for k in keys), tier
        if used > budget:
            assert len(keys) == 1 and sizes[keys[0]] > budget, (tier, keys, used, budget)


# ---- sizes and budgets ---------------------------------------------------------------


def test_model_bytes_counts_parameters_and_buffers_once():
    lin = torch.nn.Linear(10, 4)  # 40 + 4 float32
    assert model_bytes(lin) == 44 * 4
    assert model_bytes(Blob(1000)) == 1000
    shared = torch.nn.Sequential(lin, torch.nn.Sequential(lin))  # the same weights twice
    assert model_bytes(shared) == 44 * 4

    class Pipe:  # a diffusers-like pipeline: modules among other components
        def __init__(self) -> None:
            self.components = {"unet": Blob(300), "text": lin, "tokenizer": object(), "vae": None, "again": lin}

    class Wrapper:  # a wisp model: the pipeline in .base
        base = Pipe()

    assert model_bytes(Pipe()) == 300 + 44 * 4
    assert model_bytes(Wrapper()) == 300 + 44 * 4
    assert model_bytes(torch.zeros(8, dtype=torch.float64)) == 64


def test_break_self_references_lets_refcounting_free_a_model():
    blob = Blob(100)
    blob.alias = None
    vars(blob)["alias"] = blob  # like the clip-skip alias: a module that refers to itself
    ref = weakref.ref(blob)
    gc.disable()
    try:
        break_self_references(blob)
        assert blob.alias.data.nbytes == 100  # still usable through the proxy
        del blob
        assert ref() is None
    finally:
        gc.enable()


def test_dropping_collects_only_when_needed():
    cache, _ = gpu_like(100, 1)
    cache.get("a", Loads()("a", 100))
    held = cache.get("b", Loads()("b", 100))  # a dropped: nobody holds it
    assert cache.stats().gc_runs == 0
    cache.get("c", Loads()("c", 100))  # b dropped while the test still holds it
    assert cache.stats().gc_runs == 1 and held.name == "b"


def test_default_budgets_leave_room():
    ram = total_ram_bytes()
    assert ram > 0
    device, host = default_budgets("cpu")
    assert device + host <= ram // 2 + 1 and 0 < host < device
    cache = ModelCache("cpu")
    assert (cache.device_budget, cache.host_budget) == (device, host)
    cache = ModelCache("cpu", device_bytes=123, host_bytes=0)
    assert (cache.device_budget, cache.host_budget) == (123, host)
    with pytest.raises(ValueError):
        ModelCache("cpu", device_bytes=-1)


# ---- LRU, tiers, budgets (pure) ----------------------------------------------------------


def test_lru_order_device_to_host_to_dropped():
    cache, mover = gpu_like(300, 200)
    load = Loads()
    for k in "abc":
        cache.get(k, load(k, 100))
    assert cache.keys(DEVICE) == ["a", "b", "c"] and mover.moves == []
    cache.get("a", load("a", 100))  # a is now the most recent
    cache.get("d", load("d", 100))  # b, the least recently used, goes to the host
    assert cache.keys(DEVICE) == ["c", "a", "d"] and cache.keys(HOST) == ["b"]
    assert mover.moves == [("b", "cpu")]
    cache.get("e", load("e", 100))  # c → host
    cache.get("f", load("f", 100))  # a → host; the host holds 2: b (its LRU) is dropped
    assert cache.keys(DEVICE) == ["d", "e", "f"] and cache.keys(HOST) == ["c", "a"]
    assert "b" not in cache
    assert mover.moves == [("b", "cpu"), ("c", "cpu"), ("a", "cpu")]
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions_to_host, s.evictions_dropped) == (1, 6, 3, 1)
    assert (s.device_bytes, s.host_bytes, s.device_entries, s.host_entries) == (300, 200, 3, 2)
    cache.get("b", load("b", 100))  # dropped: loaded again
    assert load.calls["b"] == 2


def test_host_hit_moves_back_to_device_and_counts_as_a_hit():
    cache, mover = gpu_like(200, 200)
    load = Loads()
    a = cache.get("a", load("a", 100))
    cache.get("b", load("b", 100))
    cache.get("c", load("c", 100))  # a → host
    assert cache.tier_of("a") == HOST
    mover.moves.clear()
    assert cache.get("a", load("a", 100)) is a
    assert load.calls["a"] == 1
    assert cache.tier_of("a") == DEVICE and cache.tier_of("b") == HOST  # b (LRU) made room
    assert mover.moves == [("b", "cpu"), ("a", "fakegpu")]  # room first, then the move onto the device
    s = cache.stats()
    assert (s.hits, s.host_hits, s.misses, s.evictions_to_host) == (1, 1, 3, 2)
    assert (s.device_bytes, s.host_bytes) == (200, 100)


def test_budgets_hold_under_a_stream_of_requests():
    cache, _ = gpu_like(1000, 600)
    load = Loads()
    rng = random.Random(7)
    sizes = {f"m{i}": rng.randint(50, 400) for i in range(12)}
    sizes["huge"] = 1500  # above both budgets: loads alone, dropped straight from the device
    sizes["big"] = 800  # fits the device, not the host
    for _ in range(300):
        key = rng.choice(list(sizes))
        model = cache.get(key, load(key, sizes[key]))
        assert model.name == key and cache.tier_of(key) == DEVICE
        del model
        check_budgets(cache, sizes)
    s = cache.stats()
    assert s.hits + s.misses == 300
    assert s.misses == sum(load.calls.values())
    assert s.host_hits > 0 and s.evictions_to_host > 0 and s.evictions_dropped > 0


def test_a_model_larger_than_the_budget_still_loads_alone():
    cache, mover = gpu_like(300, 200)
    load = Loads()
    cache.get("a", load("a", 100))
    cache.get("b", load("b", 100))
    huge = cache.get("huge", load("huge", 500))
    assert huge.name == "huge"
    assert cache.keys(DEVICE) == ["huge"] and cache.keys(HOST) == ["a", "b"]
    assert cache.stats().device_bytes == 500
    cache.get("c", load("c", 100))  # huge cannot go to the host (500 > 200): dropped
    assert cache.keys(DEVICE) == ["c"] and "huge" not in cache
    assert ("huge", "cpu") not in mover.moves
    assert cache.stats().evictions_dropped == 1


def test_size_hint_makes_room_before_the_load():
    cache, mover = gpu_like(300, 300)
    load = Loads()
    for k in "abc":
        cache.get(k, load(k, 100))
    seen: list[list[str]] = []

    def loader() -> Blob:
        seen.append(cache.keys(DEVICE))  # what is on the device while loading
        return Blob(200, "d")

    cache.get("d", loader, size_hint=lambda: 200)
    assert seen == [["c"]]  # a and b were moved off before the load started
    assert cache.keys(DEVICE) == ["c", "d"] and cache.stats().device_bytes == 300


# ---- pinning ------------------------------------------------------------------------------


def test_pinned_models_are_not_evicted_and_the_budget_comes_back():
    cache, _ = gpu_like(200, 100)
    load = Loads()
    with cache.use("a", load("a", 100)) as a:
        with cache.use("b", load("b", 100)):
            assert cache.stats().pinned == 2
            cache.get("c", load("c", 100))  # everything else pinned: the device tier goes over
            assert cache.keys(DEVICE) == ["a", "b", "c"] and cache.stats().device_bytes == 300
        # b released: the budget is restored by evicting the least recently used unpinned model
        assert cache.tier_of("a") == DEVICE and cache.stats().device_bytes <= 200
        for k in "def":
            cache.get(k, load(k, 100))
        assert cache.tier_of("a") == DEVICE
        assert cache.get("a", load("a", 100)) is a
    assert cache.stats().pinned == 0
    assert load.calls["a"] == 1


def test_pin_holds_while_other_threads_load():
    cache, _ = gpu_like(300, 100)
    load = Loads()
    sizes = {k: 100 for k in ["pinned"] + [f"o{i}" for i in range(12)]}
    pinned_in = threading.Event()
    others_done = threading.Event()
    observed: list[Any] = []
    failures: list[BaseException] = []

    def runner() -> None:
        with cache.use("pinned", load("pinned", 100)) as model:
            pinned_in.set()
            others_done.wait(10)
            observed.append((model, cache.tier_of("pinned"), cache.get("pinned", load("pinned", 100))))

    def other(i: int) -> None:
        pinned_in.wait(10)
        try:
            for j in range(3):
                key = f"o{(i * 3 + j) % 12}"
                cache.get(key, load(key, 100, delay=0.002))
                assert cache.tier_of("pinned") == DEVICE
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=other, args=(i,)) for i in range(4)]
    pin = threading.Thread(target=runner)
    pin.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    others_done.set()
    pin.join(10)
    assert failures == []
    model, tier, again = observed[0]
    assert tier == DEVICE and again is model
    assert load.calls["pinned"] == 1
    check_budgets(cache, sizes)


def test_concurrent_random_traffic_keeps_the_books_straight():
    """6 threads × 60 random get/use/forget on 10 keys with slow moves and loads: no deadlock, exact accounting."""

    class SlowMover(Mover):
        def __call__(self, model: Blob, device: str) -> Blob:
            time.sleep(0.0005)
            return super().__call__(model, device)

    cache = ModelCache("fakegpu", device_bytes=500, host_bytes=300, mover=SlowMover())
    load = Loads()
    sizes = {f"k{i}": 60 + 25 * i for i in range(10)}
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                key = rng.choice(list(sizes))
                op = rng.random()
                if op < 0.5:
                    assert cache.get(key, load(key, sizes[key], delay=0.001)).name == key
                elif op < 0.9:
                    with cache.use(key, load(key, sizes[key], delay=0.001)) as model:
                        for _ in range(2):
                            # pinned: on the device, unless another thread forgot the key meanwhile
                            entry = cache._entries.get(key)
                            assert model.name == key
                            assert entry is None or entry.model is not model or entry.tier == DEVICE
                            time.sleep(0.0005)
                    del model  # a model still referenced when dropped costs a full gc.collect()
                else:
                    cache.forget(key)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert failures == []
    s = cache.stats()
    assert (s.pinned, s.loading) == (0, 0)
    assert s.misses == sum(load.calls.values())
    check_budgets(cache, sizes)


# ---- single flight and failures --------------------------------------------------------------


def run_threads(n: int, fn: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def body() -> None:
        barrier.wait()
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - collected for the test
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results, errors


def test_single_flight_loads_once_for_eight_threads():
    cache, _ = gpu_like(1000, 1000)
    load = Loads()
    results, errors = run_threads(8, lambda: cache.get("cold", load("cold", 100, delay=0.2)))
    assert errors == []
    assert load.calls == {"cold": 1}
    assert len(results) == 8 and all(r is results[0] for r in results)
    s = cache.stats()
    assert (s.misses, s.coalesced, s.hits, s.loading) == (1, 7, 0, 0)
    assert s.load_seconds_last >= 0.2 and s.load_seconds_total == s.load_seconds_last


class Boom(RuntimeError):
    pass


def test_a_failed_load_raises_everywhere_and_leaves_nothing():
    cache, _ = gpu_like(1000, 1000)
    calls = []

    def bad() -> Blob:
        calls.append(1)
        time.sleep(0.2)
        raise Boom("the file is broken")

    results, errors = run_threads(8, lambda: cache.get("k", bad, size_hint=300))
    assert results == [] and len(errors) == 8 and all(isinstance(e, Boom) for e in errors)
    assert len(calls) == 1
    assert "k" not in cache
    s = cache.stats()
    assert (s.load_failures, s.misses, s.device_bytes, s.device_entries, s.loading) == (1, 1, 0, 0, 0)
    with pytest.raises(Boom):  # use() too
        with cache.use("k", bad):
            pass
    model = cache.get("k", Loads()("k", 100))  # a later request tries again
    assert model.name == "k" and cache.stats().device_bytes == 100


# ---- invalidation ------------------------------------------------------------------------------


def test_forget():
    cache, _ = gpu_like(1000, 1000)
    load = Loads()
    cache.get("a", load("a", 100))
    assert cache.forget("a") and "a" not in cache
    assert not cache.forget("a")
    assert cache.stats().device_bytes == 0
    cache.get("a", load("a", 100))
    assert load.calls["a"] == 2

    # pinned: usable until released, then gone; a new request loads afresh meanwhile
    with cache.use("p", load("p", 100)) as p:
        assert cache.forget("p") and "p" not in cache
        assert cache.stats().device_bytes == 200  # still resident while it runs
        assert cache.get("p", load("p", 100)) is not p
    assert cache.stats().device_bytes == 200 and cache.stats().forgets == 2

    # a load in flight when forgotten serves its caller but is not kept
    started = threading.Event()

    def slow() -> Blob:
        started.set()
        time.sleep(0.1)
        return Blob(100, "s")

    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(cache.get("s", slow)))
    t.start()
    started.wait(5)
    assert cache.forget("s")
    t.join(5)
    assert got[0].name == "s" and "s" not in cache


def test_counters_add_up():
    cache, _ = gpu_like(200, 100)
    load = Loads()
    cache.get("a", load("a", 100))  # miss
    cache.get("a", load("a", 100))  # hit
    cache.get("b", load("b", 100))  # miss
    cache.get("c", load("c", 100))  # miss; a → host
    cache.get("a", load("a", 100))  # host hit: a back on the device, b → host (a left it: room)
    cache.get("d", load("d", 100))  # miss; c → host, b dropped
    cache.forget("d")
    s = cache.stats()
    assert (s.hits, s.host_hits, s.misses, s.coalesced, s.load_failures) == (2, 1, 4, 0, 0)
    assert (s.evictions_to_host, s.evictions_dropped, s.forgets) == (3, 1, 1)
    assert (s.device_entries, s.host_entries, s.device_bytes, s.host_bytes, s.pinned) == (1, 1, 100, 100, 0)
    assert cache.keys() == ["c", "a"]
    assert s.load_seconds_total >= s.load_seconds_last > 0
    assert set(s.as_dict()) >= {"hits", "misses", "evictions_to_host", "evictions_dropped", "device_bytes", "host_bytes"}


# ---- real tiny SD-1.x checkpoints through the model library -----------------------------------


@pytest.fixture(scope="module")
def tiny_files(engine_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    builtin = ensure_tiny_sd15(engine_data_dir)
    folder = tmp_path_factory.mktemp("cache-ckpts")
    return [perturbed(builtin, folder / f"tiny-{i}.safetensors", seed=i + 1) for i in range(5)]


def entry_for(air: str, path: Path) -> ModelEntry:
    return ModelEntry(air=air, name=air, category="checkpoint", architecture="sd1x", defaults=ModelDefaults(), builtin=False, file=path)


def library(engine_data_dir: Path, tmp_path: Path, device_bytes: int, host_bytes: int) -> ModelLibrary:
    cache = ModelCache("cpu", device_bytes=device_bytes, host_bytes=host_bytes)
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = Database(tmp_path / "wisp.db")
    return ModelLibrary(engine_data_dir, "cpu", ModelRegistry(db), ModelStore(tmp_path / "store"), cache=cache)


def test_real_models_respect_the_budgets(engine_data_dir: Path, tiny_files: list[Path], tmp_path: Path):
    probe = library(engine_data_dir, tmp_path / "probe", 10**12, 10**12)
    size = model_bytes(probe.pipeline(entry_for("t:probe@1", tiny_files[0])))
    assert 4_000_000 < size < 8_000_000  # the tiny model: ~5.6 MB of float32
    lib = library(engine_data_dir, tmp_path, int(2.5 * size), int(1.5 * size))  # 2 on the device, 1 on the host
    entries = [entry_for(f"t:m{i}@1", f) for i, f in enumerate(tiny_files)]
    sizes = {lib.cache_key(e): size for e in entries}
    rng = random.Random(3)
    models: dict[str, weakref.ref] = {}
    order = [0, 1, 2, 0, 3, 4] + [rng.randrange(5) for _ in range(12)]
    for i in order:
        key = lib.cache_key(entries[i])
        resident = key in lib.cache
        model = lib.pipeline(entries[i])
        assert lib.cache.tier_of(key) == DEVICE
        if resident:
            assert model is models[key](), "a resident model was loaded again"
        models[key] = weakref.ref(model)
        del model
        check_budgets(lib.cache, sizes)
        assert len(lib.cache.keys(DEVICE)) <= 2 and len(lib.cache.keys(HOST)) <= 1
    s = lib.cache.stats()
    assert s.hits + s.misses == len(order) and s.evictions_to_host > 0 and s.evictions_dropped > 0
    assert s.device_bytes == 2 * size and s.host_bytes == size
    # dropped models were freed by reference counting alone: no full gc.collect() was needed
    assert s.gc_runs == 0
    assert sum(ref() is not None for ref in models.values()) == 3

    # the distinct checkpoints really are distinct models
    a, b = (lib.pipeline(entries[i]).base.unet for i in (0, 1))
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_real_host_hit_returns_the_same_model(engine_data_dir: Path, tiny_files: list[Path], tmp_path: Path):
    lib = library(engine_data_dir, tmp_path, 7_000_000, 7_000_000)  # one model per tier
    first, second = entry_for("t:a@1", tiny_files[0]), entry_for("t:b@1", tiny_files[1])
    a = lib.pipeline(first)
    lib.pipeline(second)
    assert lib.cache.tier_of(lib.cache_key(first)) == HOST
    assert lib.pipeline(first) is a and a.device == "cpu"
    s = lib.cache.stats()
    assert (s.misses, s.hits, s.host_hits) == (2, 1, 1)
    assert lib.cache.tier_of(lib.cache_key(second)) == HOST


def test_real_pin_under_concurrency_and_single_flight(engine_data_dir: Path, tiny_files: list[Path], tmp_path: Path):
    lib = library(engine_data_dir, tmp_path, 7_000_000, 1)  # one model on the device, none on the host
    entries = [entry_for(f"t:c{i}@1", f) for i, f in enumerate(tiny_files)]

    # 8 threads ask for the same cold model: one load, one object
    results, errors = run_threads(8, lambda: lib.pipeline(entries[0]))
    assert errors == [] and all(r is results[0] for r in results)
    assert (lib.cache.stats().misses, lib.cache.stats().coalesced) == (1, 7)

    # a pinned model stays while two other threads load models that would evict it
    inside, release = threading.Event(), threading.Event()
    seen: list[Any] = []

    def runner() -> None:
        with lib.use(entries[1]) as model:
            inside.set()
            release.wait(20)
            seen.append((model, lib.cache.tier_of(lib.cache_key(entries[1]))))

    def other(indices: list[int]) -> None:
        inside.wait(20)
        for i in indices:
            lib.pipeline(entries[i])

    pin = threading.Thread(target=runner)
    others = [threading.Thread(target=other, args=(ix,)) for ix in ([2, 3], [4, 0])]
    pin.start()
    for t in others:
        t.start()
    for t in others:
        t.join(30)
    assert lib.cache.tier_of(lib.cache_key(entries[1])) == DEVICE
    assert lib.cache.stats().pinned == 1
    release.set()
    pin.join(30)
    assert seen[0][1] == DEVICE
    s = lib.cache.stats()
    assert s.pinned == 0 and s.device_entries == 1  # back within budget once released
    assert s.device_bytes <= 7_000_000


def test_reupload_is_a_new_key_and_frees_the_old_model(engine_data_dir: Path, tiny_files: list[Path], tmp_path: Path):
    lib = library(engine_data_dir, tmp_path, 10**9, 10**9)
    old = lib.pipeline(entry_for("t:same@1", tiny_files[0]))
    old_key = lib.cache_key(entry_for("t:same@1", tiny_files[0]))
    new_entry = entry_for("t:same@1", tiny_files[1])  # the same AIR now names other bytes
    with lib.use(new_entry) as new:
        assert new is not old
        assert old_key not in lib.cache and lib.cache.keys() == [lib.cache_key(new_entry)]
    assert lib.cache.stats().forgets == 1
    assert lib.forget("t:same@1") and len(lib.cache) == 0 and lib.cache.stats().device_bytes == 0


def test_builtin_size_hint_matches_the_loaded_size(engine_data_dir: Path, tmp_path: Path):
    lib = library(engine_data_dir, tmp_path, 10**9, 10**9)
    entry = lib.resolve(BUILTIN_SD15_AIR, "team")
    hint = lib._size_hint(entry)()
    model = lib.pipeline(entry)
    assert hint is not None and abs(hint - model_bytes(model)) <= 0.01 * hint


def test_a_lora_loaded_during_a_run_is_counted(engine_data_dir: Path, tiny_files: list[Path], tmp_path: Path):
    from engine.lora import LoraUse
    from engine.pipelines.stable_diffusion import GenerationSpec
    from tests.fixtures.loras import write_lora

    lib = library(engine_data_dir, tmp_path, 10**9, 10**9)
    entry = entry_for("t:lora@1", tiny_files[0])
    lora = write_lora(ensure_tiny_sd15(engine_data_dir), tmp_path / "l.safetensors", fmt="diffusers", seed=1)
    spec = GenerationSpec(prompt="a fox", negative_prompt=None, width=64, height=64, steps=1, cfg_scale=7.0,
                          scheduler="Default", seeds=(1,), loras=(LoraUse(key="sha-l", path=lora, weight=1.0),))
    with lib.use(entry) as model:
        before = lib.cache.stats().device_bytes
        model.run(spec)
    after = lib.cache.stats().device_bytes
    assert after > before and after == model_bytes(model)


async def test_engine_pins_while_rendering_and_reports_stats(engine):
    from protocol.inference import ImageInference

    task = msgspec.convert(
        {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": BUILTIN_SD15_AIR,
         "positivePrompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 1},
        ImageInference,
    )
    before = engine.cache_stats()
    pinned: list[int] = []
    original = engine.library.use

    def spying_use(entry: ModelEntry):  # records the pin count while the model runs
        cm = original(entry)

        class Spy:
            def __enter__(self) -> Any:
                model = cm.__enter__()
                pinned.append(engine.cache.stats().pinned)
                return model

            def __exit__(self, *exc: Any) -> Any:
                return cm.__exit__(*exc)

        return Spy()

    engine.library.use = spying_use
    try:
        await engine.generate(task, team="t", owner="a")
    finally:
        engine.library.use = original
    after = engine.cache_stats()
    assert pinned == [1] and after["pinned"] == 0
    assert after["hits"] + after["misses"] == before["hits"] + before["misses"] + 1
    assert after["device_entries"] >= 1 and after["device_bytes"] > 0
