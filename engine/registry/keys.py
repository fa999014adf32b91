"""Teams and API keys.

A key is ``wisp_`` + 32 random bytes (url-safe base64); only its SHA-256 is
stored.  With that much entropy a fast hash is enough: there is nothing to
brute-force offline.  The first 12 characters are kept in clear as a prefix
so ``wisp keys list`` can tell keys apart.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from engine.registry.db import Database
from engine.registry.sources import claim_default_source

KEY_PREFIX = "wisp_"
DEFAULT_TEAM = "default"


@dataclass(frozen=True)
class KeyInfo:
    id: int
    team: str
    prefix: str
    created_at: float
    revoked_at: float | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_team(self, name: str) -> int:
        """The team's id, creating the team (and its default source) if it is new."""
        conn = self.db.connect()
        row = conn.execute("SELECT id FROM teams WHERE name=?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        conn.execute("BEGIN IMMEDIATE")
        try:
            created = conn.execute("INSERT OR IGNORE INTO teams(name) VALUES (?)", (name,)).rowcount
            team_id = int(conn.execute("SELECT id FROM teams WHERE name=?", (name,)).fetchone()[0])
            if created:
                claim_default_source(conn, team_id, name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return team_id

    def create(self, team: str = DEFAULT_TEAM) -> str:
        """Create a key for ``team`` (created if new); returns the key, shown once."""
        team_id = self.ensure_team(team)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.db.connect().execute(
            "INSERT INTO api_keys(team_id, prefix, key_hash) VALUES (?, ?, ?)", (team_id, key[:12], _hash(key))
        )
        return key

    def team_of(self, key: str) -> str | None:
        """The team a live key belongs to, or None for an unknown or revoked key."""
        found = self.identify(key)
        return None if found is None else found[1]

    def identify(self, key: str) -> tuple[int, str] | None:
        """(key id, team) of a live key, or None for an unknown or revoked key."""
        if not key or len(key) > 256:
            return None
        row = self.db.connect().execute(
            "SELECT k.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.key_hash=? AND k.revoked_at IS NULL",
            (_hash(key),),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def revoked_among(self, ids: set[int]) -> set[int]:
        """Those of ``ids`` that are revoked (or gone): what open sessions must stop using."""
        if not ids:
            return set()
        wanted = sorted(ids)
        live: set[int] = set()
        conn = self.db.connect()
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            part = wanted[start:start + 500]
            rows = conn.execute(
                f"SELECT id FROM api_keys WHERE revoked_at IS NULL AND id IN ({','.join('?' * len(part))})", part
            ).fetchall()
            live.update(int(r[0]) for r in rows)
        return set(wanted) - live

    def list(self) -> list[KeyInfo]:
        rows = self.db.connect().execute(
            "SELECT k.id, t.name, k.prefix, k.created_at, k.revoked_at FROM api_keys k JOIN teams t ON t.id=k.team_id ORDER BY k.id"
        ).fetchall()
        return [KeyInfo(*row) for row in rows]

    def revoke(self, key_or_prefix: str) -> int:
        """Revoke by full key, id, or unique prefix; returns how many keys were revoked."""
        conn = self.db.connect()
        if key_or_prefix.isdigit():
            cur = conn.execute("UPDATE api_keys SET revoked_at=((julianday('now') - 2440587.5) * 86400.0) WHERE id=? AND revoked_at IS NULL", (int(key_or_prefix),))
            return cur.rowcount
        cur = conn.execute(
            "UPDATE api_keys SET revoked_at=((julianday('now') - 2440587.5) * 86400.0) WHERE key_hash=? AND revoked_at IS NULL", (_hash(key_or_prefix),)
        )
        if cur.rowcount:
            return cur.rowcount
        matches = conn.execute("SELECT id FROM api_keys WHERE prefix=? AND revoked_at IS NULL", (key_or_prefix,)).fetchall()
        if len(matches) != 1:
            return 0
        return conn.execute("UPDATE api_keys SET revoked_at=((julianday('now') - 2440587.5) * 86400.0) WHERE id=?", (matches[0][0],)).rowcount

    def count_live(self) -> int:
        return int(self.db.connect().execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])
