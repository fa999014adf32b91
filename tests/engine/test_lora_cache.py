"""The host-RAM LoRA adapter cache: no re-reads, byte budget, LRU, exact switching, isolation.

Every image comparison is on exact PNG bytes, against a model that only
ever saw that one set (or none).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.lora import LoraLoadError, LoraUse
from engine.lora_adapters import LoraAdapters
from engine.lora_cache import LoraCache
from engine.pipelines.stable_diffusion import GenerationSpec, StableDiffusionModel
from tests.fixtures.loras import write_lora
from tests.fixtures.generation import png, spec as generation_spec


def spec(*loras: LoraUse) -> GenerationSpec:
    return generation_spec(loras=tuple(loras))


@pytest.fixture(scope="module")
def builtin(engine_data_dir: Path) -> Path:
    return ensure_tiny_sd15(engine_data_dir)


@pytest.fixture(scope="module")
def files(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora-cache")
    return {
        "A": write_lora(builtin, d / "a.safetensors", fmt="kohya", seed=11, alpha=2),
        "B": write_lora(builtin, d / "b.safetensors", fmt="diffusers", seed=12),
        "C": write_lora(builtin, d / "c.safetensors", fmt="kohya", seed=13, unet=False),
        "D": write_lora(builtin, d / "d.safetensors", fmt="diffusers", seed=14, text_encoder=False),
    }


def use(path: Path, weight: float = 1.0) -> LoraUse:
    return LoraUse(key=f"lc-{path.name}", path=path, weight=weight)


def fresh(builtin: Path, cache: LoraCache | None = None, max_resident: int = 16) -> StableDiffusionModel:
    model = StableDiffusionModel.load(builtin)
    if cache is not None or max_resident != 16:
        model.loras = LoraAdapters(model.base, model.loras._loading_context, cache=cache if cache is not None else LoraCache(), max_resident=max_resident)
    return model


@pytest.fixture(scope="module")
def alone(builtin: Path, files: dict[str, Path]) -> dict[str, bytes]:
    """Each set rendered by a model that never saw another one."""
    sets = {"none": (), "A": (use(files["A"]),), "B": (use(files["B"], 0.8),), "A+C": (use(files["A"], 0.5), use(files["C"]))}
    out = {}
    for name, loras in sets.items():
        out[name] = png(fresh(builtin, LoraCache()).run(spec(*loras)))
    assert len(set(out.values())) == len(out)
    return out


def test_cached_adapter_is_not_read_again(builtin, files, alone, tmp_path):
    """After the first use the file may vanish: the adapter comes from RAM, even after leaving the model."""
    moved = tmp_path / "a-copy.safetensors"
    moved.write_bytes(files["A"].read_bytes())
    a = LoraUse(key="lc-moved", path=moved, weight=1.0)
    cache = LoraCache(64 * 1024**2)
    model = fresh(builtin, cache, max_resident=1)
    assert png(model.run(spec(a))) == alone["A"]
    assert cache.stats().misses == 1
    moved.unlink()
    # B pushes A off the model (max_resident=1); A comes back from the cache, not the file
    model.run(spec(use(files["B"], 0.8)))
    assert "lc-moved" not in model.loras.loaded
    assert png(model.run(spec(a))) == alone["A"]
    stats = cache.stats()
    assert stats.misses == 2 and stats.hits >= 1  # the second miss is B's file
    assert model.loras.injections == 3


def test_without_the_cache_entry_a_missing_file_fails_clearly(builtin, tmp_path):
    cache = LoraCache(64 * 1024**2)
    gone = LoraUse(key="lc-gone", path=tmp_path / "gone.safetensors", weight=1.0)
    with pytest.raises(LoraLoadError, match="missing") as info:
        fresh(builtin, cache).run(spec(gone))
    assert info.value.parameter == "lora[0].model"
    assert "lc-gone" not in cache and cache.stats().bytes == 0


def test_budget_is_respected_and_evicts_least_recently_used(files):
    probe = LoraCache(1024**3)
    sizes = {name: probe.get(name, path).nbytes for name, path in files.items()}
    budget = sizes["A"] + sizes["B"] + sizes["C"] // 2  # A and B fit, not A, B and C
    cache = LoraCache(budget)
    cache.get("A", files["A"])
    cache.get("B", files["B"])
    assert cache.keys() == ["A", "B"]
    cache.get("A", files["A"])  # A is now the most recently used
    cache.get("C", files["C"])  # evicts B, not A
    assert cache.keys() == ["A", "C"]
    stats = cache.stats()
    assert stats.bytes == sizes["A"] + sizes["C"] <= budget
    assert (stats.hits, stats.misses, stats.evictions) == (1, 3, 1)
    cache.set_budget(sizes["C"])  # shrinking evicts at once
    assert cache.keys() == ["C"] and cache.stats().bytes <= sizes["C"]


def test_an_adapter_larger_than_the_budget_is_used_but_not_kept(builtin, files, alone):
    cache = LoraCache(1024)
    model = fresh(builtin, cache)
    assert png(model.run(spec(use(files["A"])))) == alone["A"]
    stats = cache.stats()
    assert stats.oversize == 1 and stats.entries == 0 and stats.bytes == 0


def test_switching_through_the_cache_is_exact(builtin, files, alone):
    """A → B → none → A → A+C, with one resident slot: every switch re-injects from RAM, every image is exact."""
    cache = LoraCache(64 * 1024**2)
    model = fresh(builtin, cache, max_resident=1)
    sets = {"A": (use(files["A"]),), "B": (use(files["B"], 0.8),), "none": (), "A+C": (use(files["A"], 0.5), use(files["C"]))}
    for name in ["A", "B", "none", "A", "A+C", "none", "B", "A"]:
        assert png(model.run(spec(*sets[name]))) == alone[name], name
        assert len(model.loras.loaded) <= max(1, len(sets[name]))
    assert cache.stats().misses == 3  # one read per file, whatever the switching


def test_interleaved_models_sharing_one_cache_stay_isolated(builtin, files, alone):
    """Two models (as two cached base models would) share the RAM cache; each sees only its own request's set."""
    cache = LoraCache(64 * 1024**2)
    one, two = fresh(builtin, cache, max_resident=2), fresh(builtin, cache, max_resident=2)
    sets = {"A": (use(files["A"]),), "B": (use(files["B"], 0.8),), "none": (), "A+C": (use(files["A"], 0.5), use(files["C"]))}
    order = [("A", "B"), ("none", "A+C"), ("B", "A"), ("A+C", "none"), ("A", "A+C")]
    for first, second in order:
        assert png(one.run(spec(*sets[first]))) == alone[first]
        assert png(two.run(spec(*sets[second]))) == alone[second]
    assert cache.stats().misses == 3


