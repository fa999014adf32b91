"""Per-team settings: the LoRA upload quota and the team's default AIR source.

Both live in one ``team_settings`` row per team (absent row = every setting at
its default).  The quota is off unless an admin sets it (``wisp teams set``),
modelled on Novita's "5 LoRA uploads per user": it counts the LoRA and LyCORIS
models a team holds, and only a *new* AIR counts (an update of one the team
already has is not a new upload).  It is checked by the upload ingest, so every
way in (modelUpload, ``PUT /v1/files`` + modelUpload, the REST dialects) meets
the same limit.

The default source is where the REST dialects put models that arrive with a
bare name (stablediffusionapi's ``model_id``): ``<source>:<model_id>@1``.  It is
created on first use, named after the team when that name is free.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError
from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.sources import RESERVED_SOURCES as RESERVED_SOURCES
from engine.registry.sources import check_source_name, claim_default_source

LORA_CATEGORIES = ("lora", "lycoris")


class QuotaExceeded(EngineError):
    code = "quotaExceeded"


@dataclass(frozen=True)
class TeamSettingsRow:
    team: str
    lora_upload_limit: int | None
    lora_models: int
    default_source: str | None


class TeamSettings:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.keys = KeyStore(db)

    # ---- LoRA upload quota -----------------------------------------------

    def lora_upload_limit(self, team: str) -> int | None:
        row = self.db.connect().execute(
            "SELECT s.lora_upload_limit FROM team_settings s JOIN teams t ON t.id = s.team_id WHERE t.name=?", (team,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_lora_upload_limit(self, team: str, limit: int | None) -> None:
        """``None`` turns the quota off (the default)."""
        team_id = self.keys.ensure_team(team)
        self.db.connect().execute(
            "INSERT INTO team_settings(team_id, lora_upload_limit) VALUES (?, ?) "
            "ON CONFLICT(team_id) DO UPDATE SET lora_upload_limit=excluded.lora_upload_limit",
            (team_id, limit),
        )

    def lora_models(self, team: str) -> int:
        marks = ",".join("?" * len(LORA_CATEGORIES))
        return int(self.db.connect().execute(
            f"SELECT count(*) FROM models m JOIN teams t ON t.id = m.team_id WHERE t.name=? AND m.category IN ({marks})",
            (team, *LORA_CATEGORIES),
        ).fetchone()[0])

    def check_lora_upload(self, team: str, category: str, is_new: bool) -> None:
        """Raise :class:`QuotaExceeded` if a new LoRA would take ``team`` past its limit."""
        if category not in LORA_CATEGORIES or not is_new:
            return
        limit = self.lora_upload_limit(team)
        if limit is None:
            return
        held = self.lora_models(team)
        if held >= limit:
            raise QuotaExceeded(
                f"your team may hold at most {limit} LoRA model(s) and holds {held}; "
                "update an existing one (same AIR) or ask an admin to raise the limit (`wisp teams set`)",
                parameter="category",
                max=limit,
            )

    # ---- default source ----------------------------------------------------

    def existing_default_source(self, team: str) -> str | None:
        """The team's default source if it has one (never creates it)."""
        row = self.db.connect().execute(
            "SELECT s.default_source FROM team_settings s JOIN teams t ON t.id = s.team_id WHERE t.name=?", (team,)
        ).fetchone()
        return None if row is None or not row[0] or row[0] in RESERVED_SOURCES else str(row[0])

    def default_source(self, team: str) -> str:
        """The team's default source; a team without one (made before wisp gave every team one) gets it now."""
        conn = self.db.connect()
        team_id = self.keys.ensure_team(team)
        row = conn.execute("SELECT default_source FROM team_settings WHERE team_id=?", (team_id,)).fetchone()
        if row is not None and row[0] and row[0] not in RESERVED_SOURCES:  # a reserved one an older version set is replaced
            return str(row[0])
        return claim_default_source(conn, team_id, team)

    def ensure_default_sources(self) -> int:
        """Give every team that lacks one its default source (a database from before teams had them); returns how many."""
        rows = self.db.connect().execute(
            "SELECT t.name FROM teams t LEFT JOIN team_settings s ON s.team_id = t.id "
            "WHERE s.default_source IS NULL OR s.default_source = ''"
        ).fetchall()
        for (team,) in rows:
            self.default_source(team)
        return len(rows)

    def set_default_source(self, team: str, source: str) -> None:
        """Point the team's default at ``source`` (which must be one of its sources, never a reserved one)."""
        check_source_name(source)
        team_id = self.keys.ensure_team(team)
        self.db.connect().execute(
            "INSERT INTO team_settings(team_id, default_source) VALUES (?, ?) "
            "ON CONFLICT(team_id) DO UPDATE SET default_source=excluded.default_source",
            (team_id, source),
        )

    def list(self) -> list[TeamSettingsRow]:
        rows = self.db.connect().execute(
            "SELECT t.name, s.lora_upload_limit, s.default_source FROM teams t "
            "LEFT JOIN team_settings s ON s.team_id = t.id ORDER BY t.name"
        ).fetchall()
        return [TeamSettingsRow(r[0], r[1], self.lora_models(r[0]), r[2]) for r in rows]
