"""Training driven through the engine, without a socket: dataset → process → registered LoRA → inference."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.core import Engine
from engine.errors import EngineError, InvalidImage
from engine.training.dataset import BadDataset
from engine.training.runner import TrainingCancelled
from protocol.frames import decode_frame
from protocol.inference import ImageInference
from protocol.models import ModelSearch
from protocol.training import Training
from tests.fixtures.datasets import data_uri, data_uris, png, zip_of

TEAM = "trainers"


def training(**fields: Any) -> Training:
    task = {"taskType": "training", "taskUUID": str(uuid.uuid4()), "model": "wisp:sd1x@lora-training", **fields}
    decoded = decode_frame(json.dumps([task]))[0]
    assert decoded.error is None, decoded.error
    assert isinstance(decoded.task, Training)
    return decoded.task


class Statuses:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, status: str, message: str, **fields: Any) -> None:
        self.seen.append((status, fields))

    @property
    def names(self) -> list[str]:
        out: list[str] = []
        for status, _ in self.seen:
            if not out or out[-1] != status:
                out.append(status)
        return out


def run(engine: Engine, task: Training, emit: Any = None) -> Any:
    return asyncio.run(engine.train(task, TEAM, emit or Statuses()))


def image(engine: Engine, lora: list[dict] | None = None) -> bytes:
    task = msgspec_inference(lora or [])
    images = asyncio.run(engine.generate(task, team=TEAM, owner="t"))
    return images[0].data


def msgspec_inference(lora: list[dict]) -> ImageInference:
    element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sd15@1",
               "positivePrompt": "sks a portrait", "width": 64, "height": 64, "steps": 3, "seed": 5, "lora": lora}
    decoded = decode_frame(json.dumps([element]))[0]
    assert decoded.error is None, decoded.error
    return decoded.task


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Any, Any, Statuses]:
    """Two runs with the same seed (reproducibility) on one engine, shared by the module's tests."""
    from engine.core import EngineConfig

    engine = Engine(EngineConfig(data_dir=tmp_path_factory.mktemp("train"), torch_threads=1))
    engine.start()
    statuses = Statuses()
    first = run(engine, training(inputs={"dataset": data_uris(4)}, trainingSteps=8, triggerWord="sks", seed=7, learningRate=5e-3), statuses)
    second = run(engine, training(inputs={"dataset": data_uris(4)}, trainingSteps=8, triggerWord="sks", seed=7, learningRate=5e-3))
    yield engine, first, second, statuses
    engine.stop()


def test_statuses_follow_the_seed_sequence(trained):
    _, first, _, statuses = trained
    assert statuses.names == [
        "deploying_gpu", "training_started", "training_success", "trained_model_compressing",
        "trained_model_uploading", "trained_model_uploaded", "deploying_model",
    ]
    progress = [f for s, f in statuses.seen if s == "training_started" and f.get("step")]
    assert progress[-1]["step"] == progress[-1]["steps"] == 8 and progress[-1]["progress"] == 1.0
    assert all(isinstance(f["loss"], float) for f in progress)
    assert first.steps == 8 and first.images == 4


def test_trained_lora_is_registered_found_and_changes_the_image(trained):
    engine, first, second, _ = trained
    row = engine.registry.get(first.air)
    assert row is not None and row.category == "lora" and row.architecture == "sd1x" and row.team == TEAM and row.private
    assert "trained" in row.tags
    found = asyncio.run(engine.search_models(ModelSearch(taskUUID=str(uuid.uuid4()), search="sks"), TEAM))
    assert sorted(m.air for m in found.results) == sorted([first.air, second.air])
    assert asyncio.run(engine.search_models(ModelSearch(taskUUID=str(uuid.uuid4()), search="sks"), "strangers")).totalResults == 0
    base = image(engine)
    with_lora = image(engine, [{"model": first.air, "weight": 1.0}])
    assert with_lora != base
    assert image(engine, [{"model": first.air, "weight": 0.0}]) == base


def test_same_seed_same_adapter(trained):
    engine, first, second, _ = trained
    assert first.air != second.air
    assert engine.registry.get(first.air).sha256 == engine.registry.get(second.air).sha256


def test_import_model_names_where_the_lora_goes(trained):
    engine, _, _, _ = trained
    engine.registry.create_source("trainsrc", TEAM)
    task = training(
        images=data_uris(2, first_seed=10), max_train_steps="3", seed="1",
        importModel={"air": "trainsrc:faces@2", "name": "faces", "uniqueIdentifier": "faces-v2", "version": "2", "private": False},
    )
    outcome = run(engine, task)
    assert outcome.air == "trainsrc:faces@2"
    row = engine.registry.get("trainsrc:faces@2")
    assert row.private is False and row.name == "faces"
    other = training(images=data_uris(2), importModel={"air": "trainsrc:x@1", "name": "x", "uniqueIdentifier": "x", "version": "1"})
    with pytest.raises(EngineError) as info:
        asyncio.run(engine.train(other, "strangers", Statuses()))
    assert info.value.parameter == "importModel.air"


