"""Frame decoding and encoding.

A client frame is a JSON array of task objects, each answered on its own: one
bad task never spoils its neighbours.  :func:`decode_frame` therefore decodes
the array first and each element second, and returns one
:class:`DecodedTask` per element, holding either a typed task or the
:class:`WireError` to send back.  A frame that is not a JSON array at all
yields a single frame-level error.

Server frames are ``{"data": [...]}`` or ``{"errors": [...]}``, never both,
and each stays under :data:`MAX_OUT_FRAME_BYTES` (the 1.8 SDK's websockets
client refuses frames over 1 MiB) unless a single item is itself larger.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import msgspec

from protocol.common import UUID_PATTERN, LenientTask, Task
from protocol.errors import ErrorCode, WireError, wire_error
from protocol.inference import ImageInference, ImageUpload
from protocol.media import AccountManagement, MediaStorage
from protocol.models import AIR_PATTERN, ModelDelete, ModelSearch, ModelUpload
from protocol.plain import plain_message
from protocol.preprocess import ControlNetPreprocess, ImageControlNetPreProcess
from protocol.upscale import ImageUpscale, Upscale
from protocol.session import Authentication, GetResponse, GetTaskDetails, Ping
from protocol.training import TaskCancel, Training

MAX_OUT_FRAME_BYTES = 1_000_000
"""Budget for one server frame: under the 1 MiB (1,048,576 B) the 1.8 SDK accepts."""

TASK_TYPES: dict[str, type[Task] | type[LenientTask]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Authentication, Ping, ImageInference, ImageUpload, GetResponse, GetTaskDetails, ModelUpload, ModelSearch, Training, TaskCancel,
        ModelDelete, ImageControlNetPreProcess, ControlNetPreprocess, ImageUpscale, Upscale, MediaStorage, AccountManagement,
    )
}
"""taskType → struct, for every task this protocol version decodes."""

_UUID_RE = re.compile(UUID_PATTERN)
_ERROR_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD_RE = re.compile(r"field `(?P<field>[^`]+)`")
_INDEX_RE = re.compile(r"\[\d+\]")
_KIND_RE = re.compile(r"Expected `(str|array)`")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class DecodedTask:
    """One element of a client frame, decoded.

    Exactly one of ``task`` and ``error`` is set.  ``task_type`` and
    ``task_uuid`` are whatever the element carried (when they were strings),
    so that an error can be routed even when the task itself was invalid.
    ``raw`` is the element as received, kept for getTaskDetails.
    """

    index: int
    task: Task | LenientTask | None
    error: WireError | None
    task_type: str | None
    task_uuid: str | None
    raw: Any


def _type_bounds(t: Any) -> dict[str, Any]:
    """``min``/``max`` of one msgspec type: a number's range, a string's or list's length."""
    if isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        bounds = {"min": t.ge, "max": t.le}
    elif isinstance(t, (msgspec.inspect.StrType, msgspec.inspect.ListType)):
        bounds = {"min": t.min_length, "max": t.max_length}
    else:
        return {}
    return {k: v for k, v in bounds.items() if v is not None}


