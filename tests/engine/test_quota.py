"""The team's LoRA quota holds against uploads that run at the same time.

The quota is checked early (before any download, to fail fast) and again in
the registry's write transaction; only the second check can see an upload
that passed the first one concurrently.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.core import Engine
from engine.registry.team_settings import QuotaExceeded, TeamSettings
from protocol.models import ModelUpload
from tests.fixtures.loras import write_lora


def upload_task(air: str) -> ModelUpload:
    body = dict(
        taskUUID=str(uuid.uuid4()), air=air, category="lora", architecture="sd1x",
        downloadURL="https://example.invalid/lora.safetensors", uniqueIdentifier=uuid.uuid4().hex, name=air, version="1",
    )  # fmt: skip
    return msgspec.convert({"taskType": "modelUpload", **body}, ModelUpload)


@pytest.fixture
def files(engine_data_dir: Path, tmp_path: Path) -> list[Path]:
    """Written before the engine starts (its worker thread imports diffusers; two importers at once race)."""
    folder = ensure_tiny_sd15(engine_data_dir)
    # Seeds no other test uses: the session's shared data dir must not hold these bytes registered by another test.
    return [write_lora(folder, tmp_path / f"l{i}.safetensors", fmt="kohya", seed=9100 + i) for i in range(2)]


def test_concurrent_uploads_cannot_pass_the_lora_quota_together(files: list[Path], engine: Engine):
    team, source = "quota-race", "quotarace"
    engine.registry.create_source(source, team)
    TeamSettings(engine.db).set_lora_upload_limit(team, 1)

    async def scenario() -> list[object]:
        validated = asyncio.Barrier(2)

        async def emit(status: str, message: str) -> None:
            if status == "validated":
                await validated.wait()  # both have passed the early check before either registers

        return await asyncio.gather(
            *(engine.upload_model(upload_task(f"{source}:lora-{i}@1"), team, emit, local_source=f) for i, f in enumerate(files)),
            return_exceptions=True,
        )

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(refused) == 1 and "at most 1" in refused[0].message, results
    assert TeamSettings(engine.db).lora_models(team) == 1
    # The refused upload's file was stored before the refusal; the start-up sweep removes it once it is old enough.
    (kept,) = [r for r in results if not isinstance(r, BaseException)]
    ours = {p.stem: p for p in engine.model_store.root.rglob("*.safetensors")}
    assert kept.sha256 in ours and len(ours) >= 2
    assert engine.sweep_store(older_than_s=3600) == 0  # too young: another process may be about to register it
    for path in ours.values():
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    referenced = engine.registry.stored_sha256s()
    assert engine.sweep_store(older_than_s=3600) == len(set(ours) - referenced) >= 1
    left = {p.stem for p in engine.model_store.root.rglob("*.safetensors")}
    assert left == set(ours) & referenced and kept.sha256 in left
    with pytest.raises(QuotaExceeded):  # and the early check still refuses a third
        asyncio.run(engine.upload_model(upload_task(f"{source}:lora-2@1"), team, lambda s, m: asyncio.sleep(0), local_source=files[0]))