def test_lycoris_trains_a_loha_usable_as_a_lora(trained):
    engine, _, _, _ = trained
    outcome = run(engine, training(inputs={"dataset": data_uris(2)}, trainingSteps=4, lora_type="lycoris", learningRate=5e-3, triggerWord="sks"))
    assert "lycoris" in engine.registry.get(outcome.air).tags
    assert image(engine, [{"model": outcome.air}]) != image(engine)


def test_zip_dataset_and_prior_preservation(trained):
    engine, _, _, _ = trained
    archive = zip_of({"a/1.png": png(1), "a/2.png": png(2), "__MACOSX/._1.png": b"junk", "notes.txt": b"hello"})
    statuses = Statuses()
    outcome = run(engine, training(inputs={"dataset": data_uri(archive, "application/zip")}, trainingSteps=2,
                                   training_type="men", numClassImages=1), statuses)
    assert outcome.images == 2
    assert any("class image" in str(f) or s == "deploying_gpu" for s, f in statuses.seen)


@pytest.mark.parametrize(
    ("dataset", "named"),
    [
        ([data_uri(png(1)), data_uri(b"not an image at all")], "images[1]"),
        ([data_uri(zip_of({"ok.png": png(1), "broken.png": b"\x89PNG nope"}), "application/zip")], "broken.png"),
        ([data_uri(zip_of({"readme.txt": b"x"}), "application/zip")], "holds no images"),
        ([data_uri(b"PK\x03\x04 truncated zip")], "not a readable zip"),
    ],
)
def test_bad_datasets_are_named(engine: Engine, dataset: list[str], named: str):
    with pytest.raises(InvalidImage) as info:
        run(engine, training(images=dataset, trainingSteps=1))
    assert named in info.value.message
    assert isinstance(info.value, BadDataset)


def test_unknown_base_model_and_wrong_family(engine: Engine):
    with pytest.raises(EngineError) as info:
        run(engine, training(images=data_uris(1), baseModel="nobody:nothing@1"))
    assert info.value.code == "modelNotFound" and info.value.parameter == "baseModel"


def test_cancel_running_and_queued_jobs(tmp_path: Path):
    from engine.core import EngineConfig

    engine = Engine(EngineConfig(data_dir=tmp_path, torch_threads=1, training_slots=1))
    engine.start()

    async def scenario() -> tuple[BaseException | None, BaseException | None, list[str]]:
        long_job = training(inputs={"dataset": data_uris(1)}, trainingSteps=10_000)
        queued_job = training(inputs={"dataset": data_uris(1)}, trainingSteps=1)
        running = Statuses()
        waiting = Statuses()
        first = asyncio.ensure_future(engine.train(long_job, TEAM, running))
        while "training_started" not in running.names:
            await asyncio.sleep(0.05)
            assert not first.done(), first
        second = asyncio.ensure_future(engine.train(queued_job, TEAM, waiting))
        while "queued" not in waiting.names:
            await asyncio.sleep(0.05)
        assert engine.cancel_training(TEAM, queued_job.taskUUID)
        assert not engine.cancel_training("strangers", long_job.taskUUID)  # another team's job is not theirs to stop
        assert engine.cancel_training(TEAM, long_job.taskUUID)
        results = await asyncio.gather(first, second, return_exceptions=True)
        return results[0], results[1], waiting.names

    try:
        first, second, waiting = asyncio.run(scenario())
    finally:
        engine.stop()
    assert isinstance(first, TrainingCancelled) and isinstance(second, TrainingCancelled)
    assert waiting == ["queued"]
    assert not engine.cancel_training(TEAM, "gone")
    assert not list((tmp_path / "tmp").glob("train-*"))  # nothing of a cancelled job is left behind


def test_lora_quota_is_checked_before_training(engine: Engine):
    from engine.registry.team_settings import TeamSettings

    TeamSettings(engine.db).set_lora_upload_limit("quota-team", 0)
    with pytest.raises(EngineError) as info:
        engine.check_training(training(images=data_uris(1)), "quota-team")
    assert info.value.code == "quotaExceeded"


def test_sdxl_recipe_trains_a_lora_for_the_sdxl_builtin(trained):
    engine, _, _, _ = trained
    outcome = run(engine, training(model="wisp:sdxl@lora-training", inputs={"dataset": data_uris(2)}, trainingSteps=3,
                                   learningRate=5e-3, triggerWord="sks"))
    row = engine.registry.get(outcome.air)
    assert row.architecture == "sdxl" and outcome.architecture == "sdxl"

    def sdxl_image(lora: list[dict]) -> bytes:
        element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "wisp:tiny-sdxl@1",
                   "positivePrompt": "sks", "width": 64, "height": 64, "steps": 3, "seed": 5, "lora": lora}
        task = decode_frame(json.dumps([element]))[0].task
        return asyncio.run(engine.generate(task, team=TEAM, owner="t"))[0].data

    assert sdxl_image([{"model": outcome.air}]) != sdxl_image([])
    with pytest.raises(EngineError):  # an SDXL LoRA on the SD-1.x model is refused
        image(engine, [{"model": outcome.air}])
