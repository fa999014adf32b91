"""Sources and uploaded models in SQLite.

A source (the ``source`` of ``source:id@version``) belongs to one team; only
that team may upload under it.  ``wisp`` names the built-in models and is
reserved: it cannot be created, and a ``wisp`` row an older version let in
grants nothing and lists nothing.  An AIR is unique across all teams (the
``models.air`` column is), so no two teams can publish the same one.  A model row points at a content-addressed
file by SHA-256; the row is written only after the file is in the store.
Privacy is enforced here, in the queries: a private model of another team is
never returned, so it looks exactly like a missing one everywhere.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from engine.errors import EngineError
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.sources import RESERVED_SOURCES as RESERVED_SOURCES
from protocol.errors import ErrorCode
from engine.registry.sources import ReservedSource as ReservedSource
from engine.registry.sources import check_source_name as check_source_name

USD_PER_GB_MONTH = 0.05

_NOT_RESERVED = f"m.source NOT IN ({', '.join(repr(s) for s in sorted(RESERVED_SOURCES))})"


class NotYourModel(EngineError):
    """A model another team uploaded (and published) was asked to be deleted."""

    code = ErrorCode.SOURCE_NOT_ALLOWED


@dataclass
class ModelRow:
    air: str
    team: str
    category: str
    architecture: str
    format: str
    name: str
    version: str
    unique_identifier: str
    sha256: str
    size_bytes: int
    private: bool
    type: str | None = None
    conditioning: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """defaults, tags, trigger words, descriptions, hero image: what search shows."""

    @property
    def tags(self) -> list[str]:
        return list(self.meta.get("tags") or [])


@dataclass(frozen=True)
class UsageLine:
    team: str
    bytes_now: int
    gb_now: int
    daily_cost_usd: float
    gb_days: int
    cost_to_date_usd: float


def _row(r: Any) -> ModelRow:
    return ModelRow(
        air=r["air"], team=r["team"], category=r["category"], architecture=r["architecture"], format=r["format"],
        name=r["name"], version=r["version"], unique_identifier=r["unique_identifier"], sha256=r["sha256"],
        size_bytes=r["size_bytes"], private=bool(r["private"]), type=r["type"], conditioning=r["conditioning"],
        meta=json.loads(r["meta"]),
    )


_SELECT = "SELECT m.*, t.name AS team FROM models m JOIN teams t ON t.id = m.team_id"


class ModelRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.keys = KeyStore(db)
        self.on_change: list[Callable[[], None]] = []
        """Called after every committed write to the model rows (in-memory views drop what they hold)."""

    def version(self) -> int:
        """A counter every write to the model rows bumps, in its transaction: how another process's writes are noticed."""
        return int(self.db.connect().execute("SELECT value FROM registry_version WHERE id = 1").fetchone()[0])

    # ---- sources ----------------------------------------------------------

    def create_source(self, name: str, team: str) -> None:
        """Give ``team`` the source ``name``; a no-op when it already has it (a new team comes with its default one).

        Raises ``sqlite3.IntegrityError`` when another team holds it.
        """
        check_source_name(name)
        team_id = self.keys.ensure_team(team)
        conn = self.db.connect()
        owner = conn.execute("SELECT team_id FROM sources WHERE name=?", (name,)).fetchone()
        if owner is not None and int(owner[0]) == team_id:
            return
        conn.execute("INSERT INTO sources(name, team_id) VALUES (?, ?)", (name, team_id))

    def source_team(self, name: str) -> str | None:
        if name in RESERVED_SOURCES:
            return None
        row = self.db.connect().execute(
            "SELECT t.name FROM sources s JOIN teams t ON t.id = s.team_id WHERE s.name = ?", (name,)
        ).fetchone()
        return None if row is None else str(row[0])

    def list_sources(self) -> list[tuple[str, str]]:
        rows = self.db.connect().execute("SELECT s.name, t.name FROM sources s JOIN teams t ON t.id=s.team_id ORDER BY s.name")
        return [(r[0], r[1]) for r in rows]

    # ---- models -----------------------------------------------------------

    def get(self, air: str) -> ModelRow | None:
        """The row for ``air`` whatever its team (callers check visibility)."""
        r = self.db.connect().execute(_SELECT + f" WHERE m.air = ? AND {_NOT_RESERVED}", (air,)).fetchone()
        return None if r is None else _row(r)

    def stored_sha256s(self) -> set[str]:
        """Every file hash a model row points at (what the store must keep)."""
        return {str(r[0]) for r in self.db.connect().execute("SELECT DISTINCT sha256 FROM models")}

    def visible(self, air: str, team: str) -> ModelRow | None:
        row = self.get(air)
        if row is None or (row.private and row.team != team):
            return None
        return row

    def upsert(self, row: ModelRow, guard: Callable[[bool], None] | None = None) -> None:
        """Insert or update by AIR, in one transaction, then record today's storage.

        ``guard(is_new)`` runs inside the write transaction, before the row is
        written, and may raise to refuse it: a limit checked there (the team's
        LoRA quota) holds against concurrent uploads, which a check made before
        the download cannot promise.
        """
        from protocol.models import split_air

        source, key, version = split_air(row.air)
        check_source_name(source)
        now = time.time()
        with self._write() as conn:
            if guard is not None:
                guard(conn.execute("SELECT 1 FROM models WHERE air=?", (row.air,)).fetchone() is None)
            team_id = conn.execute("SELECT id FROM teams WHERE name=?", (row.team,)).fetchone()[0]
            conn.execute(
                """INSERT INTO models(air, source, model_key, air_version, team_id, category, type, architecture,
                       conditioning, format, name, version, unique_identifier, sha256, size_bytes, private, meta,
                       created_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(air) DO UPDATE SET category=excluded.category, type=excluded.type,
                       architecture=excluded.architecture, conditioning=excluded.conditioning, format=excluded.format,
                       name=excluded.name, version=excluded.version, unique_identifier=excluded.unique_identifier,
                       sha256=excluded.sha256, size_bytes=excluded.size_bytes, private=excluded.private,
                       meta=excluded.meta, updated_at=excluded.updated_at""",
                (row.air, source, key, version, team_id, row.category, row.type, row.architecture, row.conditioning,
                 row.format, row.name, row.version, row.unique_identifier, row.sha256, row.size_bytes,
                 int(row.private), json.dumps(row.meta), now, now),
            )
            self._record_usage(conn, team_id)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One registry write: an immediate transaction that bumps ``registry_version`` (other processes' views see
        it) and commits, or rolls back on any error; then this process's views are told (``on_change``)."""
        conn = self.db.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("UPDATE registry_version SET value = value + 1 WHERE id = 1")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for changed in self.on_change:
            changed()

    def delete(self, air: str, team: str) -> ModelRow:
        """Delete ``team``'s model ``air`` in one transaction; returns the row it had.

        Another team's private model looks missing (:class:`ModelNotFound`),
        as everywhere; another team's public one is :class:`NotYourModel`;
        the built-in source is reserved.
        """
        from engine.errors import ModelNotFound
        from protocol.models import split_air

        check_source_name(split_air(air)[0])
        with self._write() as conn:
            found = conn.execute("SELECT m.*, t.name AS team FROM models m JOIN teams t ON t.id = m.team_id WHERE m.air=?",
                                 (air,)).fetchone()
            row = None if found is None else _row(found)
            if row is None or (row.private and row.team != team):
                raise ModelNotFound(f"no model {air[:200]!r} is available", parameter="air")
            if row.team != team:
                raise NotYourModel(f"{air} belongs to another team; only the team that uploaded it can delete it", parameter="air")
            conn.execute("DELETE FROM models WHERE air=?", (air,))
            self._record_usage(conn, int(found["team_id"]))
        return row

    def refers_to(self, sha256: str) -> bool:
        """True while some model row names these bytes (two AIRs may share one file)."""
        return self.db.connect().execute("SELECT 1 FROM models WHERE sha256=? LIMIT 1", (sha256,)).fetchone() is not None

    def search(
        self,
        team: str,
        *,
        text: str | None = None,
        category: str | None = None,
        type_: str | None = None,
        architectures: tuple[str, ...] | None = None,
        conditioning: str | None = None,
        visibility: str = "all",
        tags: list[str] | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[int, list[ModelRow]]:
        where = ["(m.private = 0 OR t.name = ?)", _NOT_RESERVED]
        args: list[Any] = [team]
        if visibility == "public":
            where.append("m.private = 0")
        elif visibility == "private":
            where.append("m.private = 1 AND t.name = ?")
            args.append(team)
        for column, value in (("m.category", category), ("m.type", type_), ("m.conditioning", conditioning)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if architectures:
            where.append(f"m.architecture IN ({','.join('?' * len(architectures))})")
            args.extend(architectures)
        if text:
            like = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(lower(m.name) LIKE ? ESCAPE '\\' OR lower(m.air) LIKE ? ESCAPE '\\' OR lower(m.meta) LIKE ? ESCAPE '\\')")
            args.extend([like, like, like])
        sql_where = " WHERE " + " AND ".join(where)
        conn = self.db.connect()
        rows = [_row(r) for r in conn.execute(_SELECT + sql_where + " ORDER BY m.updated_at DESC, m.air", args)]
        if tags:
            wanted = set(tags)
            rows = [r for r in rows if wanted <= set(r.tags)]
        return len(rows), rows[offset : offset + limit]

    # ---- storage accounting ------------------------------------------------

    def _record_usage(self, conn: Any, team_id: int) -> None:
        stored = conn.execute(
            "SELECT coalesce(sum(size_bytes), 0) FROM (SELECT DISTINCT sha256, size_bytes FROM models WHERE team_id=?)",
            (team_id,),
        ).fetchone()[0]
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        conn.execute(
            "INSERT INTO storage_usage(team_id, day, bytes) VALUES (?,?,?) "
            "ON CONFLICT(team_id, day) DO UPDATE SET bytes = max(bytes, excluded.bytes)",
            (team_id, day, stored),
        )

    def record_daily_usage(self) -> None:
        """Snapshot every team's stored bytes for today (the server calls this periodically)."""
        conn = self.db.connect()
        for (team_id,) in conn.execute("SELECT DISTINCT team_id FROM models").fetchall():
            self._record_usage(conn, team_id)

    def usage(self) -> list[UsageLine]:
        """Bytes stored per team now, and GB-days to date (each day rounded up to whole GB).

        Per the seed's pricing: daily cost = ceil(GB) × $0.05 / 30.  Two AIRs
        of one team sharing a file count it once.
        """
        self.record_daily_usage()
        conn = self.db.connect()
        lines = []
        for team_id, team in conn.execute("SELECT id, name FROM teams ORDER BY name").fetchall():
            days = conn.execute("SELECT bytes FROM storage_usage WHERE team_id=?", (team_id,)).fetchall()
            if not days:
                continue
            now_bytes = conn.execute(
                "SELECT coalesce(sum(size_bytes),0) FROM (SELECT DISTINCT sha256, size_bytes FROM models WHERE team_id=?)",
                (team_id,),
            ).fetchone()[0]
            gb_now = math.ceil(now_bytes / 1024**3)
            gb_days = sum(math.ceil(b / 1024**3) for (b,) in days)
            lines.append(
                UsageLine(team, now_bytes, gb_now, round(gb_now * USD_PER_GB_MONTH / 30, 4), gb_days,
                          round(gb_days * USD_PER_GB_MONTH / 30, 4))
            )
        return lines

    def files_in_use(self) -> set[str]:
        return {r[0] for r in self.db.connect().execute("SELECT DISTINCT sha256 FROM models")}
