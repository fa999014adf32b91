"""wisp's wire vocabulary: task types, validation and frame encoding.

This package is pure: it imports only the standard library and msgspec, so it
can be driven from tests with literal bytes and reused by any transport.
Decode a client frame with :func:`decode_frame`; encode replies with
:func:`encode_data` and :func:`encode_errors`.
"""

from protocol.errors import ErrorCode, WireError
from protocol.frames import (
    MAX_OUT_FRAME_BYTES,
    DecodedTask,
    decode_frame,
    encode_data,
    encode_errors,
)

__all__ = [
    "MAX_OUT_FRAME_BYTES",
    "DecodedTask",
    "ErrorCode",
    "WireError",
    "decode_frame",
    "encode_data",
    "encode_errors",
]