def _constraints(cls: type) -> dict[str, dict[str, Any]]:
    """Read bounds off a struct's fields, keyed by wire path.

    Nested structs and lists are walked, so ``lora[].weight`` (a list index
    written ``[]``) has its range too.  A number's range wins over a string's
    or list's length where a field's union has both; a string's and a list's
    lengths are also kept as ``path#str`` and ``path#array``, for the error
    that says which one it expected.
    """
    found: dict[str, dict[str, Any]] = {}

    def walk(info: Any, prefix: str, seen: frozenset[type]) -> None:
        for field in getattr(info, "fields", ()):
            visit(field.type, f"{prefix}{field.encode_name}", seen, field.default)

    def visit(t: Any, path: str, seen: frozenset[type], default: Any = msgspec.NODEFAULT) -> None:
        types = [t]
        while types:
            t = types.pop()
            if isinstance(t, msgspec.inspect.UnionType):
                types.extend(t.types)
                continue
            if isinstance(t, msgspec.inspect.Metadata):
                types.append(t.type)
                continue
            if isinstance(t, msgspec.inspect.ListType):
                visit(t.item_type, f"{path}[]", seen)
            elif isinstance(t, msgspec.inspect.StructType) and t.cls not in seen:
                walk(t, f"{path}.", seen | {t.cls})
            if isinstance(t, msgspec.inspect.LiteralType):
                found.setdefault(f"{path}#enum", {})["values"] = (*found.get(f"{path}#enum", {}).get("values", ()), *t.values)
            if isinstance(t, msgspec.inspect.StrType) and t.pattern in _PATTERN_NAMES:
                found[f"{path}#pattern"] = {"name": _PATTERN_NAMES[t.pattern]}
            bounds = _type_bounds(t)
            numeric = isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType))
            if bounds and not numeric:
                found[f"{path}#{'str' if isinstance(t, msgspec.inspect.StrType) else 'array'}"] = dict(bounds)
            if bounds and (numeric or path not in found):
                found[path] = bounds
                if not isinstance(default, msgspec.UnsetType | type(msgspec.NODEFAULT)) and default is not None:
                    found[path]["default"] = default

    walk(msgspec.inspect.type_info(cls), "", frozenset({cls}))
    return found


_PATTERN_NAMES = {AIR_PATTERN: "AIR", UUID_PATTERN: "UUID"}
_BOUNDS: dict[str, dict[str, dict[str, Any]]] = {tag: _constraints(cls) for tag, cls in TASK_TYPES.items()}


def validation_error(exc: msgspec.ValidationError, task_type: str) -> WireError:
    """Turn msgspec's ``... - at `$.path``` message into a Runware-style error.

    The path becomes ``parameter``; a missing or unknown field is named as the
    parameter itself; a broken range carries its ``min``/``max``.
    """
    text = str(exc)
    match = _ERROR_RE.match(text)
    msg = match.group("msg") if match else text
    path = (match.group("path") or "") if match else ""
    path = path.lstrip(".")
    field = _FIELD_RE.search(msg)
    if msg.startswith("Object missing required field") and field:
        parameter = f"{path}.{field.group('field')}" if path else field.group("field")
        return wire_error(ErrorCode.MISSING_PARAMETER, f"Missing required parameter `{parameter}`", parameter=parameter)
    if msg.startswith("Object contains unknown field") and field:
        parameter = f"{path}.{field.group('field')}" if path else field.group("field")
        return wire_error(
            ErrorCode.UNKNOWN_PARAMETER,
            f"Unknown parameter `{parameter}` for taskType {task_type}",
            parameter=parameter,
        )
    if path == "taskUUID":
        return wire_error(ErrorCode.INVALID_TASK_UUID, "taskUUID must be a UUID string", parameter="taskUUID")
    known = _BOUNDS.get(task_type, {})
    key = _INDEX_RE.sub("[]", path)
    kind = _KIND_RE.match(msg)
    bounds = known.get(f"{key}#{kind.group(1)}", {}) if kind else {}
    bounds = bounds or known.get(key, {})
    choices = known.get(f"{key}#enum", {}).get("values")
    pattern = known.get(f"{key}#pattern", {}).get("name")
    label = path or "task"
    words = plain_message(msg, bounds, choices, pattern)
    return wire_error(ErrorCode.INVALID_PARAMETER, f"Invalid value for `{label}`: {words}", parameter=label, **bounds)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Unpaired(dict):  # type: ignore[type-arg]
    """A task object that held text with an unpaired UTF-16 surrogate, scrubbed.

    The standard-library parser (the fallback of :func:`_parse`) admits a lone
    ``\\ud800`` escape; such a string can be neither encoded back to a client
    nor stored.  The element keeps its shape with each one replaced by U+FFFD
    (so its taskType and taskUUID can still route an error), and ``path``
    names the first field that held one: the task is refused with
    ``invalidParameter`` there.
    """

    path: str = ""


def _scrub(value: Any, path: str, found: list[str]) -> Any:
    """``value`` with every lone surrogate replaced by U+FFFD; the path of each string that had one goes to ``found``."""
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value) is None:
            return value
        found.append(path)
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = _scrub(k, path, found) if _LONE_SURROGATE.search(k) else k
            out[key] = _scrub(v, f"{path}.{key}" if path else key, found)
        return out
    return value


