"""AIR source names: which are reserved, and how a team gets its default one.

A source (the ``source`` of ``source:id@version``) belongs to one team.  Every
team has a default source from the moment it exists, so a fresh install's
first upload has somewhere to go without a shell step: it is named after the
team (slugged) when that name is free, else ``<name>-2``, ``-3``, ….  This
module sits below the key store (which creates teams) and the model registry,
so both can use it without importing each other.
"""

from __future__ import annotations

import re
import sqlite3

from engine.errors import EngineError
from protocol.errors import ErrorCode

RESERVED_SOURCES = frozenset({"wisp"})
"""Sources no team may hold (``wisp`` names the built-in models)."""

SOURCE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""What a source name may be: the ``source`` part of an AIR."""


class ReservedSource(EngineError):
    """A reserved source name (``wisp``) was asked for."""

    code = ErrorCode.SOURCE_NOT_ALLOWED


def check_source_name(name: str) -> None:
    """Raise :class:`ReservedSource` for a name no team may hold."""
    if name in RESERVED_SOURCES:
        raise ReservedSource(f"the source {name!r} is reserved for wisp's built-in models", parameter="air")


def slug(team: str) -> str:
    """A source-shaped name derived from a team name (``"team"`` when nothing usable is left)."""
    text = re.sub(r"[^a-z0-9_-]+", "-", team.lower()).strip("-_")[:56]
    return text if text and SOURCE_RE.fullmatch(text) else "team"


def claim_default_source(conn: sqlite3.Connection, team_id: int, team: str) -> str:
    """Give team ``team_id`` a default source (its name, or the next free variant) and record it; returns the name.

    A source the team already owns under the wanted name is taken as it is.
    Runs on the caller's connection, so it joins the caller's transaction
    where there is one.
    """
    base = slug(team)
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        if name in RESERVED_SOURCES:
            continue
        owner = conn.execute("SELECT team_id FROM sources WHERE name=?", (name,)).fetchone()
        if owner is None:
            try:
                conn.execute("INSERT INTO sources(name, team_id) VALUES (?, ?)", (name, team_id))
            except sqlite3.IntegrityError:  # taken between the read and the write: look again
                owner = conn.execute("SELECT team_id FROM sources WHERE name=?", (name,)).fetchone()
            else:
                owner = (team_id,)
        if owner is not None and int(owner[0]) == team_id:
            conn.execute(
                "INSERT INTO team_settings(team_id, default_source) VALUES (?, ?) "
                "ON CONFLICT(team_id) DO UPDATE SET default_source=excluded.default_source",
                (team_id, name),
            )
            return name
    raise EngineError("no free source name for this team; an admin can set one with `wisp teams set --default-source`")
