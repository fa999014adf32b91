"""Plain JSON values → a dialect's msgspec request type, failures as :class:`DialectError`.

msgspec's message is kept (it names the field and what was expected); its
path (``at `$.loras[0].strength```) or the unknown field becomes
``parameter`` in the dialect's own names, so each dialect's error shape can
point at the field.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from server.dialects.errors import DialectError

T = TypeVar("T")
_PATH = re.compile(r"at `\$(?:\.|(?=\[))?(?P<path>[^`]*)`")
_FIELD = re.compile(r"(?:unknown|required) field `(?P<field>[^`]*)`")


def decode(value: Any, kind: type[T], prefix: str = "") -> T:
    """``value`` as ``kind``; ``prefix`` is where ``value`` sits in the request (e.g. ``request``)."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = (m["path"] if (m := _PATH.search(text)) else "")
        field = m["field"] if (m := _FIELD.search(text)) else ""
        parts = [p for p in (prefix, path) if p]
        parameter = ".".join(parts)
        if field:
            parameter = f"{parameter}.{field}" if parameter else field
        code = "missingParameter" if "required field" in text else "unknownParameter" if "unknown field" in text else "invalidParameter"
        raise DialectError(code, text, parameter=parameter or None) from None
