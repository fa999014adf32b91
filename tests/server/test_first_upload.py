"""A fresh install's first upload just works: every team has a default source, ``GET /v1/account`` says so, and
``wisp upload`` checks server, key, AIR and size before it sends a byte (issue 16)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.models import ModelRegistry
from engine.registry.team_settings import TeamSettings
from tests.conftest import ROOT, WISP, RunningServer, start_server, stop_server
from tests.fixtures import bad_files


def test_a_new_team_has_its_default_source_from_the_start(tmp_path: Path):
    db = Database(tmp_path / "wisp.db")
    keys = KeyStore(db)
    keys.create("Design Team")
    registry = ModelRegistry(db)
    assert registry.list_sources() == [("design-team", "Design Team")]
    assert TeamSettings(db).existing_default_source("Design Team") == "design-team"
    registry.create_source("ops", "Design Team")
    keys.create("ops")  # its name is taken by another team: the next free variant
    assert TeamSettings(db).existing_default_source("ops") == "ops-2"


def test_teams_from_an_older_database_get_theirs_at_start(tmp_path: Path):
    db = Database(tmp_path / "wisp.db")
    db.connect().execute("INSERT INTO teams(name) VALUES ('legacy')")  # as a database from before default sources
    assert TeamSettings(db).existing_default_source("legacy") is None
    assert TeamSettings(db).ensure_default_sources() == 1
    assert TeamSettings(db).existing_default_source("legacy") == "legacy"
    assert TeamSettings(db).ensure_default_sources() == 0


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory):
    running = start_server(tmp_path_factory.mktemp("fresh") / "data", env={"WISP_WARM_BUILTIN": "0"})
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    valid = {f.id: f for f in bad_files.write_valid_corpus(root)}
    target = root / "My Ink Style v2.safetensors"
    target.write_bytes(valid["sd1-kohya-lora"].path.read_bytes())
    return target


def upload(server: RunningServer, *args: str, key: str | None = None, extra_env: dict[str, str] | None = None):
    env = {**os.environ, "WISP_API_KEY": key if key is not None else server.key, **(extra_env or {})}
    return subprocess.run(WISP + ["upload", *args, "--server", server.http_url], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def uploads_on_disk(server: RunningServer) -> list[Path]:
    return [p for p in (server.data_dir / "uploads").rglob("*") if p.is_file()]


def test_account_route_names_team_sources_and_limits(fresh: RunningServer):
    url = f"{fresh.http_url}/v1/account"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer wisp_wrong"})
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["code"] == "invalidApiKey"
    account = httpx.get(url, headers={"Authorization": f"Bearer {fresh.key}"}).json()
    assert account["team"] == "default" and account["defaultSource"] == "default"
    assert account["sources"] == ["default"] and account["maxModelBytes"] > 0


def test_first_upload_needs_no_air_and_no_shell_step(fresh: RunningServer, lora: Path):
    result = upload(fresh, str(lora), "--category", "lora", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "default:My-Ink-Style-v2@1"
    time.sleep(0.3)
    phases = [line for line in fresh.log().splitlines() if "modelUpload" in line and "default:My-Ink-Style-v2@1" in line
              and "wisp.server" in line]
    assert [p.split(": ", 1)[1].split()[2].rstrip(":") for p in phases] == ["validated", "downloaded", "optimized", "stored", "ready"]
    from prometheus_client.parser import text_string_to_metric_families

    scraped = httpx.get(f"{fresh.http_url}/metrics").text
    samples = {s.name: s.value for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert samples["wisp_models_stored_total"] == 1 and samples["wisp_model_bytes_total"] > 0
    assert samples["wisp_file_upload_bytes_total"] == lora.stat().st_size


def test_a_wrong_key_is_refused_before_a_byte_is_sent(fresh: RunningServer, lora: Path):
    before = uploads_on_disk(fresh)
    result = upload(fresh, str(lora), "--category", "lora", key="wisp_not_a_key")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "wisp: the server refused the API key (invalidApiKey)" in result.stderr
    assert "upload   [" not in result.stderr and uploads_on_disk(fresh) == before


def test_a_bad_air_or_a_foreign_source_is_refused_before_a_byte_is_sent(fresh: RunningServer, lora: Path):
    before = uploads_on_disk(fresh)
    bad = upload(fresh, str(lora), "--category", "lora", "--air", "not an air")
    assert bad.returncode == 1 and "is not an AIR: give source:id@version, such as default:my-model@1" in bad.stderr
    foreign = upload(fresh, str(lora), "--category", "lora", "--air", "someone-else:x@1")
    assert foreign.returncode == 1
    assert "the source 'someone-else' is not your team's (team 'default' has: default)" in foreign.stderr
    assert "upload   [" not in bad.stderr + foreign.stderr and uploads_on_disk(fresh) == before


def test_a_file_over_the_servers_limit_is_refused_before_it_is_sent(tmp_path: Path, lora: Path):
    small = start_server(tmp_path / "data", env={"WISP_WARM_BUILTIN": "0", "WISP_MAX_MODEL_BYTES": "1000"})
    try:
        result = upload(small, str(lora), "--category", "lora")
        assert result.returncode == 1 and "this server takes model files up to 1000 bytes" in result.stderr
        assert "upload   [" not in result.stderr and uploads_on_disk(small) == []
    finally:
        stop_server(small)
