"""Batched denoising whose every image is bit-for-bit its lone run.

Why: dynamic batching promises that a request's image does not depend on
which other requests shared its device call.  Most of a UNet already keeps
that promise (elementwise ops, norms, attention, and matrix products over
many tokens compute each sample the same way at any batch size), but two
kinds of kernel choose their summation order by the batch size and so move
the last bit of a float (measured on CPU, oneDNN/MKL, AVX-512 and AVX2, one
and two threads):

* a ``Linear`` over one vector per sample (the time embedding and each
  resnet's time projection): a GEMM with M = batch, where M=2 and M=16 take
  different kernels;
* a ``Conv2d``: oneDNN picks its algorithm and blocking by minibatch (mb=1
  and mb=2 differ from mb=16).

Inside :func:`per_request_kernels` those modules split their input into one
part per request, so each part runs the exact kernel, shape and threading of
the lone run; everything else stays batched, which is where the speed-up
comes from (one Python pass over the network, one scheduler step, bigger
attention and token GEMMs).  The VAE decodes image by image (diffusers'
slicing) for the same reason: its convolutions and channels-last group norm
change order at minibatch 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator


def _split_forward(forward: Callable[[Any], Any], parts: int, vectors_only: bool) -> Callable[[Any], Any]:
    import torch

    def forward_per_request(x: Any) -> Any:
        rows = x.shape[0]
        if parts < 2 or rows % parts or (vectors_only and x.dim() != 2):
            return forward(x)
        # Request i owns rows i, i+parts, … (diffusers stacks [uncond × n, cond × n]): its part is
        # laid out as in its lone run, [uncond_i, cond_i], because the thread split of a kernel can
        # treat a part's first and second row differently.
        outputs = [forward(x[i::parts].contiguous()) for i in range(parts)]
        return torch.stack(outputs, dim=1).reshape(rows, *outputs[0].shape[1:])

    return forward_per_request


@contextmanager
def per_request_kernels(model: Any, requests: int) -> Iterator[None]:
    """Within: ``model``'s batch-order-sensitive layers run once per request's rows.

    ``requests`` is how many requests share the call; a layer's batch is
    split into that many parts, each request's own rows in its lone order
    (two with classifier-free guidance, one without).  Adapter layers added
    by a LoRA are ``Linear``/``Conv2d`` modules too, so an active LoRA set is
    covered.  The caller holds the model's lock: the patch is on the shared
    modules.
    """
    import torch

    patched: list[tuple[Any, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                own = module.__dict__.get("forward")
                module.forward = _split_forward(module.forward, requests, isinstance(module, torch.nn.Linear))
                patched.append((module, own))
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


@contextmanager
def decode_image_by_image(vae: Any) -> Iterator[None]:
    """Within: the VAE decodes each latent alone (diffusers' slicing), as a lone run decodes it."""
    was = getattr(vae, "use_slicing", False)
    vae.use_slicing = True
    try:
        yield
    finally:
        vae.use_slicing = was