def test_resident_adapters_are_bounded(builtin, files):
    cache = LoraCache(64 * 1024**2)
    model = fresh(builtin, cache, max_resident=2)
    for name in ["A", "B", "C", "D"]:
        model.run(spec(use(files[name])))
        assert len(model.loras.loaded) <= 2
    assert model.loras.loaded == {"lc-c.safetensors", "lc-d.safetensors"}
    assert model.loras.unloads == 2
    adapters = model.base.get_list_adapters()
    assert all(len(names) <= 2 for names in adapters.values())


def test_forget_drops_the_cached_copy(builtin, files):
    cache = LoraCache(64 * 1024**2)
    model = fresh(builtin, cache)
    model.run(spec(use(files["A"])))
    assert "lc-a.safetensors" in cache
    assert model.loras.forget("lc-a.safetensors")
    assert "lc-a.safetensors" not in cache


def test_engine_reports_the_adapter_cache(engine_data_dir: Path, monkeypatch):
    from engine.core import Engine, EngineConfig
    from server.config import ServerConfig

    monkeypatch.setenv("WISP_LORA_CACHE_BYTES", str(5 * 1024**2))
    assert ServerConfig.from_env().lora_cache_bytes == 5 * 1024**2
    engine = Engine(EngineConfig(data_dir=engine_data_dir, torch_threads=1, lora_cache_bytes=5 * 1024**2))
    try:
        stats = engine.cache_stats()["loraCache"]
        assert stats["budget"] == 5 * 1024**2 and engine.lora_cache.budget == 5 * 1024**2
        assert set(stats) >= {"hits", "misses", "evictions", "bytes", "entries"}
        # The cache is the engine's, handed down: every model the engine loads reads its LoRAs through it.
        with engine.library.use(engine.library.resolve("wisp:tiny-sd15@1", "team")) as model:
            assert model.loras.cache is engine.lora_cache
    finally:
        engine.stop()