def lone_surrogate_path(value: Any) -> str | None:
    """The path of the first string in ``value`` holding an unpaired surrogate (``""``: ``value`` itself), or None.

    For JSON read by the standard-library parser elsewhere (the REST
    dialects' bodies): such text cannot be encoded again, so refuse it with
    ``invalidParameter`` at this path, as :func:`decode_frame` does.
    """
    found: list[str] = []
    _scrub(value, "", found)
    return found[0] if found else None


def _mark_unpaired(element: Any) -> Any:
    """An element of a frame the fallback parser read: as is, or scrubbed (see :class:`_Unpaired`)."""
    found: list[str] = []
    clean = _scrub(element, "", found)
    if not found:
        return element
    if not isinstance(clean, dict):
        return clean  # not a task object: refused as such, nothing of it is echoed
    marked = _Unpaired(clean)
    marked.path = found[0] or "task"
    return marked


def _decode_element(index: int, element: Any) -> DecodedTask:
    if not isinstance(element, dict):
        err = wire_error(ErrorCode.INVALID_TASK, f"task {index} is not a JSON object", taskIndex=index)
        return DecodedTask(index, None, err, None, None, element)
    task_type = element.get("taskType")
    task_uuid = element.get("taskUUID")
    task_type = task_type if isinstance(task_type, str) else None
    task_uuid = task_uuid if isinstance(task_uuid, str) else None

    def fail(err: WireError) -> DecodedTask:
        err = msgspec.structs.replace(err.for_task(task_type, task_uuid), taskIndex=index)
        return DecodedTask(index, None, err, task_type, task_uuid, element)

    if isinstance(element, _Unpaired):
        return fail(
            wire_error(
                ErrorCode.INVALID_PARAMETER,
                f"`{element.path}` holds an unpaired UTF-16 surrogate (a lone \\ud800-\\udfff escape), which is not text",
                parameter=element.path,
            )
        )
    if task_type is None:
        return fail(wire_error(ErrorCode.MISSING_PARAMETER, "every task needs a string `taskType`", parameter="taskType"))
    cls = TASK_TYPES.get(task_type)
    if cls is None:
        return fail(
            wire_error(
                ErrorCode.UNSUPPORTED_TASK_TYPE,
                f"taskType `{task_type[:64]}` is not supported; supported: {', '.join(sorted(TASK_TYPES))}",
                parameter="taskType",
            )
        )
    try:
        task = msgspec.convert(element, cls)
    except msgspec.ValidationError as exc:
        return fail(validation_error(exc, task_type))
    check = getattr(task, "check", None)
    if check is not None:
        err = check()
        if err is not None:
            return fail(err)
    return DecodedTask(index, task, None, task_type, task_uuid, element)


def _parse(frame: bytes | str) -> Any:
    """JSON → Python objects, or a frame-level :class:`WireError`.

    msgspec is the fast path.  It refuses some valid JSON (numbers beyond
    float range such as ``1e400``, lone surrogate escapes); the standard
    library parser then gets a second look so each task can still be
    answered under its own taskUUID; a task holding a lone surrogate comes
    back marked (see :class:`_Unpaired`).  Invalid UTF-8 is a malformed frame.
    """
    try:
        return _decoder.decode(frame)
    except RecursionError:
        return wire_error(ErrorCode.INVALID_FRAME, "frame is nested too deeply")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        first = exc
    try:
        parsed = json.loads(frame)
        return [_mark_unpaired(e) for e in parsed] if isinstance(parsed, list) else _mark_unpaired(parsed)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return wire_error(ErrorCode.INVALID_FRAME, f"frame is not valid JSON: {str(first)[:200]}")


def parse_frame(frame: bytes | str) -> list[Any] | WireError:
    """The elements of one client frame, not yet decoded into tasks.

    Split from :func:`decode_frame` so that a caller can look at how many
    elements there are (and whether one is an authentication) before paying
    for a typed decode of each: work then grows with what a limit allows,
    not with what a peer sends.
    """
    elements = _parse(frame)
    if isinstance(elements, WireError):
        return elements
    if not isinstance(elements, list):
        return wire_error(ErrorCode.INVALID_FRAME, "a frame must be a JSON array of task objects")
    if not elements:
        return wire_error(ErrorCode.INVALID_FRAME, "a frame must hold at least one task")
    return elements


