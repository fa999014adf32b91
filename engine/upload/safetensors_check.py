"""Validate a safetensors file from its header alone, before anything trusts it.

Uploaded files come from arbitrary URLs.  A malformed header can make a
loader read out of bounds, allocate absurd amounts of memory, or silently
alias two tensors onto the same bytes; a pickle renamed ``.safetensors`` would
run code if anything unpickled it.  So every upload passes through
:func:`read_safetensors_info` first, which:

* reads only the 8-byte length prefix and the JSON header with plain file I/O
  (never ``torch``, never ``mmap``, never the tensor data), so a multi-GB
  file costs a few kilobytes of memory and one short read;
* checks the header against the format's rules as strictly as the reference
  implementation (and a little stricter: duplicate JSON keys, non-string
  metadata values and booleans posing as integers are refused), so the file
  that is stored is one every safetensors reader will load the same way.

Each refusal is an :class:`InvalidModelFile` with a one-line message that says
what is wrong, quoting at most a short, truncated piece of the header.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from engine.errors import EngineError

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
"""Bytes per element of each dtype the safetensors format defines (sub-byte types excluded)."""

MAX_RANK = 8
"""No diffusion weight has more than 5 dimensions; a deeper shape is a crafted header."""

DEFAULT_MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The reference implementation's own limit: a header is read whole into memory."""

_NAME_LIMIT = 80
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class InvalidModelFile(EngineError):
    """The uploaded file is not a well-formed model file of the declared kind.

    The fault is in what ``downloadURL`` served, so that is the default
    parameter; :func:`engine.upload.sniff.check_declared` points at
    ``category`` / ``architecture`` instead when the file is fine but was
    declared as something else.
    """

    code = "invalidModelFile"

    def __init__(self, message: str, *, parameter: str | None = "downloadURL", **extra: Any) -> None:
        super().__init__(message, parameter=parameter, **extra)


@dataclass(frozen=True)
class TensorInfo:
    """One header entry; ``begin``/``end`` are offsets into the data buffer (after the header)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsInfo:
    """Everything the header says about a file that passed every check."""

    path: Path
    header_size: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        """File offset of the data buffer: the 8-byte length prefix plus the header."""
        return 8 + self.header_size

    @property
    def dtypes(self) -> frozenset[str]:
        return frozenset(t.dtype for t in self.tensors.values())

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def _short(text: str, limit: int = _NAME_LIMIT) -> str:
    """A name or value fit for a one-line message: repr'd, truncated, never the whole header."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _fail(message: str) -> InvalidModelFile:
    return InvalidModelFile(f"invalid safetensors file: {message}")


def _pickle_hint(head: bytes) -> str | None:
    """Name the format when the first bytes are a zip (torch.save), a raw pickle stream, another known format or text.

    Only consulted once the file has already failed as safetensors, since a
    valid length prefix may by chance start with the same bytes.
    """
    if head.startswith(b"PK\x03\x04"):
        return "this is a zip archive (a PyTorch .ckpt/.pt pickle), not safetensors; pickled files are refused"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "this is a Python pickle (a .ckpt/.pt/.bin file), not safetensors; pickled files are refused"
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"this is {kind}, not a safetensors model file"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"this looks like text (it starts with {head.decode('ascii')!r}), not a safetensors model file"
    return None


_OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"RIFF", "a RIFF file (WebP, WAV)"),
    (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"GGUF", "a GGUF model (llama.cpp), which wisp cannot load"),
    (b"\x89HDF", "an HDF5 file (Keras)"), (b"7z\xbc\xaf", "a 7-Zip archive"),
)
"""First bytes of formats people upload by mistake, for a refusal that says what the file is."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses repeated keys, which ``json`` would silently collapse.

    Two readers could otherwise disagree about which entry a name refers to.
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(f"duplicate key {_short(key)} in the header")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_uint(value: Any) -> bool:
    # bool is a subclass of int; ``true`` is not a dimension.
    return type(value) is int and value >= 0


def _parse_tensor(name: str, entry: Any) -> TensorInfo:
    label = _short(name)
    if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise _fail(f"entry for tensor {label} must be an object with exactly dtype, shape and data_offsets (got {_short(str(keys))})")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _fail(f"tensor {label} has unknown dtype {_short(str(dtype), 20)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise _fail(f"tensor {label}: shape must be a list of non-negative integers (got {_short(json.dumps(shape), 40)})")
    if len(shape) > MAX_RANK:
        raise _fail(f"tensor {label} has rank {len(shape)}, more than {MAX_RANK}")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise _fail(f"tensor {label}: data_offsets must be two non-negative integers (got {_short(json.dumps(offsets), 40)})")
    begin, end = offsets
    if begin > end:
        raise _fail(f"tensor {label}: data_offsets begin {begin} is after end {end}")
    needed = prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != needed:
        raise _fail(
            f"tensor {label} is {dtype} {list(shape)}, which needs {needed} bytes, but its data_offsets span {end - begin}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(tensors: dict[str, TensorInfo], buffer_size: int) -> None:
    """The tensors must tile the data buffer exactly: no overlap, no gap, nothing left over.

    Overlaps let two tensors alias the same bytes; gaps and trailing bytes
    are places to hide a payload that no reader looks at.
    """
    ordered = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
    position = 0
    previous: TensorInfo | None = None
    for t in ordered:
        if t.begin < position:
            assert previous is not None
            raise _fail(
                f"tensor {_short(t.name)} begins at byte {t.begin}, inside tensor {_short(previous.name)} "
                f"which ends at {position} (overlapping data_offsets)"
            )
        if t.begin > position:
            where = f"after tensor {_short(previous.name)} ends at {position}" if previous else "the data buffer starts at 0"
            raise _fail(f"tensor {_short(t.name)} begins at byte {t.begin} but {where} (gap in data_offsets)")
        position = t.end
        previous = t
    if position < buffer_size:
        raise _fail(f"{buffer_size} bytes follow the header but the tensors cover only {position} (trailing bytes)")
    if position > buffer_size:
        raise _fail(f"the tensors need {position} bytes of data but only {buffer_size} follow the header (file truncated)")


def read_safetensors_info(path: Path, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> SafetensorsInfo:
    """Read and fully validate the header of the safetensors file at ``path``.

    Reads the first ``8 + header_size`` bytes and nothing else.  Raises
    :class:`InvalidModelFile` on any violation of the format; I/O errors
    (missing file, permissions) propagate unchanged since they are the
    server's problem, not the upload's.
    """
    path = Path(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _fail(f"file is {len(head)} bytes, too short for the 8-byte header length")
        (header_size,) = struct.unpack("<Q", head)
        problem: str | None = None
        if header_size == 0:
            problem = "header length is 0"
        elif header_size > max_header_bytes:
            problem = f"header length {header_size} exceeds the limit of {max_header_bytes} bytes"
        elif 8 + header_size > file_size:
            problem = f"header length {header_size} runs past the end of the file ({file_size} bytes)"
        else:
            first = f.read(1)
            if first != b"{":
                problem = f"header is not a JSON object: it starts with {first!r}, not '{{'"
        if problem is not None:
            raise _fail(_pickle_hint(head) or problem)
        raw = b"{" + f.read(header_size - 1)
    if len(raw) != header_size:  # the file shrank under us
        raise _fail(f"header length {header_size} runs past the end of the file")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"header is not valid UTF-8 (byte {exc.start})") from None
    # The format pads the header with spaces to align the data; JSON allows
    # trailing whitespace anyway, so this only makes the intent explicit.
    text = text.rstrip(" ")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise _fail(f"header is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        raise _fail(f"header is not valid JSON ({_short(str(exc), 60)})") from None
    if not isinstance(header, dict):
        raise _fail(f"header is not a JSON object but a {type(header).__name__}")

    metadata_raw = header.pop("__metadata__", None)
    if metadata_raw is None:  # absent, or null as the reference reader also accepts
        metadata_raw = {}
    if not isinstance(metadata_raw, dict):
        raise _fail(f"__metadata__ must be an object of strings, got a {type(metadata_raw).__name__}")
    for key, value in metadata_raw.items():
        if not isinstance(value, str):
            raise _fail(f"__metadata__ value for {_short(key)} is not a string (got {type(value).__name__})")
    metadata: dict[str, str] = dict(metadata_raw)

    if not header:
        raise _fail("the header lists no tensors")
    tensors = {name: _parse_tensor(name, entry) for name, entry in header.items()}
    _check_layout(tensors, file_size - 8 - header_size)
    return SafetensorsInfo(
        path=path, header_size=header_size, file_size=file_size, tensors=tensors, metadata=metadata
    )
