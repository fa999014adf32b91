"""The in-memory model view answers modelSearch exactly as the SQL does, and never from stale rows."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from engine.registry.db import Database
from engine.registry.keys import KeyStore
from engine.registry.models import ModelRegistry, ModelRow
from engine.registry.view import ModelView


def row(air: str, team: str, **extra) -> ModelRow:
    fields = dict(category="lora", architecture="sd1x", format="safetensors", name=air.split(":")[1], version="1",
                  unique_identifier=air, sha256="0" * 64, size_bytes=10, private=False)
    fields.update(extra)
    return ModelRow(air=air, team=team, **fields)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(Database(tmp_path / "wisp.db"))
    for team, source in (("alpha", "al"), ("beta", "be")):
        KeyStore(reg.db).ensure_team(team)
        reg.create_source(source, team)
    reg.upsert(row("al:Ink_Wash@1", "alpha", meta={"tags": ["ink", "style"], "comment": "100% Ink"}))
    reg.upsert(row("al:secret@1", "alpha", private=True, meta={"tags": ["style"]}))
    reg.upsert(row("al:base@1", "alpha", category="checkpoint", type="base", architecture="sdxl", name="Base XL"))
    reg.upsert(row("be:pose@1", "beta", category="controlnet", conditioning="openpose", meta={"shortDescription": "Café"}))
    reg.upsert(row("be:ink2@1", "beta", meta={"tags": ["ink"]}, name="INK two"))
    return reg


QUERIES = {
    "text": [None, "ink", "INK", "%", "_", "wash", "100%", "café", "CAFÉ", "xl", "nothing"],
    "category": [None, "lora", "checkpoint", "controlnet"],
    "visibility": ["all", "public", "private"],
    "tags": [None, ["ink"], ["style"], ["ink", "style"]],
}


def test_the_view_answers_every_query_as_the_sql_does(registry: ModelRegistry):
    view = ModelView(registry)
    assert view.search("alpha") is None  # not loaded: callers take the SQL path
    view.reload()
    checked = 0
    for team, text, category, visibility, tags in itertools.product(
        ("alpha", "beta", "gamma"), QUERIES["text"], QUERIES["category"], QUERIES["visibility"], QUERIES["tags"]
    ):
        args = dict(text=text, category=category, visibility=visibility, tags=tags)
        expected = registry.search(team, **args, limit=10**9, offset=0)[1]
        assert view.search(team, **args) == expected, (team, args)
        checked += 1
    for architectures, type_, conditioning in (("sdxl",), None, None), (None, "base", None), (None, None, "openpose"):
        expected = registry.search("alpha", architectures=architectures, type_=type_, conditioning=conditioning, limit=10**9)[1]
        assert view.search("alpha", architectures=architectures, type_=type_, conditioning=conditioning) == expected
    assert checked == 3 * 11 * 4 * 3 * 4
    assert [r.air for r in view.search("alpha")] == [r.air for r in registry.search("alpha", limit=100)[1]]


def test_a_write_here_or_in_another_process_drops_the_rows(registry: ModelRegistry, tmp_path: Path):
    view = ModelView(registry)
    view.reload()
    registry.upsert(row("al:new@1", "alpha"))
    assert not view.ready and view.search("alpha") is None  # this process's write: dropped at once
    view.reload()
    assert "al:new@1" in [r.air for r in view.search("alpha")]
    other = ModelRegistry(Database(tmp_path / "wisp.db"))  # another process's registry on the same file
    other.upsert(row("al:elsewhere@1", "alpha"))
    assert view.ready  # it cannot know yet...
    view.check()  # ...until the periodic check compares versions
    assert not view.ready
    view.reload()
    assert "al:elsewhere@1" in [r.air for r in view.search("alpha")]
    view.check()
    assert view.ready  # nothing changed since: kept
