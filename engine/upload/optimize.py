"""Rewrite a safetensors file with its float weights in the storage dtype.

Streams tensor by tensor (memory: one tensor at a time), keeps names,
shapes, order and ``__metadata__``, and leaves integer tensors and tensors
already in a half-precision dtype untouched.  Reads go through
``safetensors.safe_open`` (no pickle anywhere).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from engine.upload.safetensors_check import SafetensorsInfo

ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def header_bytes(entries: Iterable[tuple[str, str, Sequence[int], int]], metadata: Mapping[str, str]) -> bytes:
    """The length-prefixed safetensors header for ``(name, dtype, shape, bytes)`` written in that order.

    Metadata keys are sorted (the same content always gives the same bytes,
    whatever order a reader or writer kept them in) and the header is padded
    to 8 bytes, as the reference writer does.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob
CONVERTIBLE = {"F32", "F64"}


def needs_conversion(info: SafetensorsInfo, storage_dtype: str) -> bool:
    return storage_dtype in ITEMSIZE and any(t.dtype in CONVERTIBLE and t.dtype != storage_dtype for t in info.tensors.values())


def convert(info: SafetensorsInfo, dest: Path, storage_dtype: str = "F16") -> None:
    """Write ``info.path`` to ``dest`` with F32/F64 tensors cast to ``storage_dtype``."""
    import torch
    from safetensors import safe_open

    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[storage_dtype]
    ordered = sorted(info.tensors.values(), key=lambda t: t.begin)
    plan = [(t, storage_dtype if t.dtype in CONVERTIBLE else t.dtype) for t in ordered]
    entries = [
        (t.name, dtype, t.shape, math.prod(t.shape) * ITEMSIZE[dtype] if dtype in ITEMSIZE else t.end - t.begin)
        for t, dtype in plan
    ]
    with safe_open(str(info.path), framework="pt") as src, open(dest, "wb") as out:
        out.write(header_bytes(entries, info.metadata))
        for t, dtype in plan:
            tensor = src.get_tensor(t.name)
            if dtype != t.dtype:
                tensor = tensor.to(torch_dtype)
            out.write(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        out.flush()
        os.fsync(out.fileno())
