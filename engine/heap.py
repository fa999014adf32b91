"""Keep Python's cyclic garbage collector off the libraries' own objects.

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
"""

from __future__ import annotations

import gc
import logging
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
