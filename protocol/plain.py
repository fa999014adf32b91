"""msgspec's validation messages, said in plain words.

msgspec explains a refused value the way a type checker would
(``Expected `int | null`, got `str```, ``Expected `int` <= 100``,
``Invalid enum value 'zip'``).  A person reading an error in the playground or
a client's log wants "must be a whole number from 1 to 100, not text".
:func:`plain_message` rewrites the messages msgspec is known to produce; any
other text (the structs' own ``__post_init__`` checks, already written for
people) is kept as it is.  The error's ``code``, ``parameter``, ``min`` and
``max`` are unchanged: clients that read those see no difference.
"""

from __future__ import annotations

import re
from typing import Any

_KINDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
    "bytes": "base64 text",
}
_PATTERNS = {
    "AIR": "an AIR, source:id@version (such as civitai:4384@128713)",
    "UUID": "a UUID (such as 0c3c0c1e-7b0f-4d3a-9d8c-2f8e8b8a7a01)",
}

_GOT = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_BOUND = re.compile(r"^Expected `(?P<kind>int|float)` (?P<op><=|>=|<|>) (?P<value>\S+)$")
_MULTIPLE = re.compile(r"^Expected `(?:int|float)` that's a multiple of (?P<value>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<kind>str|array|object)` of length (?P<op><=|>=) (?P<value>\d+)$")
_REGEX = re.compile(r"^Expected `str` matching regex (?P<regex>.+)$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$")


def _kind(spelled: str) -> str:
    """``int | null`` → ``a whole number`` (null is dropped: leaving the field out is the way to say "none")."""
    parts = [p.strip() for p in spelled.split("|")]
    named = [_KINDS.get(p, p) for p in parts if p != "null"] or ["null"]
    return " or ".join(dict.fromkeys(named))


def _number(text: str) -> str:
    """``0.0`` → ``0``; other numbers as written."""
    return text[:-2] if text.endswith(".0") else text


def _range(bounds: dict[str, Any]) -> str:
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and high is not None:
        return f" from {_number(str(low))} to {_number(str(high))}"
    return ""


def plain_message(msg: str, bounds: dict[str, Any] | None = None, choices: tuple[Any, ...] | None = None,
                  pattern: str | None = None) -> str:
    """``msg`` (one of msgspec's) in plain words; unknown text comes back unchanged.

    ``bounds`` are the field's ``min``/``max`` where known, ``choices`` the
    values a literal field accepts, ``pattern`` a name from :data:`_PATTERNS`
    for a field whose regex means something to people.
    """
    bounds = bounds or {}
    if m := _GOT.match(msg):
        want = _kind(m["want"])
        span = _range(bounds) if m["want"].split("|")[0].strip() in ("int", "float") else ""
        got = "a number with a fraction" if m["got"] == "float" and "float" not in m["want"] else _kind(m["got"])
        return f"must be {want}{span}, not {got}"
    if m := _BOUND.match(msg):
        noun = "a whole number" if m["kind"] == "int" else "a number"
        value = _number(m["value"])
        if _range(bounds) and m["op"] in ("<=", ">="):
            return f"must be {noun}{_range(bounds)}"
        words = {"<=": "at most", ">=": "at least", "<": "less than", ">": "greater than"}[m["op"]]
        return f"must be {words} {value}"
    if m := _MULTIPLE.match(msg):
        return f"must be a multiple of {_number(m['value'])}{' (and' + _range(bounds) + ')' if _range(bounds) else ''}"
    if m := _LENGTH.match(msg):
        n = int(m["value"])
        if m["kind"] == "str":
            if m["op"] == ">=" and n == 1:
                return "must not be empty"
            return f"must be {'at most' if m['op'] == '<=' else 'at least'} {n} character{'s' if n != 1 else ''} long"
        things = "item" if m["kind"] == "array" else "field"
        return f"must hold {'at most' if m['op'] == '<=' else 'at least'} {n} {things}{'s' if n != 1 else ''}"
    if m := _REGEX.match(msg):
        return f"must be {_PATTERNS[pattern]}" if pattern in _PATTERNS else "is not in the form this field takes"
    if m := _ENUM.match(msg):
        if choices:
            return f"must be one of {', '.join(str(c) for c in choices)} (got {m['value']})"
        return f"{m['value']} is not one of the values this field takes"
    return msg
