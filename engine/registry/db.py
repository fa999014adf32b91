"""The SQLite database in the data directory, and its schema migrations.

Each connection is used by one thread at a time; the server opens one per
thread through :class:`Database`.  WAL mode lets the CLI (``wisp keys``) write
while a server reads.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from engine.registry.writer import WRITE_INTERVAL_S, WriteBehind

MIGRATIONS: list[str] = [
    """
    CREATE TABLE teams (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0))
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0)),
        revoked_at REAL
    );
    """,
    """
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        created_at REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0))
    );
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        air TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL,
        model_key TEXT NOT NULL,
        air_version TEXT NOT NULL,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        category TEXT NOT NULL,
        type TEXT,
        architecture TEXT NOT NULL,
        conditioning TEXT,
        format TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        unique_identifier TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        private INTEGER NOT NULL,
        meta TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX models_team ON models(team_id);
    CREATE INDEX models_sha ON models(sha256);
    CREATE TABLE storage_usage (
        team_id INTEGER NOT NULL REFERENCES teams(id),
        day TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (team_id, day)
    );
    """,
    """
    CREATE TABLE tasks (
        team TEXT NOT NULL,
        task_uuid TEXT NOT NULL,
        task_type TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        items TEXT NOT NULL DEFAULT '[]',
        errors TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL,
        finished_at REAL,
        PRIMARY KEY (team, task_uuid)
    );
    CREATE INDEX tasks_finished ON tasks(finished_at);
    """,
    """
    CREATE TABLE team_settings (
        team_id INTEGER PRIMARY KEY REFERENCES teams(id),
        lora_upload_limit INTEGER,
        default_source TEXT
    );
    """,
    """
    CREATE TABLE image_owners (
        image_uuid TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE registry_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO registry_version(id, value) VALUES (1, 0);
    """,
    """
    ALTER TABLE image_owners ADD COLUMN expires_at REAL;
    CREATE INDEX image_owners_expiry ON image_owners(expires_at);
    CREATE INDEX image_owners_created ON image_owners(created_at);
    """,
]


class RegistryOnEventLoop(RuntimeError):
    """A database read on a thread that :meth:`Database.forbid_thread` marked: a bug, not a client's error."""


class Database:
    """Per-thread connections to ``wisp.db``, migrated on first open."""

    def __init__(self, path: Path, write_interval_s: float = WRITE_INTERVAL_S) -> None:
        """``write_interval_s``: its write-behind queue's interval (the server's ``WISP_JOURNAL_INTERVAL``)."""
        self.path = Path(path)
        self.write_interval_s = write_interval_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._forbidden: int | None = None
        self._writer: WriteBehind | None = None
        self._writer_lock = threading.Lock()
        self._migrate()

    @property
    def writer(self) -> WriteBehind:
        """This database's write-behind queue (engine.registry.writer): one thread, made on first use."""
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = WriteBehind(self, interval_s=self.write_interval_s)
        return self._writer

    def sync_writes(self, timeout_s: float = 10.0) -> bool:
        """Worker threads: wait until the write-behind statements queued so far are committed (no queue: at once)."""
        return self._writer is None or self._writer.sync(timeout_s)

    def forbid_thread(self, ident: int | None) -> None:
        """Make :meth:`connect` fail on thread ``ident`` (an event loop's): a registry read there is a bug, found loudly.

        The server's event loop must never wait on SQLite; tests put this
        guard on the loop thread and drive real tasks through the server.
        """
        self._forbidden = ident

    def connect(self) -> sqlite3.Connection:
        if self._forbidden is not None and threading.get_ident() == self._forbidden:
            raise RegistryOnEventLoop(f"{self.path.name} was read on a thread that must not block on it (the event loop)")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _migrate(self) -> None:
        conn = self.connect()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current < number:
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # Incremental: the task journal gives pages back as retention drops rows (server.journal.prune);
            # switching an existing database over takes one VACUUM.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
