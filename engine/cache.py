"""The resident models: a byte-budgeted, two-tier LRU with pinning and single-flight loads.

Tiers
    ``device``: models ready to run, on the engine's device (GPU memory on
    CUDA).  ``host``: models moved to host RAM (``.to("cpu")``) to make room
    on the device; a hit there moves the model back (``.to(device)``), which
    is far cheaper than a load from disk.  Each tier has its own byte budget.
    On a CPU engine both tiers are the same RAM, so the move is skipped, but
    the accounting, the order of operations and the code path are the ones a
    GPU uses: the host tier then simply holds a second set of resident models
    under its own budget.

Size
    A model's size is the bytes of the parameters and buffers of its torch
    modules (:func:`model_bytes`: a module, a diffusers pipeline's
    ``components``, or an object's ``.base`` pipeline), each tensor counted
    once.  Activations, CUDA workspaces and the allocator's own slack are not
    in it: that is what the room left outside the budgets is for
    (:func:`default_budgets`).

Eviction
    Least recently used first, within a tier: device → host (moved to the
    CPU) → dropped.  A model that does not fit the host budget at all is
    dropped straight from the device tier.  The entry a call is serving
    (just loaded, or just hit) is never the victim of its own call.

Dropping
    The cache deletes its reference after ``on_drop`` (default
    :func:`break_self_references`: a component that refers to itself, like
    the SD text encoder's clip-skip alias, gets a weak proxy instead, so
    reference counting alone frees the model).  ``gc.collect()`` runs only
    if a module of the dropped model is still alive afterwards (a cycle, or
    a caller still holding it): a full collection costs ~0.25 s with
    torch + diffusers + transformers imported (~440k objects) and holds the
    GIL, i.e. stalls the event loop.  On CUDA, ``torch.cuda.empty_cache()``
    then hands the freed blocks back.

Over-budget cases (documented choices, not errors)
    * A model larger than a tier's whole budget still loads and runs: every
      other unpinned model of that tier is evicted and it stays as the only
      one (refusing would make the model unusable; the budget is a target
      for what is kept *resident*, not a hard allocator limit).
    * Pinned models are never evicted.  If everything that could make room
      is pinned (or mid-move), the tier temporarily exceeds its budget; the
      budget is restored when the pins are released.

Pinning
    ``with cache.use(key, loader) as model:`` pins the model for the duration
    of a run: it stays on the device whatever other threads load meanwhile.
    ``get`` returns a model without pinning it (warm-up, tests).

Single flight
    Concurrent requests for the same cold key load it once; the others wait
    for that load and get the same object.  A failed load leaves no entry,
    re-raises the loader's exception in the loading thread and in every
    waiter, and a later request tries again.

Loads
    ``size_hint`` (bytes, or a callable run only on a miss) reserves room on
    the device before the loader runs, so a GPU is not asked to hold the
    new model on top of a full tier; the real size (:func:`model_bytes`)
    replaces the hint once loaded.  Loads of different keys may run at the
    same time as far as the cache is concerned (the model library
    serialises diffusers loads itself: ``engine.models.LOAD_LOCK``).
    ``remeasure(key)`` re-sizes a model that grew (LoRA adapters).

Invalidation
    ``forget(key)`` drops an entry at once (or, if it is pinned or being
    moved, as soon as it is released); a load of that key in flight is not
    cached when it finishes.  Keys should name content (the model library
    uses AIR + file sha256), so a re-upload is a new key and ``forget`` only
    frees the old bytes early.

Thread safety
    One lock (a ``Condition``) guards the bookkeeping.  It is never held
    during a load, a move or a ``gc.collect()``: the byte accounting is
    updated under the lock when a move is *decided* (so a tier's bytes are
    within budget as soon as a call returns), the entries being moved are
    marked busy, and the moves run after the lock is released.  A request
    for a busy entry waits for its move to finish.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

log = logging.getLogger("wisp.engine.cache")

DEVICE = "device"
HOST = "host"
HOST_DEVICE = "cpu"

# Default budgets (see default_budgets).
CUDA_DEVICE_SHARE = 0.70
"""Of the GPU's memory: the rest is for activations, the VAE decode, cuDNN/cuBLAS workspaces."""
HOST_SHARE = 0.50
"""Of the machine's RAM (or cgroup limit), for resident models in all tiers that live in RAM."""
CPU_DEVICE_SHARE = 0.35
"""On a CPU engine, the device tier's share of RAM; the host tier gets ``HOST_SHARE - CPU_DEVICE_SHARE``."""

