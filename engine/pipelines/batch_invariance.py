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
part per request, so each part runs the exact kernel, shape, row order and
threading of the lone run; everything else stays batched, which is where the speed-up
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
        return torch.cat([forward(part) for part in x.split(rows // parts)])  # contiguous views: no copies in

    return forward_per_request


def _request_major(forward: Callable[..., Any], requests: int) -> Callable[..., Any]:
    """``forward`` of a UNet, fed its batch request by request and answering in the caller's order.

    diffusers stacks a guided batch as ``[uncond × n, cond × n]``; a lone run's
    batch is ``[uncond_i, cond_i]``.  Reordering once per step to
    ``[uncond_0, cond_0, uncond_1, cond_1, …]`` makes each request's rows one
    contiguous slice laid out as in its lone run, which is what the split
    layers need: a kernel's thread split can treat a part's first and second
    row differently, and slices of a contiguous batch cost no copies.
    """
    import torch

    def forward_request_major(sample: Any, *args: Any, **kwargs: Any) -> Any:
        batch = sample.shape[0]
        if batch == requests or batch % requests:
            return forward(sample, *args, **kwargs)
        order = torch.arange(batch, device=sample.device).reshape(batch // requests, requests).t().reshape(-1)
        back = torch.argsort(order)

        def reorder(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: reorder(v) for key, v in value.items()}
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
                return value[order]
            return value

        out = forward(reorder(sample), *(reorder(a) for a in args), **{k: reorder(v) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            return (out[0][back], *out[1:])
        out.sample = out.sample[back]
        return out

    return forward_request_major


@contextmanager
def per_request_kernels(unet: Any, requests: int) -> Iterator[None]:
    """Within: ``unet``'s batch-order-sensitive layers run once per request's rows.

    ``requests`` is how many requests share the call.  The UNet sees its
    batch request by request (:func:`_request_major`), and each split layer
    runs one contiguous part per request (two rows with classifier-free
    guidance, one without).  Adapter layers added by a LoRA are
    ``Linear``/``Conv2d`` modules too, so an active LoRA set is covered.  The
    caller holds the model's lock: the patches are on the shared modules.
    """
    import torch

    patched: list[tuple[Any, Any]] = []
    try:
        for module in unet.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = _split_forward(module.forward, requests, isinstance(module, torch.nn.Linear))
        patched.append((unet, unet.__dict__.get("forward")))
        unet.forward = _request_major(unet.forward, requests)
        yield
    finally:
        for module, own in reversed(patched):
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
