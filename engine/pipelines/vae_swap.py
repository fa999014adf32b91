"""The ``vae`` override of one run: the model's pipelines decode (and encode) with another autoencoder.

The swap: the model's pipelines (the base and its ``from_pipe`` variants,
which share components) get the override as their ``vae`` for the run, and
the model's own VAE object back afterwards, whatever happened — including on
a variant created during the run from the swapped base.  What a VAE override
is and how it is loaded: :mod:`engine.vae`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["vae_override"]


@contextmanager
def vae_override(pipes: Callable[[], Any], base: Any, vae: Any) -> Iterator[None]:
    """``with vae_override(lambda: model._variants.values(), model.base, spec.vae):`` — the override for the block.

    ``vae`` is the run's :class:`engine.vae.VaeUse` (None, or one not loaded: no override).

    ``pipes`` returns the model's pipelines *now* (a variant may be created
    inside the block); each gets the override and, on exit, the base's own VAE.
    """
    if vae is None or vae.module is None:
        yield
        return
    own = base.vae
    module = vae.module.to(device=own.device, dtype=own.dtype)
    try:
        for pipe in list(pipes()):
            pipe.vae = module
        yield
    finally:
        for pipe in list(pipes()):
            pipe.vae = own
