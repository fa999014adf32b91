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


def _search(**fields) -> "ModelSearch":
    import uuid

    from protocol.models import ModelSearch

    return ModelSearch(taskUUID=str(uuid.uuid4()), **fields)


def test_answers_are_remembered_per_team_and_query_until_the_rows_reload(registry: ModelRegistry):
    """A repeated search is answered from the memo (the same results list), pages included, and always equals the
    SQL's answer; a write drops the memo with the rows, and another team's query is never served a team's answer."""
    from engine.search import search_in_view, search_models

    view = ModelView(registry)
    assert search_in_view(view, _search(), "alpha") is None  # stale: the job path answers (and reloads)
    view.reload()
    for fields in ({}, {"search": "ink"}, {"limit": 2}, {"offset": 1, "limit": 3}, {"offset": 6, "limit": 2},
                   {"offset": 50}, {"category": "lora", "visibility": "public"}, {"tags": ["ink"]}):  # fmt: skip
        for team in ("alpha", "beta"):
            first = search_in_view(view, _search(**fields), team)
            again = search_in_view(view, _search(**fields), team)
            everything = search_models(registry, _search(**{**fields, "offset": 0, "limit": 100}), team)
            start, end = fields.get("offset", 0), fields.get("offset", 0) + fields.get("limit", 20)
            assert first is not None and again is not None
            assert again.results is first.results  # remembered: no second pass over the rows
            assert first.totalResults == everything.totalResults == len(everything.results), (team, fields)
            assert first.results == everything.results[start:end], (team, fields)
    alpha = search_in_view(view, _search(search="secret"), "alpha")
    beta = search_in_view(view, _search(search="secret"), "beta")
    assert [r.air for r in alpha.results] == ["al:secret@1"] and beta.results == []  # private to alpha

    before = search_in_view(view, _search(search="ink"), "beta")
    registry.upsert(row("be:ink3@1", "beta", name="ink three"))
    assert search_in_view(view, _search(search="ink"), "beta") is None  # the write dropped rows and memo
    view.reload()
    after = search_in_view(view, _search(search="ink"), "beta")
    assert after.totalResults == before.totalResults + 1 and "be:ink3@1" in [r.air for r in after.results]


def test_an_answer_computed_across_a_reload_is_not_remembered(registry: ModelRegistry):
    """The rows may be swapped by a worker thread while the loop computes: that answer is given, not kept."""
    view = ModelView(registry)
    view.reload()
    calls = []

    def compute(v: ModelView) -> list[str]:
        calls.append(1)
        v.reload()  # as if a worker thread reloaded meanwhile
        return ["answer"]

    assert view.memoised("key", compute) == ["answer"]
    assert view.memoised("key", lambda v: calls.append(1) or ["fresh"]) == ["fresh"]
    assert view.memoised("key", lambda v: ["not asked"]) == ["fresh"]
    assert len(calls) == 2
