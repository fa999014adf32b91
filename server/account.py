"""A team's account, as ``GET /v1/account`` and the ``accountManagement`` task answer it.

Worker threads only: every answer reads the registry.  Never a key: keys are
listed by their prefix, as ``wisp keys list`` shows them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.models import ModelRegistry
from engine.registry.team_settings import TeamSettings


def account_details(db: Database, team: str, max_model_bytes: int) -> dict[str, Any]:
    """The team, its default source (where an upload with no AIR of its own goes), its sources, the largest model
    file the server takes, and the LoRA quota: what a client checks before it uploads (``GET /v1/account``)."""
    settings = TeamSettings(db)
    registry = ModelRegistry(db)
    return {
        "team": team,
        "defaultSource": settings.default_source(team),
        "sources": [name for name, owner in registry.list_sources() if owner == team],
        "maxModelBytes": max_model_bytes,
        "loraUploadLimit": settings.lora_upload_limit(team),
        "loraModels": settings.lora_models(team),
    }


def full_details(db: Database, team: str, max_model_bytes: int) -> dict[str, Any]:
    """``accountManagement`` ``getDetails``: :func:`account_details`, the team's keys by prefix, and its storage."""
    db.sync_writes()  # images this process has just stored are counted too (their owners are written behind)
    conn = db.connect()
    keys = [{"prefix": k.prefix, "createdAt": _iso(k.created_at), "revoked": k.revoked_at is not None}
            for k in KeyStore(db).list() if k.team == team]
    models, model_bytes = conn.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0) FROM models m JOIN teams t ON t.id = m.team_id WHERE t.name = ?", (team,),
    ).fetchone()
    images = conn.execute("SELECT count(*) FROM image_owners WHERE team = ?", (team,)).fetchone()[0]
    return {**account_details(db, team, max_model_bytes), "keys": keys,
            "storage": {"models": models, "modelBytes": model_bytes, "images": images}}


def usage_activity(db: Database, team: str, days: int, retention_s: float) -> dict[str, Any]:
    """``accountManagement`` ``getUsageActivity``: the team's tasks by type and outcome (from the task journal, which
    keeps ``retention_s``), and its stored bytes per day (the daily storage snapshots) over ``days``."""
    db.sync_writes()  # the tasks this process has just claimed or finished are counted too (the journal writes behind)
    conn = db.connect()
    since = time.time() - days * 86400
    tasks: dict[str, dict[str, int]] = {}
    for task_type, status, count in conn.execute(
        "SELECT task_type, status, count(*) FROM tasks WHERE team = ? AND created_at >= ? GROUP BY task_type, status",
        (team, since),
    ):
        tasks.setdefault(task_type, {})[status] = count
    first_day = (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%d")
    storage = [{"day": day, "bytes": stored} for day, stored in conn.execute(
        "SELECT u.day, u.bytes FROM storage_usage u JOIN teams t ON t.id = u.team_id WHERE t.name = ? AND u.day >= ? ORDER BY u.day",
        (team, first_day),
    )]
    return {"team": team, "days": days, "tasks": tasks, "taskHistorySeconds": retention_s, "storageByDay": storage}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