Loader = Callable[[], Any]
SizeHint = int | Callable[[], int | None] | None


# ---- sizes, moves and budgets ------------------------------------------------


def _torch_modules(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.nn.Module):
        return [obj]
    components = getattr(obj, "components", None)  # a diffusers pipeline
    if isinstance(components, dict):
        return [c for c in components.values() if isinstance(c, torch.nn.Module)]
    base = getattr(obj, "base", None)  # a wisp model wrapping its pipeline
    if base is not None and base is not obj:
        return _torch_modules(base)
    return []


def model_bytes(obj: Any) -> int:
    """Bytes of the parameters and buffers of ``obj``'s torch modules, each tensor once."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    seen: set[int] = set()
    total = 0
    for module in _torch_modules(obj):
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.nbytes
    return total


def break_self_references(obj: Any) -> None:
    """Replace any attribute of a component that is the component itself by a weak proxy.

    Such a self-reference (wisp's clip-skip alias ``text_encoder.text_model``)
    is a reference cycle: without this the component outlives the cache's
    reference until a full ``gc.collect()``.  The proxy keeps the attribute
    working for anyone still holding the model.
    """
    for module in _torch_modules(obj):
        for name, value in list(vars(module).items()):
            if value is module:
                vars(module)[name] = weakref.proxy(module)


def move_model(obj: Any, device: str) -> Any:
    """Move ``obj`` to ``device``; returns the moved object (the same one for modules and pipelines).

    Works on anything with a ``.to`` (modules, diffusers pipelines, tensors)
    and on wrappers holding their pipeline in ``.base`` (whose ``.device``
    attribute is kept in step).
    """
    to = getattr(obj, "to", None)
    if callable(to):
        moved = to(device)
        return obj if moved is None else moved
    base = getattr(obj, "base", None)
    if base is not None:
        base.to(device)
        if hasattr(obj, "device"):
            obj.device = device
        return obj
    raise TypeError(f"cannot move a {type(obj).__name__} to {device}")


def total_ram_bytes() -> int:
    """The machine's RAM, or the cgroup's memory limit when that is smaller."""
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    if total <= 0:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or 1 << 62):
            total = int(text)
    if total <= 0:
        raise RuntimeError("cannot tell how much RAM this machine has; set the cache budgets explicitly")
    return total


def _device_type(device: str) -> str:
    return str(device).split(":", 1)[0]


def default_budgets(device: str) -> tuple[int, int]:
    """(device bytes, host bytes) for ``device`` when none are configured.

    * CUDA: the device tier gets 70 % of the GPU's memory (the rest is for
      activations and workspaces); the host tier 50 % of RAM.
    * CPU (and anything else, e.g. MPS, whose memory is the RAM): all
      resident models together get 50 % of RAM — 35 % for the device tier,
      15 % for the host tier — leaving the other half for activations, the
      Python process, uploads in flight and the page cache of the store.
    """
    ram = total_ram_bytes()
    if _device_type(device) == "cuda":
        import torch

        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return int(CUDA_DEVICE_SHARE * torch.cuda.get_device_properties(index).total_memory), int(HOST_SHARE * ram)
    device_bytes = int(CPU_DEVICE_SHARE * ram)
    return device_bytes, max(1, int(HOST_SHARE * ram) - device_bytes)


# ---- the cache -----------------------------------------------------------------


class _Entry:
    __slots__ = ("key", "model", "size", "tier", "pins", "busy", "retired")

    def __init__(self, key: Hashable, model: Any, size: int, tier: str) -> None:
        self.key = key
        self.model = model
        self.size = size
        self.tier = tier
        self.pins = 0
        self.busy = False  # being moved between tiers (outside the lock)
        self.retired = False  # forgotten while pinned or busy: dropped when released

    def __repr__(self) -> str:
        return f"<entry {self.key!r} {self.tier} {self.size} B pins={self.pins}{' busy' if self.busy else ''}>"


class _Flight:
    """One load in progress; waiters block on the cache's condition until ``done``."""

    __slots__ = ("done", "error", "forgotten")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.forgotten = False


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of the cache's counters and occupancy.

    ``hits`` counts requests served by a resident model (``host_hits`` of
    them from the host tier); ``misses`` counts loads started (the loader
    calls); ``coalesced`` counts requests that waited for another thread's
    load of the same key.  ``hits + misses + coalesced`` is the number of
    requests, less those that waited for a load that failed.
    """

    hits: int
    host_hits: int
    misses: int
    coalesced: int
    load_failures: int
    evictions_to_host: int
    """device → host moves."""
    evictions_dropped: int
    """Entries dropped to respect a budget (from the host tier, or straight from the device tier)."""
    forgets: int
    gc_runs: int
    """Drops after which a module was still alive, so ``gc.collect()`` ran."""
    device_bytes: int
    host_bytes: int
    device_entries: int
    host_entries: int
    device_budget: int
    host_budget: int
    pinned: int
    loading: int
    load_seconds_total: float
    load_seconds_last: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = (
    "hits", "host_hits", "misses", "coalesced", "load_failures", "evictions_to_host", "evictions_dropped", "forgets", "gc_runs",
)
_Plan = list[tuple[str, _Entry]]


class ModelCache:
    """Resident models by key, under a device and a host byte budget (see the module docstring).

    ``device``: where models run (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    ``device_bytes``/``host_bytes``: the budgets; ``None`` or 0 takes
    :func:`default_budgets`.  ``sizer``, ``mover`` and ``on_drop`` default
    to :func:`model_bytes`, :func:`move_model` and :func:`break_self_references`.
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        device_bytes: int | None = None,
        host_bytes: int | None = None,
        sizer: Callable[[Any], int] = model_bytes,
        mover: Callable[[Any, str], Any] = move_model,
        on_drop: Callable[[Any], None] | None = break_self_references,
    ) -> None:
        if (device_bytes or 0) < 0 or (host_bytes or 0) < 0:
            raise ValueError("cache budgets must be positive (0 means the default)")
        if not device_bytes or not host_bytes:
            default_device, default_host = default_budgets(device)
            device_bytes = device_bytes or default_device
            host_bytes = host_bytes or default_host
        self.device = device
        self.device_budget = int(device_bytes)
        self.host_budget = int(host_bytes)
        self._sizer = sizer
        self._mover = mover
        self._on_drop = on_drop
        # On a CPU engine both tiers are the same memory: the move itself is skipped.
        self._moves = _device_type(device) != HOST_DEVICE
        self._cond = threading.Condition(threading.Lock())
        self._entries: dict[Hashable, _Entry] = {}
        self._tiers: dict[str, OrderedDict[_Entry, None]] = {DEVICE: OrderedDict(), HOST: OrderedDict()}  # LRU first
        self._bytes = {DEVICE: 0, HOST: 0}
        self._reserved = 0  # device bytes announced by loads in flight (size hints)
        self._flights: dict[Hashable, _Flight] = {}
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._load_total = 0.0
        self._load_last = 0.0

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<ModelCache {self.device}: device {s.device_entries} ({s.device_bytes}/{s.device_budget} B), "
            f"host {s.host_entries} ({s.host_bytes}/{s.host_budget} B)>"
        )

    # ---- public API -------------------------------------------------------

    def get(self, key: Hashable, loader: Loader, *, size_hint: SizeHint = None) -> Any:
        """The model for ``key`` on the device, loaded with ``loader()`` on a miss (not pinned).

        ``size_hint``: the expected size in bytes (or a callable giving it,
        called only on a miss); room is made on the device for it *before*
        the load, so that a GPU does not run out of memory while loading.
        """
        return self._acquire(key, loader, size_hint, pin=False)[0]

    @contextmanager
    def use(self, key: Hashable, loader: Loader, *, size_hint: SizeHint = None) -> Iterator[Any]:
        """Like :meth:`get`, and the model stays pinned (never evicted) until the block exits."""
        model, entry = self._acquire(key, loader, size_hint, pin=True)
        try:
            yield model
        finally:
            del model  # not kept alive by this frame if the release drops it
            if entry is not None:
                self._release(entry)

    def forget(self, key: Hashable) -> bool:
        """Drop ``key`` (e.g. its AIR now names other bytes); returns whether anything was there.

        A pinned or moving entry leaves the index now (new requests load
        afresh) and is dropped when released; a load in flight still serves
        its waiters but is not kept.
        """
        with self._cond:
            flight = self._flights.get(key)
            if flight is not None:
                flight.forgotten = True
            entry = self._entries.pop(key, None)
            if entry is None:
                return flight is not None
            self._n["forgets"] += 1
            if entry.pins or entry.busy:
                entry.retired = True
                return True
            self._remove(entry)
            plan: _Plan = [("drop", entry)]
        self._execute(plan)
        return True

    def clear(self) -> int:
        """Drop every entry that is neither pinned nor moving; returns how many were dropped."""
        with self._cond:
            victims = [e for tier in self._tiers.values() for e in tier if not e.pins and not e.busy]
            for entry in victims:
                self._remove(entry)
                self._unindex(entry)
            plan: _Plan = [("drop", e) for e in victims]
        self._execute(plan)
        return len(victims)

    def remeasure(self, key: Hashable) -> int | None:
        """Size ``key``'s model again (it grew, e.g. a LoRA adapter was added) and re-apply the budgets.

        Call it while holding the model (in a ``use`` block) or while no
        other thread uses it.  Returns the new size, None if ``key`` is not resident.
        """
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return None
            model = entry.model
        try:
            size = self._sizer(model)
        except Exception:  # e.g. the module tree changing under another thread: keep the old size
            log.warning("could not measure %r again", key, exc_info=True)
            return None
        finally:
            del model
        with self._cond:
            if entry.retired or entry not in self._tiers[entry.tier]:
                return size
            self._bytes[entry.tier] += size - entry.size
            entry.size = size
            plan = self._make_room(0, exclude=entry)
        self._execute(plan)
        return size

    def stats(self) -> CacheStats:
        with self._cond:
            return CacheStats(
                **self._n,
                device_bytes=self._bytes[DEVICE],
                host_bytes=self._bytes[HOST],
                device_entries=len(self._tiers[DEVICE]),
                host_entries=len(self._tiers[HOST]),
                device_budget=self.device_budget,
                host_budget=self.host_budget,
                pinned=sum(1 for tier in self._tiers.values() for e in tier if e.pins),
                loading=len(self._flights),
                load_seconds_total=self._load_total,
                load_seconds_last=self._load_last,
            )

    def keys(self, tier: str | None = None) -> list[Hashable]:
        """Resident keys of ``tier``, least recently used first; all of them (host tier first) when None."""
        with self._cond:
            tiers = (tier,) if tier is not None else (HOST, DEVICE)
            return [e.key for t in tiers for e in self._tiers[t] if not e.retired]

    def pinned_bytes(self, tier: str = DEVICE) -> int:
        """Bytes of ``tier`` held by models in use (pinned): what no eviction can free right now."""
        with self._cond:
            return sum(e.size for e in self._tiers[tier] if e.pins)

    def loading_keys(self) -> list[Hashable]:
        """Keys whose load is in progress (a fleet replica reports them, so a router sends their jobs here)."""
        with self._cond:
            return list(self._flights)

    def tier_of(self, key: Hashable) -> str | None:
        with self._cond:
            entry = self._entries.get(key)
            return entry.tier if entry is not None else None

    def __contains__(self, key: Hashable) -> bool:
        with self._cond:
            return key in self._entries

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    # ---- acquire / release --------------------------------------------------

    def _acquire(self, key: Hashable, loader: Loader, size_hint: SizeHint, pin: bool) -> tuple[Any, _Entry | None]:
        waited = False
        with self._cond:
            while True:
                entry = self._entries.get(key)
                if entry is not None:
                    if entry.busy:
                        self._cond.wait()
                        continue
                    self._n["coalesced" if waited else "hits"] += 1
                    if pin:
                        entry.pins += 1
                    if entry.tier == DEVICE:
                        self._tiers[DEVICE].move_to_end(entry)
                        return entry.model, entry
                    # A host hit: back to the device, making room there first.
                    if not waited:
                        self._n["host_hits"] += 1
                    self._remove(entry)
                    self._add(entry, DEVICE)
                    entry.busy = True
                    plan = self._make_room(0, exclude=entry)
                    break
                flight = self._flights.get(key)
                if flight is not None:
                    waited = True
                    while not flight.done:
                        self._cond.wait()
                    if flight.error is not None:
                        raise flight.error
                    continue  # served by the entry it left (or, if that is gone already, load again)
                flight = self._flights[key] = _Flight()
                self._n["misses"] += 1
                break
        if entry is not None:
            return self._promote(entry, plan, pin), entry
        return self._load(key, loader, size_hint, flight, pin)

    def _promote(self, entry: _Entry, plan: _Plan, pin: bool) -> Any:
        """host → device, outside the lock (the entry is busy meanwhile)."""
        self._execute(plan)  # make room on the device before moving onto it
        try:
            model = self._mover(entry.model, self.device) if self._moves else entry.model
        except BaseException:
            log.exception("moving %r back to %s failed; dropping it", entry.key, self.device)
            with self._cond:
                entry.busy = False
                if pin:
                    entry.pins -= 1
                self._remove(entry)
                self._unindex(entry)
                self._cond.notify_all()
            self._execute([("drop", entry)])
            raise
        with self._cond:
            entry.model = model
            entry.busy = False
            self._cond.notify_all()
            plan = self._settle(entry)
        self._execute(plan)
        return model

    def _load(self, key: Hashable, loader: Loader, size_hint: SizeHint, flight: _Flight, pin: bool) -> tuple[Any, _Entry | None]:
        hint = 0
        try:
            value = size_hint() if callable(size_hint) else size_hint
            hint = max(0, int(value or 0))
        except Exception:
            log.debug("size hint for %r failed", key, exc_info=True)
        if hint:
            with self._cond:
                self._reserved += hint
                plan = self._make_room(0, exclude=None)
            self._execute(plan)
        started = time.perf_counter()
        try:
            model = loader()
            elapsed = time.perf_counter() - started
            size = self._sizer(model)
        except BaseException as exc:
            with self._cond:
                self._reserved -= hint
                del self._flights[key]
                flight.error = exc
                flight.done = True
                self._n["load_failures"] += 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._reserved -= hint
            del self._flights[key]
            flight.done = True
            self._load_total += elapsed
            self._load_last = elapsed
            self._cond.notify_all()
            if flight.forgotten:
                return model, None
            entry = _Entry(key, model, size, DEVICE)
            if pin:
                entry.pins = 1
            self._entries[key] = entry
            self._add(entry, DEVICE)
            plan = self._make_room(0, exclude=entry)
        log.info("loaded %s (%.1f MB) in %.2f s", key, size / 1e6, elapsed)
        self._execute(plan)
        return model, entry

    def _release(self, entry: _Entry) -> None:
        with self._cond:
            entry.pins -= 1
            if entry.pins:
                return
            if entry.retired:
                plan = self._settle(entry)
            else:
                # Pins may have held a tier over budget; the released entry itself stays (it is the MRU).
                plan = self._make_room(0, exclude=entry)
        self._execute(plan)

    # ---- bookkeeping (lock held) ----------------------------------------------

    def _add(self, entry: _Entry, tier: str) -> None:
        entry.tier = tier
        self._tiers[tier][entry] = None
        self._bytes[tier] += entry.size

    def _remove(self, entry: _Entry) -> None:
        tier = self._tiers[entry.tier]
        if entry in tier:
            del tier[entry]
            self._bytes[entry.tier] -= entry.size

    def _unindex(self, entry: _Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    def _settle(self, entry: _Entry) -> _Plan:
        """After a move or the last release: drop ``entry`` if it was forgotten meanwhile."""
        if entry.retired and not entry.pins and not entry.busy:
            self._remove(entry)
            return [("drop", entry)]
        return []

    def _lru(self, tier: str, exclude: _Entry | None, plan: _Plan | None = None) -> _Entry | None:
        """The least recently used evictable entry of ``tier``.

        Busy entries are skipped, except those whose move to the host is only
        *planned* (in ``plan``, not yet executed): those can still be dropped instead.
        """
        for entry in self._tiers[tier]:
            if entry is exclude or entry.pins:
                continue
            if not entry.busy or (plan is not None and any(e is entry and a == "to_host" for a, e in plan)):
                return entry
        return None

    def _make_room(self, extra: int, exclude: _Entry | None) -> _Plan:
        """Decide the evictions that bring both tiers within budget; the moves run later, unlocked."""
        plan: _Plan = []
        while self._bytes[DEVICE] + self._reserved + extra > self.device_budget:
            victim = self._lru(DEVICE, exclude)
            if victim is None:
                break  # everything else is pinned or moving: over budget until released
            self._remove(victim)
            if victim.size > self.host_budget:
                self._unindex(victim)
                self._n["evictions_dropped"] += 1
                plan.append(("drop", victim))
                continue
            self._fit_host(victim.size, plan)
            self._add(victim, HOST)
            victim.busy = True
            self._n["evictions_to_host"] += 1
            plan.append(("to_host", victim))
        self._fit_host(0, plan)
        return plan

    def _fit_host(self, extra: int, plan: _Plan) -> None:
        while self._bytes[HOST] + extra > self.host_budget:
            victim = self._lru(HOST, None, plan)
            if victim is None:
                break
            self._remove(victim)
            self._unindex(victim)
            self._n["evictions_dropped"] += 1
            for i, (action, entry) in enumerate(plan):
                if entry is victim and action == "to_host":  # planned for the host, now dropped instead
                    plan[i] = ("drop", victim)
                    victim.busy = False
                    self._n["evictions_to_host"] -= 1
                    break
            else:
                plan.append(("drop", victim))

    # ---- moves and drops (lock not held) -----------------------------------------

    def _execute(self, plan: _Plan) -> None:
        dropped: list[_Entry] = []
        for action, entry in plan:
            if action == "drop":
                log.info("dropped %s (%.1f MB)", entry.key, entry.size / 1e6)
                dropped.append(entry)
                continue
            # device → host
            failed = False
            try:
                if self._moves:
                    entry.model = self._mover(entry.model, HOST_DEVICE)
                log.info("moved %s (%.1f MB) to the host tier", entry.key, entry.size / 1e6)
            except BaseException:
                log.exception("moving %r to host memory failed; dropping it", entry.key)
                failed = True
            with self._cond:
                entry.busy = False
                if failed:
                    self._remove(entry)
                    self._unindex(entry)
                    more = [("drop", entry)]
                else:
                    more = self._settle(entry)
                self._cond.notify_all()
            dropped.extend(gone for _, gone in more)
        if dropped:
            self._drop(dropped)

    def _drop(self, entries: list[_Entry]) -> None:
        refs = []
        for entry in entries:
            model, entry.model = entry.model, None
            if model is None:
                continue
            try:
                refs.extend(weakref.ref(m) for m in _torch_modules(model))
            except TypeError:
                pass
            if self._on_drop is not None:
                try:
                    self._on_drop(model)
                except Exception:
                    log.debug("on_drop failed for %r", entry.key, exc_info=True)
            del model
        if any(ref() is not None for ref in refs):
            gc.collect()
            with self._cond:
                self._n["gc_runs"] += 1
        if _device_type(self.device) == "cuda":
            import torch

            torch.cuda.empty_cache()
