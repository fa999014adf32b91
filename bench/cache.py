"""The model cache: hit vs miss latency, and process RSS while cycling more models than the budget holds.

Why: the engine asks the library for its model on every request, so a hit
must cost next to nothing next to a generation (microseconds), and a
long-running server that sees many uploaded checkpoints must keep its memory
near the cache budget instead of growing with every model it has ever
loaded (the old per-AIR dict never evicted).

(a) Latency, in this process, on distinct tiny SD-1.x single-file
    checkpoints (``tests/fixtures/checkpoints.perturbed``):
    * miss: ``ModelLibrary.pipeline`` after ``forget`` — a real load
      (safetensors header check + ``from_single_file``), the model's size
      hint and its sizing;
    * hit: ``ModelLibrary.pipeline`` and ``with ModelLibrary.use(...)``
      (pin + unpin) on a resident model, and the cache's own ``get``;
    * host hit: two models alternating with one slot per tier, so every
      call moves one model host → device and the other device → host (on
      CPU the ``.to`` is skipped; the bookkeeping, lock hand-offs and plan
      are the ones a GPU runs);
    * for scale, the old dict lookup (``_loaded.get(air)`` + source check).
(b) RSS, each scenario in a fresh subprocess: imports, one load + forget
    (warm-up), then the baseline is read and the peak (VmHWM) reset; then
    ``--rounds`` passes over ``--models`` distinct checkpoints through a
    library with a device budget of 3 models and a host budget of 2, and the
    same with an unbounded budget (the old behaviour).  Reported: max RSS
    above the baseline vs the budget plus a stated margin of
    2 × one model (a load in flight: the file's state dict and its
    conversion) + 64 MiB (allocator slack and Python objects).

Run: ``.venv/bin/python bench/cache.py [--models 24] [--rounds 3] [--hits 20000] [--json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PYTHON, environment, log, render_table, summarize_ns  # noqa: E402

MIB = 1024 * 1024
MARGIN_FIXED = 64 * MIB
MARGIN_MODELS = 2


# ---- helpers shared by parent and child -------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def make_library(data_dir: Path, device_bytes: int, host_bytes: int, name: str) -> Any:
    from engine.cache import ModelCache
    from engine.models import ModelLibrary
    from engine.registry.db import Database
    from engine.registry.models import ModelRegistry
    from engine.upload.store import ModelStore

    scratch = Path(tempfile.mkdtemp(prefix=f"lib-{name}-", dir=data_dir / "tmp"))
    cache = ModelCache("cpu", device_bytes=device_bytes, host_bytes=host_bytes)
    return ModelLibrary(data_dir, "cpu", ModelRegistry(Database(scratch / "wisp.db")), ModelStore(scratch / "store"), cache=cache)


def entries_for(files: list[Path]) -> list[Any]:
    from engine.models import ModelDefaults, ModelEntry

    return [
        ModelEntry(air=f"bench:m{i}@1", name=f"m{i}", category="checkpoint", architecture="sd1x",
                   defaults=ModelDefaults(), builtin=False, file=path)
        for i, path in enumerate(files)
    ]


# ---- (b) RSS, in a child process ---------------------------------------------------------------


def rss_child(data_dir: Path, files: list[Path], mode: str, rounds: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    quiet_libraries()
    from engine.cache import model_bytes

    after_imports = proc_status()["VmRSS"]
    entries = entries_for(files)
    warm = make_library(data_dir, 1 << 40, 1 << 40, "warm")
    size = model_bytes(warm.pipeline(entries[0]))
    warm.forget(entries[0].air)
    del warm
    gc.collect()
    baseline = proc_status()["VmRSS"]
    peak_reset = reset_peak()

    if mode == "bounded":
        device_bytes, host_bytes = int(3.1 * size), int(2.1 * size)  # room for 3 + 2 models
    else:
        device_bytes, host_bytes = 1 << 40, 1 << 40
    library = make_library(data_dir, device_bytes, host_bytes, mode)
    samples = []
    started = time.perf_counter()
    for _ in range(rounds):
        for entry in entries:
            library.pipeline(entry)
            samples.append(proc_status()["VmRSS"])
    elapsed = time.perf_counter() - started
    end = proc_status()
    stats = library.cache.stats().as_dict()
    return {
        "mode": mode,
        "model_bytes": size,
        "device_budget": device_bytes,
        "host_budget": host_bytes,
        "resident_bytes_end": stats["device_bytes"] + stats["host_bytes"],
        "rss_after_imports": after_imports,
        "rss_baseline": baseline,
        "rss_max_sampled": max(samples),
        "rss_peak_hwm": end["VmHWM"] if peak_reset else None,
        "rss_end": end["VmRSS"],
        "rss_anon_end": end.get("RssAnon"),
        "rss_file_end": end.get("RssFile"),
        "requests": len(samples),
        "seconds": elapsed,
        "stats": stats,
    }


def run_child(data_dir: Path, files: list[Path], mode: str, rounds: int) -> dict[str, Any]:
    argv = [PYTHON, __file__, "--child", mode, "--data-dir", str(data_dir), "--rounds", str(rounds), "--files", *map(str, files)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child {mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- (a) latency, in this process ----------------------------------------------------------------


def time_calls(fn: Any, n: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return samples


def latency(data_dir: Path, files: list[Path], hits: int, misses: int) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    quiet_libraries()
    from engine.cache import model_bytes

    entries = entries_for(files)
    library = make_library(data_dir, 1 << 40, 1 << 40, "latency")
    entry = entries[0]
    library.pipeline(entry)  # first load: lazy imports and config folders out of the way

    miss_ns = []
    for i in range(misses):
        library.forget(entry.air)
        gc.collect()
        t0 = time.perf_counter_ns()
        library.pipeline(entry)
        miss_ns.append(time.perf_counter_ns() - t0)
    log(f"miss: {len(miss_ns)} loads")

    def use_once() -> None:
        with library.use(entry):
            pass

    key = library.cache_key(entry)
    loader = library._loader(entry)
    results = {
        "miss (load)": summarize_ns(miss_ns, unit=1e3),
        "hit: library.pipeline": summarize_ns(time_calls(lambda: library.pipeline(entry), hits), unit=1e3),
        "hit: with library.use": summarize_ns(time_calls(use_once, hits), unit=1e3),
        "hit: cache.get": summarize_ns(time_calls(lambda: library.cache.get(key, loader), hits), unit=1e3),
    }

    # host hits: one slot per tier, two models alternating → every call promotes one and demotes the other
    size = model_bytes(library.pipeline(entry))
    swap = make_library(data_dir, int(1.5 * size), int(1.5 * size), "swap")
    a, b = entries[0], entries[1]
    swap.pipeline(a)
    swap.pipeline(b)
    flip = [a, b]
    state = {"i": 0}

    def alternate() -> None:
        state["i"] ^= 1
        swap.pipeline(flip[state["i"]])

    host_ns = time_calls(alternate, max(1000, hits // 10))
    s = swap.cache.stats()
    assert s.misses == 2 and s.host_hits >= len(host_ns) - 1, s
    results["host hit → device (+1 demotion), CPU"] = summarize_ns(host_ns, unit=1e3)

    # for scale: what the old per-AIR dict did on a hit
    loaded = {entry.air: library.pipeline(entry)}
    loaded[entry.air].source_file = entry.file

    def old_dict() -> Any:
        model = loaded.get(entry.air)
        if model is not None and not entry.builtin and getattr(model, "source_file", None) != entry.file:
            model = None
        return model

    results["old dict lookup (before)"] = summarize_ns(time_calls(old_dict, hits), unit=1e3)
    return results


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=24, help="distinct tiny checkpoints cycled in the RSS runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hits", type=int, default=20000)
    parser.add_argument("--misses", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["bounded", "unbounded"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(rss_child(args.data_dir, args.files, args.child, args.rounds)))
        return

    with tempfile.TemporaryDirectory(prefix="wisp-bench-cache-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "tmp").mkdir()
        log("building the tiny model and its checkpoints")
        from engine.builtin.tiny_sd15 import ensure_tiny_sd15
        from tests.fixtures.checkpoints import perturbed

        builtin = ensure_tiny_sd15(data_dir)
        files = [perturbed(builtin, data_dir / "ckpt" / f"tiny-{i}.safetensors", seed=i + 1) for i in range(args.models)]

        log("RSS: bounded budget (3 + 2 models)")
        bounded = run_child(data_dir, files, "bounded", args.rounds)
        log("RSS: unbounded (the old dict)")
        unbounded = run_child(data_dir, files, "unbounded", args.rounds)
        log("latency")
        lat = latency(data_dir, files, args.hits, args.misses)

    size = bounded["model_bytes"]
    budget = bounded["device_budget"] + bounded["host_budget"]
    margin = MARGIN_MODELS * size + MARGIN_FIXED
    over = {}
    for run in (bounded, unbounded):
        peak = run["rss_peak_hwm"] or run["rss_max_sampled"]
        over[run["mode"]] = peak - run["rss_baseline"]
    within = over["bounded"] <= budget + margin
    miss_p50 = lat["miss (load)"]["p50"]
    hit_p50 = lat["hit: library.pipeline"]["p50"]
    result = {
        "latency_us": lat,
        "miss_over_hit_p50": miss_p50 / hit_p50,
        "rss": {"bounded": bounded, "unbounded": unbounded},
        "budget_bytes": budget,
        "margin_bytes": margin,
        "bounded_peak_over_baseline": over["bounded"],
        "within_budget_plus_margin": within,
        "environment": environment(),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return

    rows = [[name, f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['mean']:.2f}", f"{miss_p50 / s['p50']:.0f}×"] for name, s in lat.items()]
    print(render_table(["ModelLibrary call (tiny SD-1.x, CPU)", "p50 µs", "p99 µs", "mean µs", "miss p50 / this p50"], rows))
    print(f"miss/hit (p50, library.pipeline): {miss_p50 / hit_p50:,.0f}×  (miss {miss_p50 / 1e3:.1f} ms, hit {hit_p50:.2f} µs)")
    print()
    rows = []
    for run in (bounded, unbounded):
        s = run["stats"]
        rows.append([
            run["mode"],
            f"{run['requests']} ({s['misses']} loads, {s['evictions_dropped']} drops, {s['gc_runs']} gc)",
            f"{(run['device_budget'] + run['host_budget']) / MIB:.1f}" if run["mode"] == "bounded" else "∞",
            f"{run['resident_bytes_end'] / MIB:.1f}",
            f"{run['rss_after_imports'] / MIB:.0f}",
            f"{run['rss_baseline'] / MIB:.0f}",
            f"{run['rss_max_sampled'] / MIB:.0f}",
            f"{(run['rss_peak_hwm'] or 0) / MIB:.0f}",
            f"{over[run['mode']] / MIB:.1f}",
            f"{run['rss_end'] / MIB:.0f}",
        ])
    print(render_table(
        ["cache", "requests", "budget MiB", "resident MiB (end)", "RSS after imports MiB", "RSS baseline MiB",
         "max RSS sampled MiB", "peak RSS (VmHWM) MiB", "peak − baseline MiB", "RSS end MiB"],
        rows,
    ))
    print(f"{args.models} distinct tiny checkpoints × {args.rounds} rounds; one model = {size / MIB:.2f} MiB of float32 weights.")
    print(f"bounded: peak − baseline = {over['bounded'] / MIB:.1f} MiB vs budget {budget / MIB:.1f} MiB + margin "
          f"{margin / MIB:.1f} MiB (2 × model + 64 MiB) → {'WITHIN' if within else 'OVER'}; "
          f"unbounded grew {over['unbounded'] / MIB:.1f} MiB.")


if __name__ == "__main__":
    main()
