"""The process heap: the garbage collector off the libraries' objects, glibc's malloc off the page-fault path.

**Garbage collector.**

Importing torch, diffusers and transformers leaves ~440k long-lived objects
(functions, classes, their dicts) behind.  Every full (generation-2)
collection scans all of them: ~0.25 s holding the GIL on the reference VM.
A server that keeps answered tasks for ``getResponse`` makes long-lived
objects all the time, so full collections come every few seconds under a
modelSearch-heavy load; measured, they were ~14 % of the server's CPU
(bench/small_tasks.py; RESULTS.md).  :func:`freeze_library_objects` moves
everything alive at that moment into the permanent generation, which
collections skip.

It runs once, before any model is loaded, and never again: a frozen object is
never freed as part of a reference cycle, and the model cache may need a
collection to free a dropped model (engine.cache).  Objects made later
(models, tasks) are collected as before.

**malloc.**  A request's activations are freed when it ends and allocated
again by the next.  glibc gives freed memory back to the kernel in three
ways: a block above its mmap threshold is a fresh ``mmap`` each time, a heap
whose free top exceeds the trim threshold is shrunk, and a thread's extra
64 MB heap is unmapped as soon as nothing in it is in use.  The thresholds
start low (128 KB) and only rise as big mmapped blocks are freed, and the
third has no threshold at all (only the top pad).  On the device thread
every 64×64 imageInference on the built-in model took ~900–1,100 minor page
faults (~4 MB touched anew, up to 29 heaps mapped and unmapped), ~1 ms of
its CPU: its diffusers call ran ~1 ms slower in the server than in a script
whose main thread had raised the thresholds (bench/inference.py;
RESULTS.md, 2026-12-05).  :func:`keep_freed_memory` sets them where glibc's
own rule ends up once a 16 MB block has been freed (blocks up to 16 MB come
from a heap, up to 32 MB of free heap top is kept) and the top pad to 16 MB,
so a thread's emptied heap is kept for the next request.  Bigger blocks are
still mapped and returned on free.  The price is memory: each malloc arena
that served big blocks (the device thread's, the loop's for big frames)
keeps up to 32 MB of free memory; with 64 MB a slow-consumer test's peak RSS
rose 100 MiB, over its bound of 96 (tests/server/test_slow_consumer.py).  An
operator's ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` (or ``GLIBC_TUNABLES``) win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import time

log = logging.getLogger("wisp.engine.heap")

_done = False


def freeze_library_objects() -> int:
    """Import the heavy libraries, collect, and freeze what is alive; returns how many objects were frozen (0 when it
    already ran in this process).  Call it before the first model load, with no load running."""
    global _done
    if _done:
        return 0
    began = time.perf_counter()
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401  (their lazy submodules)
    from transformers import CLIPTextModel  # noqa: F401

    gc.collect()
    gc.freeze()
    _done = True
    frozen = gc.get_freeze_count()
    log.debug("froze %d library objects out of the collector's way in %.2f s", frozen, time.perf_counter() - began)
    return frozen


M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
"""Blocks up to this size come from a heap (glibc's own moving threshold reaches it once such a block is freed)."""
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
"""Free memory kept at the top of a heap before it goes back to the kernel (glibc keeps it at twice the mmap threshold)."""
TOP_PAD_BYTES = 16 * 1024 * 1024
"""Free memory a trim leaves at a heap's top; also, an emptied thread heap is kept while the heap before it has less
free room than this at its end (glibc unmaps it otherwise), which a heap full of a model's weights has."""
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a process that frees and reallocates the same big blocks per request.

    Returns whether they are set (False: not glibc, or the operator set malloc's
    own environment variables, which then stand).  Once per process; later
    calls return the first answer.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if not sys.platform.startswith("linux"):
        return False
    if any(os.environ.get(name) for name in _OPERATOR_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("malloc thresholds left as the environment sets them")
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt is a stub
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _malloc_tuned = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES)))
    log.debug("malloc: blocks up to %d MB from a heap, %d MB of free heap kept, emptied heaps kept: %s",
              MMAP_THRESHOLD_BYTES >> 20, TRIM_THRESHOLD_BYTES >> 20, _malloc_tuned)
    return _malloc_tuned
