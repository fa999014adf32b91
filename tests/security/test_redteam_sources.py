"""The built-in source ``wisp`` is reserved (issue 18 #17).

Before: ``wisp sources create wisp`` was accepted, after which a team could
publish ``wisp:tiny-sd15@1`` and every team's modelSearch listed two.  Now no
way of creating sources may create it, a ``wisp`` row left by an older
version gives no team the right to upload under it, and a model row under it
(from before) is never listed.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from engine.registry.db import Database
from engine.registry.models import ModelRegistry, ModelRow
from engine.registry.team_settings import RESERVED_SOURCES

try:
    from engine.registry.models import ReservedSource
except ImportError:  # before the fix
    ReservedSource = sqlite3.IntegrityError  # type: ignore[misc,assignment]
from engine.registry.team_settings import TeamSettings
from tests.conftest import start_server, stop_server, wisp_cli

BUILTIN = "wisp:tiny-sd15@1"


def _legacy_db(data_dir: Path, team: str = "default") -> None:
    """What an older wisp left: a ``wisp`` source owned by a team, and a public model row under it."""
    registry = ModelRegistry(Database(data_dir / "wisp.db"))
    team_id = registry.keys.ensure_team(team)
    conn = registry.db.connect()
    conn.execute("INSERT INTO sources(name, team_id) VALUES ('wisp', ?)", (team_id,))
    now = time.time()
    conn.execute(
        "INSERT INTO models(air, source, model_key, air_version, team_id, category, type, architecture, conditioning,"
        " format, name, version, unique_identifier, sha256, size_bytes, private, meta, created_at, updated_at)"
        " VALUES ('wisp:tiny-sd15@1', 'wisp', 'tiny-sd15', '1', ?, 'checkpoint', 'base', 'sd1x', NULL, 'safetensors',"
        " 'impostor', '1', 'x', ?, 1, 0, '{}', ?, ?)",
        (team_id, "0" * 64, now, now),
    )


def test_cli_refuses_to_create_the_builtin_source(tmp_path: Path):
    out = wisp_cli("sources", "create", "wisp", "--team", "t", "--data-dir", str(tmp_path))
    assert out.returncode != 0 and "reserved" in out.stderr, (out.stdout, out.stderr)
    assert "wisp\t" not in wisp_cli("sources", "list", "--data-dir", str(tmp_path)).stdout
    # An ordinary name still works.
    out = wisp_cli("sources", "create", "mine", "--team", "t", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr


def test_teams_default_source_cannot_be_the_builtin_source(tmp_path: Path):
    out = wisp_cli("teams", "set", "t", "--default-source", "wisp", "--data-dir", str(tmp_path))
    assert out.returncode != 0 and "reserved" in out.stderr, (out.stdout, out.stderr)
    registry = ModelRegistry(Database(tmp_path / "wisp.db"))
    assert registry.source_team("wisp") is None
    assert TeamSettings(registry.db).existing_default_source("t") is None


def test_registry_refuses_the_builtin_source_everywhere(tmp_path: Path):
    registry = ModelRegistry(Database(tmp_path / "wisp.db"))
    with pytest.raises(ReservedSource):
        registry.create_source("wisp", "t")
    with pytest.raises(ReservedSource):
        TeamSettings(registry.db).set_default_source("t", "wisp")
    assert TeamSettings(registry.db).default_source("wisp") != "wisp"  # a team named wisp gets another name
    registry.keys.ensure_team("t")
    row = ModelRow(air="wisp:mine@1", team="t", category="lora", architecture="sd1x", format="safetensors", name="n",
                   version="1", unique_identifier="u", sha256="0" * 64, size_bytes=1, private=False)
    with pytest.raises(ReservedSource):
        registry.upsert(row)


def test_a_legacy_builtin_source_grants_nothing(tmp_path: Path):
    _legacy_db(tmp_path)
    registry = ModelRegistry(Database(tmp_path / "wisp.db"))
    assert registry.source_team("wisp") is None
    team_id = registry.keys.ensure_team("default")
    registry.db.connect().execute(  # as an older version left it (teams now get their default source when made)
        "INSERT INTO team_settings(team_id, default_source) VALUES (?, 'wisp') "
        "ON CONFLICT(team_id) DO UPDATE SET default_source='wisp'", (team_id,))
    settings = TeamSettings(registry.db)
    assert settings.existing_default_source("default") is None
    assert settings.default_source("default") == "default"  # a fresh one, owned by the team
    assert registry.source_team("default") == "default"
    assert registry.get(BUILTIN) is None
    total, rows = registry.search("default")
    assert total == 0 and rows == []


async def test_a_team_cannot_publish_under_the_builtin_source(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    _legacy_db(data)
    server = start_server(data, env={"WISP_WARM_BUILTIN": "0"})
    try:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": server.key}]))
            assert "data" in json.loads(await ws.recv())
            upload = {"taskType": "modelUpload", "taskUUID": str(uuid.uuid4()), "air": BUILTIN, "category": "checkpoint",
                      "type": "base", "architecture": "sd1x", "downloadURL": "http://127.0.0.1:9/x.safetensors",
                      "uniqueIdentifier": "x", "name": "impostor", "version": "1", "private": False}
            await ws.send(json.dumps([upload]))
            reply = json.loads(await ws.recv())
            assert reply["errors"][0]["code"] == "sourceNotAllowed", reply
            search = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "search": "tiny-sd15"}
            await ws.send(json.dumps([search]))
            reply = json.loads(await ws.recv())
            airs = [r["air"] for r in reply["data"][0]["results"]]
            assert airs.count(BUILTIN) == 1, airs
    finally:
        stop_server(server)
