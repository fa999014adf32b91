"""Rewrite a safetensors file with its float weights in the storage dtype.

Streams tensor by tensor (memory: one tensor at a time), keeps names,
shapes, order and ``__metadata__``, and leaves integer tensors and tensors
already in a half-precision dtype untouched.  Reads go through
``safetensors.safe_open`` (no pickle anywhere).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from engine.upload.safetensors_check import SafetensorsInfo

_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
CONVERTIBLE = {"F32", "F64"}


def needs_conversion(info: SafetensorsInfo, storage_dtype: str) -> bool:
    return storage_dtype in _ITEMSIZE and any(t.dtype in CONVERTIBLE and t.dtype != storage_dtype for t in info.tensors.values())


def convert(info: SafetensorsInfo, dest: Path, storage_dtype: str = "F16") -> None:
    """Write ``info.path`` to ``dest`` with F32/F64 tensors cast to ``storage_dtype``."""
    import torch
    from safetensors import safe_open

    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[storage_dtype]
    ordered = sorted(info.tensors.values(), key=lambda t: t.begin)
    header: dict[str, object] = {}
    if info.metadata:
        header["__metadata__"] = dict(sorted(info.metadata.items()))  # canonical: same content, same bytes
    offset = 0
    plan = []
    for t in ordered:
        dtype = storage_dtype if t.dtype in CONVERTIBLE else t.dtype
        numel = 1
        for d in t.shape:
            numel *= d
        size = numel * _ITEMSIZE[dtype] if dtype in _ITEMSIZE else t.end - t.begin
        header[t.name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        plan.append((t, dtype))
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with safe_open(str(info.path), framework="pt") as src, open(dest, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for t, dtype in plan:
            tensor = src.get_tensor(t.name)
            if dtype != t.dtype:
                tensor = tensor.to(torch_dtype)
            out.write(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        out.flush()
        os.fsync(out.fileno())
