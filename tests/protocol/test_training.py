"""The training task's two spellings fold into one plan; refusals name their field."""

from __future__ import annotations

import json
import uuid

import pytest

from protocol.frames import decode_frame
from protocol.training import Training, TrainingPlan, default_steps

U = "12345678-1234-1234-1234-123456789abc"


def plan_of(**fields) -> TrainingPlan:
    decoded = decode_frame(json.dumps([{"taskType": "training", "taskUUID": U, **fields}]))[0]
    assert decoded.error is None, decoded.error
    assert isinstance(decoded.task, Training)
    return decoded.task.plan()


def error_of(**fields):
    decoded = decode_frame(json.dumps([{"taskType": "training", "taskUUID": U, **fields}]))[0]
    assert decoded.error is not None and decoded.task is None
    return decoded.error


def test_modelslab_body_and_runware_body_give_the_same_plan():
    modelslab = plan_of(
        instance_prompt="photo of ambika0 man", class_prompt="photo of a man", base_model_type="normal",
        negative_prompt="lowres", images=["https://x/1.png", "https://x/2.png"], seed="0", training_type="men",
        max_train_steps="18", lora_type="lora", webhook="https://hook/", wandb_key="",
    )
    runware = plan_of(
        model="wisp:sd1x@lora-training", deliveryMethod="async", inputs={"dataset": ["https://x/1.png", "https://x/2.png"]},
        instance_prompt="photo of ambika0 man", class_prompt="photo of a man", negative_prompt="lowres",
        trainingSteps=18, seed=0, webhookURL="https://hook/",
    )
    differing = {"dataset_parameter"}
    for field in TrainingPlan.__dataclass_fields__:
        if field not in differing:
            assert getattr(modelslab, field) == getattr(runware, field), field
    assert modelslab.dataset_parameter == "images" and runware.dataset_parameter == "inputs.dataset"


def test_defaults_and_presets():
    plan = plan_of(inputs={"dataset": "https://x/faces.zip"}, triggerWord="sks")
    assert plan.recipe == "wisp:sd1x@lora-training" and plan.family == "sd1x"
    assert plan.steps is None and plan.learning_rate == 1e-4 and plan.rank == 4 and plan.alpha == 4.0
    assert plan.instance_prompt == "sks" and plan.class_prompt is None and plan.webhook is None
    assert plan_of(images=["a"], training_type="female").class_prompt == "photo of a woman"
    assert plan_of(images=["a"], training_type="null").class_prompt is None
    assert plan_of(images=["a"], base_model_type="sdxl").recipe == "wisp:sdxl@lora-training"
    assert plan_of(images=["a"], webhook="").webhook is None
    assert plan_of(images=["a"], triggerWord="zq", instance_prompt="a photo").instance_prompt == "zq a photo"
    assert plan_of(images=["a"], importModel={"air": "s:x@1", "name": "x", "uniqueIdentifier": "u", "version": "1",
                                              "category": "lycoris"}).lora_type == "lycoris"
    assert [default_steps(n) for n in (1, 5, 9, 30)] == [10, 10, 18, 50]


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"images": ["a"], "deliveryMethod": "sync"}, "deliveryMethod"),
        ({"images": ["a"], "model": "wisp:flux@lora-training"}, "model"),
        ({"images": ["a"], "model": "wisp:sd1x@lora-training", "base_model_type": "sdxl"}, "base_model_type"),
        ({}, "inputs.dataset"),
        ({"images": ["a"], "inputs": {"dataset": "b"}}, "images"),
        ({"images": ["a"] * 65}, "images"),
        ({"images": ["a"], "max_train_steps": "ten"}, "max_train_steps"),
        ({"images": ["a"], "trainingSteps": 0}, "trainingSteps"),
        ({"images": ["a"], "trainingSteps": 5, "max_train_steps": 6}, "max_train_steps"),
        ({"images": ["a"], "seed": "-1"}, "seed"),
        ({"images": ["a"], "learningRate": 2}, "learningRate"),
        ({"images": ["a"], "lora_type": "dora"}, "lora_type"),
        ({"images": ["a"], "training_type": "cats"}, "training_type"),
        ({"images": ["a"], "importModel": {"air": "../etc:x@1", "name": "x", "uniqueIdentifier": "u", "version": "1"}}, "importModel.air"),
        ({"images": ["a"], "surprise": 1}, "surprise"),
    ],
)
def test_refusals_name_the_field(fields, parameter):
    error = error_of(**fields)
    assert error.parameter == parameter, error
    assert error.taskUUID == U and error.taskType == "training"


def test_task_cancel_decodes():
    decoded = decode_frame(json.dumps([{"taskType": "taskCancel", "taskUUID": str(uuid.uuid4())}]))[0]
    assert decoded.error is None
