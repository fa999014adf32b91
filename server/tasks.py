"""Every task the server accepted, by team and taskUUID.

This is what makes ``conflictTaskUUID``, ``getResponse`` and
``getTaskDetails`` work across all sessions of one team (the 0.5 and JS SDKs
reconnect as a new session and poll by the original taskUUID) and never
across teams: a foreign taskUUID looks exactly like a missing one.  Records
are kept ``retention_s`` after they finish (README: one hour by default).
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import msgspec

from protocol.errors import WireError

if TYPE_CHECKING:
    from server.journal import TaskJournal

_MAX_KEPT_STRING = 4096
INLINE_IMAGE_FIELDS = ("imageBase64Data", "imageDataURI")
_INLINED = "wispInlined"
"""Journal-only key: which inline image fields an item had (their bytes are in the image store, not the journal)."""

InlineLoader = Callable[[str], "tuple[bytes, str] | None"]
"""imageUUID → (bytes, mime) of a stored image, or None when it is gone."""


def _journal_items(items: list[Any]) -> list[Any]:
    """Items as the journal keeps them: base64 images replaced by a note of which fields to rebuild.

    A 20-image base64 result is ~34 MB of text; the same images are already
    files in the image store, so the journal keeps their imageUUIDs only.
    """
    if not any(_inlines(item) for item in items):
        return items  # the usual case (URLs): the structs as they are, encoded once by the journal
    out = []
    for item in msgspec.to_builtins(items):
        if isinstance(item, dict) and item.get("imageUUID") and _inlines(item):
            inlined = [f for f in INLINE_IMAGE_FIELDS if f in item]
            item = {k: v for k, v in item.items() if k not in INLINE_IMAGE_FIELDS}
            item[_INLINED] = inlined
        out.append(item)
    return out


def _inlines(item: Any) -> bool:
    """Whether a result item (a wire struct, or a plain dict read back) carries an inline image."""
    if isinstance(item, dict):
        return any(f in item for f in INLINE_IMAGE_FIELDS)
    return any(getattr(item, f, None) for f in INLINE_IMAGE_FIELDS)


def _rebuilt_items(items: list[Any], load: InlineLoader | None) -> list[Any]:
    """The journal's items with their inline images read back from the store (fields dropped if the image is gone)."""
    out = []
    for item in items:
        if isinstance(item, dict) and _INLINED in item:
            item = dict(item)
            fields = item.pop(_INLINED)
            found = load(item["imageUUID"]) if load is not None else None
            if found is not None:
                data, mime = found
                encoded = base64.b64encode(data).decode("ascii")
                for name in fields:
                    item[name] = encoded if name == "imageBase64Data" else f"data:{mime};base64,{encoded}"
        out.append(item)
    return out


def _trim(value: Any) -> Any:
    """The request as received, with huge strings (base64 images) elided."""
    if isinstance(value, str) and len(value) > _MAX_KEPT_STRING:
        return f"<{len(value)} characters omitted>"
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trim(v) for v in value]
    return value


_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder()
_JSON_ITEM = msgspec.json.Decoder()
_JSON = msgspec.json.Encoder()


class TaskRecord:
    """One accepted task: who sent it, what it asked, how far it got and what it gave.

    Finished records stay for ``retention_s`` (an hour by default), and a busy server answers tens of thousands of
    searches an hour.  Kept as they were (the request's dicts, the result structs and their lists, ~19 objects a
    search), every full collection of the garbage collector walked them all, and that grew to half of a search's
    CPU (bench/RESULTS.md, "Task records packed").  So :meth:`pack` keeps a finished query's (``durable=False``)
    request and items as one MessagePack ``bytes`` the collector never looks into; reading them back (getResponse,
    getTaskDetails, the dialects) decodes plain dicts and lists, exactly what a record read from the journal after
    a restart holds.  Work records (images, uploads, trainings) are few and are not packed: their items may hold
    base64 images, and every getResponse of a packed one would decode a fresh copy (64 polls of a 0.5 MB result
    queued on a socket that does not read would hold 64 copies; shared items are encoded frame by frame).
    """

    __slots__ = ("team", "task_uuid", "task_type", "session_uuid", "created_at", "started_at", "progress", "finished_at",
                 "errors", "durable", "_request", "_items", "_packed", "_encoded")  # fmt: skip

    def __init__(self, team: str, task_uuid: str, task_type: str, request: Any, session_uuid: str, durable: bool = True) -> None:
        self.team = team
        self.task_uuid = task_uuid
        self.task_type = task_type
        self.session_uuid = session_uuid
        self.durable = durable
        self.created_at = time.monotonic()
        self.started_at: float | None = None
        """When the device took the task from the queue (imageInference; None: still queued, or not tracked)."""
        self.progress = 0.0
        """Share of the denoising steps done (imageInference), for the dialects' progress fields."""
        self.finished_at: float | None = None
        self.errors: Sequence[WireError] = ()
        self._request: Any = request
        self._items: list[Any] = []
        self._packed: bytes | None = None
        self._encoded: Any = None
        """A query's one item as the wire got it, its bytes shared with other answers (:meth:`succeed_encoded`)."""

    @property
    def request(self) -> Any:
        """The request as received, huge strings elided (plain data)."""
        return self._request if self._packed is None else _UNPACK.decode(self._packed)[0]

    @property
    def items(self) -> list[Any]:
        """What the task gave: wire structs while it runs, plain dicts once packed or read from the journal."""
        if self._encoded is not None:
            return [_JSON_ITEM.decode(_JSON.encode(self._encoded))]
        return self._items if self._packed is None else _UNPACK.decode(self._packed)[1]

    @items.setter
    def items(self, value: list[Any]) -> None:
        if self._packed is not None:
            self._request, self._packed = self.request, None
        self._items, self._encoded = value, None

    def pack(self) -> None:
        """A finished query: keep the request and items as one ``bytes`` from now on (they no longer change)."""
        if self._packed is None and not self.durable:
            try:
                items = None if self._encoded is not None else self._items  # already JSON: not packed again
                packed = _PACK.encode((self._request, items))
                if len(packed) > _MAX_KEPT_STRING:  # a query's request is kept untrimmed until now (claim)
                    packed = _PACK.encode((_trim(self._request), items))
            except (TypeError, ValueError):  # something not plain data: keep it as it is
                return
            self._packed = packed
            self._request = self._items = None  # type: ignore[assignment]

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        return "processing" if self.finished_at is None else "success"

    def start(self, at: float | None = None) -> None:
        """The work began (``at``: when, by ``time.monotonic()``, if the engine said; else now)."""
        if self.started_at is None:
            self.started_at = time.monotonic() if at is None else at

    def succeed(self, items: list[Any]) -> None:
        self.items = items
        self.finished_at = time.monotonic()

    def succeed_encoded(self, item: Any) -> None:
        """A query (``durable=False``) that gave one item whose bulk is already JSON (``msgspec.Raw`` fields) shared
        with every answer to the same search: the record keeps that item, not a copy (a search's results are ~2 KB,
        and an hour of searches is many), and reads it back as the plain dicts a packed record gives."""
        self._items, self._encoded = [], item
        self.finished_at = time.monotonic()

    def fail(self, error: WireError) -> None:
        self.errors = [error]
        self.finished_at = time.monotonic()