def decode_elements(elements: list[Any]) -> list[DecodedTask]:
    """One :class:`DecodedTask` per element of a parsed frame, in order."""
    return [_decode_element(i, e) for i, e in enumerate(elements)]


def decode_frame(frame: bytes | str) -> list[DecodedTask] | WireError:
    """Decode one client frame.

    Returns a list with one :class:`DecodedTask` per element, in order, or a
    single :class:`WireError` when the frame is not a non-empty JSON array.
    """
    elements = parse_frame(frame)
    if isinstance(elements, WireError):
        return elements
    return decode_elements(elements)


def element_head(element: Any) -> tuple[str | None, str | None]:
    """An element's (taskType, taskUUID) where they are strings, for routing an error to it."""
    if not isinstance(element, dict):
        return None, None
    t, u = element.get("taskType"), element.get("taskUUID")
    return (t if isinstance(t, str) else None, u if isinstance(u, str) else None)


def task_heads(frame: bytes | str | list[Any]) -> list[tuple[str | None, str | None]]:
    """Best-effort (taskType, taskUUID) pairs of a frame (raw, or already parsed), for refusing it whole."""
    elements = frame if isinstance(frame, list) else _parse(frame)
    if not isinstance(elements, list):
        return []
    return [element_head(e) for e in elements if isinstance(e, dict)]


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.match(value))


def _pack_iter(key: bytes, encoded: Iterable[bytes], limit: int) -> Iterator[bytes]:
    chunk: list[bytes] = []
    size = 0
    overhead = len(key) + 6  # {"key":[ ... ]}
    for item in encoded:
        if chunk and size + len(item) + 1 + overhead > limit:
            yield b"{\"" + key + b"\":[" + b",".join(chunk) + b"]}"
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield b"{\"" + key + b"\":[" + b",".join(chunk) + b"]}"


def _pack(key: bytes, encoded: Iterable[bytes], limit: int) -> list[bytes]:
    return list(_pack_iter(key, encoded, limit))


def iter_frames(items: Sequence[Any], errors: Sequence[WireError] = (), limit: int = MAX_OUT_FRAME_BYTES) -> Iterable[bytes]:
    """The frames of :func:`encode_data` then :func:`encode_errors`, encoded one at a time as they are taken.

    A reply that repeats a large result (a frame of getResponse tasks for one
    20-image base64 task) then costs one frame of memory at a time, not the
    whole reply: the writer takes the next frame only when the client has
    room for it.  The commonest reply, one item, is one frame whatever its
    size: it is encoded at once, without the generators.
    """
    if len(items) == 1 and not errors:
        return (b'{"data":[' + _encoder.encode(items[0]) + b"]}",)
    return _iter_frames(items, errors, limit)


def _iter_frames(items: Sequence[Any], errors: Sequence[WireError], limit: int) -> Iterator[bytes]:
    yield from _pack_iter(b"data", (_encoder.encode(i) for i in items), limit)
    yield from _pack_iter(b"errors", (_encoder.encode(e) for e in errors), limit)


def encode_data(items: Sequence[Any], limit: int = MAX_OUT_FRAME_BYTES) -> list[bytes]:
    """Encode data items into as few ``{"data": [...]}`` frames as fit the limit.

    An item larger than the limit on its own still goes out, alone in its frame.
    """
    return _pack(b"data", (_encoder.encode(i) for i in items), limit)


def encode_errors(errors: Sequence[WireError], limit: int = MAX_OUT_FRAME_BYTES) -> list[bytes]:
    """Encode errors into ``{"errors": [...]}`` frames (never mixed with data)."""
    return _pack(b"errors", (_encoder.encode(e) for e in errors), limit)


def encode_item(item: Any) -> bytes:
    return _encoder.encode(item)


def to_builtins(item: Any) -> Any:
    """A struct as plain dicts/lists, as it appears on the wire."""
    return msgspec.to_builtins(item)
