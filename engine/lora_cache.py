"""The host-RAM cache of parsed LoRA adapters (the S-LoRA idea, on a small scale).

Thousands of small adapters can sit in RAM while only the active ones are on
a model: :class:`LoraCache` keeps each adapter's tensors, read once from the
store, checked and with kohya alphas folded (:func:`engine.lora.read_lora_file`),
keyed by the file's sha256, in a byte-budgeted LRU.  Applying a request's
set then never re-reads a file whose adapter is cached, and never touches
the base model's weights.

What is cached is the family-independent form — the file's tensors after the
format check and the alpha folding.  diffusers' per-family key conversion
(``lora_state_dict``: kohya names → diffusers names, SDXL block mapping) is
left to the load itself: it takes a fraction of a millisecond, against tens
of milliseconds for PEFT's layer injection, and one cached entry then serves
an SD-1.x and an SDXL pipeline alike.

One per engine: :class:`engine.core.Engine` creates it (budget
``EngineConfig.lora_cache_bytes``) and hands it to its
:class:`~engine.models.ModelLibrary`, which gives it to every model it
loads; nothing finds it implicitly.

Thread-safe.  A file read happens outside the lock; two threads missing the
same key at once both read it, and the second insert replaces the first (the
worker is one thread per device, so this is rare and harmless).

The tensors handed out are shared, never copied: a model that loads them
(diffusers assigns them to the new adapter parameters without a copy on
CPU) aliases the cache's memory.  Nothing in wisp writes adapter
parameters in place (no ``fuse_lora``, no in-place hotswap), which is what
makes that sharing safe; see :mod:`engine.lora_adapters`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from engine.lora import count_adapted_layers, read_lora_file

log = logging.getLogger("wisp.engine.lora_cache")

DEFAULT_RAM_FRACTION = 0.04
"""Default budget: 4 % of the machine's RAM (about 1.2 GiB on 32 GiB: hundreds of typical LoRAs)."""
MIN_DEFAULT_BYTES = 64 * 1024**2


def default_lora_cache_bytes() -> int:
    """The default budget: :data:`DEFAULT_RAM_FRACTION` of RAM, at least 64 MiB."""
    from engine.cache import total_ram_bytes

    return max(MIN_DEFAULT_BYTES, int(total_ram_bytes() * DEFAULT_RAM_FRACTION))


def tensor_bytes(state: Mapping[str, Any]) -> int:
    return sum(int(t.numel()) * int(t.element_size()) for t in state.values())


@dataclass(frozen=True)
class CachedLora:
    """One parsed adapter: read-only tensors by name, and what the load check needs."""

    key: str
    state: Mapping[str, Any]
    nbytes: int
    layers: int
    """How many layers the adapter targets (one ``lora_down``/``lora_A`` each)."""


@dataclass(frozen=True)
class LoraCacheStats:
    """A snapshot of the adapter cache: ``misses`` counts file reads, ``hits`` reads avoided."""

    hits: int
    misses: int
    evictions: int
    oversize: int
    """Adapters larger than the whole budget: used once, not kept."""
    entries: int
    bytes: int
    budget: int
    read_seconds_total: float
    read_seconds_last: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Reader = Callable[[Path], dict[str, Any]]


class LoraCache:
    """A byte-budgeted LRU of parsed LoRA files, keyed by content (sha256)."""

    def __init__(self, budget_bytes: int = 0, reader: Reader | None = None) -> None:
        """``budget_bytes`` 0: :func:`default_lora_cache_bytes`.  ``reader`` (tests): path → checked state."""
        self._budget = budget_bytes or default_lora_cache_bytes()
        self._reader = reader
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, CachedLora] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._oversize = 0
        self._read_total = self._read_last = 0.0

    @property
    def budget(self) -> int:
        return self._budget

    def set_budget(self, budget_bytes: int) -> None:
        """Change the budget (0: the default); evicts at once if the cache is now over it."""
        with self._lock:
            self._budget = budget_bytes or default_lora_cache_bytes()
            self._evict(0)

    def get(self, key: str, path: Path) -> CachedLora:
        """The parsed adapter ``key`` (its file's sha256), reading ``path`` only on a miss.

        Raises :class:`engine.lora.LoraLoadError` for a file that cannot be
        used; a failed read leaves nothing in the cache.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry
            self._misses += 1
        start = time.perf_counter()
        state = self._read(path)
        elapsed = time.perf_counter() - start
        entry = _entry(key, state)
        with self._lock:
            self._read_total += elapsed
            self._read_last = elapsed
            if entry.nbytes > self._budget:
                self._oversize += 1
                log.info("LoRA %s (%d bytes) is larger than the adapter cache (%d bytes): not kept", key, entry.nbytes, self._budget)
                return entry
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._evict(entry.nbytes)
            self._entries[key] = entry
            self._bytes += entry.nbytes
        return entry

    def forget(self, key: str) -> bool:
        """Drop ``key`` (its file was deleted or replaced); returns whether it was cached."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> LoraCacheStats:
        with self._lock:
            return LoraCacheStats(
                hits=self._hits, misses=self._misses, evictions=self._evictions, oversize=self._oversize,
                entries=len(self._entries), bytes=self._bytes, budget=self._budget,
                read_seconds_total=self._read_total, read_seconds_last=self._read_last,
            )

    def _read(self, path: Path) -> dict[str, Any]:
        if self._reader is not None:
            return self._reader(path)
        return read_lora_file(path)

    def _evict(self, extra: int) -> None:
        """Drop least-recently-used entries until ``extra`` more bytes fit (lock held)."""
        while self._entries and self._bytes + extra > self._budget:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            self._evictions += 1


def _entry(key: str, state: dict[str, Any]) -> CachedLora:
    return CachedLora(key=key, state=MappingProxyType(state), nbytes=tensor_bytes(state), layers=count_adapted_layers(state))