class TaskStore:
    """In memory for speed; mirrored to the :class:`~server.journal.TaskJournal` when given one."""

    def __init__(self, retention_s: float, journal: "TaskJournal | None" = None, inline_loader: InlineLoader | None = None) -> None:
        self.retention_s = retention_s
        self.journal = journal
        self.inline_loader = inline_loader
        self._journaled = journal.keys(retention_s) if journal is not None else set()
        """Tasks journaled before this process started: only those are ever looked up in SQLite (new taskUUIDs are
        claimed without a database read on the event loop)."""
        self._records: dict[tuple[str, str], TaskRecord] = {}

    def claim(
        self, team: str, task_uuid: str, task_type: str, request: Any, session_uuid: str, durable: bool = True
    ) -> TaskRecord | None:
        """Register a new task; None if the team already has one with that taskUUID.

        ``durable=False`` (queries such as modelSearch, answered in milliseconds)
        keeps the record in memory only: journaling it would cost more than the
        query itself and nothing of it needs to survive a restart.
        """
        key = (team, task_uuid.lower())
        existing = self._records.get(key)
        if existing is None and durable:
            existing = self._from_journal(team, task_uuid)
        if existing is not None and not self._expired(existing, time.monotonic()):
            return None
        # A query's request is trimmed only if it turns out big when packed (finish): searches are small, and a
        # microsecond each is a share of one worth saving.
        record = TaskRecord(team, task_uuid, task_type, _trim(request) if durable else request, session_uuid, durable=durable)
        self._records[key] = record
        if self.journal is not None and durable:
            self.journal.claimed(team, task_uuid, task_type, record.request)
        return record

    def finish(self, record: TaskRecord) -> None:
        """Persist a task's outcome, or pack a query's record (call after ``succeed`` or ``fail``)."""
        if self.journal is not None and record.durable:
            self.journal.finished(
                record.team, record.task_uuid, record.status, _journal_items(record.items), record.errors
            )
        record.pack()

    def release(self, record: TaskRecord) -> None:
        """Forget a task refused before it started, so its taskUUID can be sent again."""
        key = (record.team, record.task_uuid.lower())
        if self._records.get(key) is record:
            del self._records[key]
            if self.journal is not None and record.durable:
                self.journal.released(record.team, record.task_uuid)

    def get(self, team: str, task_uuid: str) -> TaskRecord | None:
        record = self._records.get((team, task_uuid.lower()))
        if record is None:
            record = self._from_journal(team, task_uuid)
        if record is None or self._expired(record, time.monotonic()):
            return None
        return record

    def newest_with(self, team: str, task_type: str, field: str, value: str) -> TaskRecord | None:
        """``team``'s newest journaled ``task_type`` whose request has ``field`` = ``value`` (None: none kept)."""
        if self.journal is None:
            return None
        task_uuid = self.journal.newest_with(team, task_type, field, value)
        return None if task_uuid is None else self.get(team, task_uuid)

    def _from_journal(self, team: str, task_uuid: str) -> TaskRecord | None:
        """A task from before this process started (items come back as plain dicts)."""
        if self.journal is None or (team, task_uuid.lower()) not in self._journaled:
            return None
        row = self.journal.load(team, task_uuid)
        if row is None:
            return None
        record = TaskRecord(team, task_uuid, row["task_type"], row["request"], "")
        record.items = _rebuilt_items(row["items"], self.inline_loader)
        record.errors = [msgspec.convert(e, WireError) for e in row["errors"]]
        if row["finished_at"] is not None:
            record.finished_at = time.monotonic() - max(0.0, time.time() - row["finished_at"])
        return record

    def _expired(self, record: TaskRecord, now: float) -> bool:
        return record.finished_at is not None and now - record.finished_at > self.retention_s

    def prune(self) -> int:
        now = time.monotonic()
        dead = [k for k, r in self._records.items() if self._expired(r, now)]
        for k in dead:
            del self._records[k]
        if self.journal is not None:
            self.journal.prune(self.retention_s)
        return len(dead)

    def __len__(self) -> int:
        return len(self._records)
