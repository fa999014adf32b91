"""``refiner`` (issue 15): an SDXL-family checkpoint finishes the denoising the model started, from ``startStep``."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.builtin.tiny_sdxl import BUILTIN_SDXL_AIR, ensure_tiny_sdxl
from engine.errors import InvalidInput
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.loading import load_folder, load_single_file
from protocol.frames import decode_frame
from tests.fixtures.checkpoints import write_sdxl_single_file


def spec(**fields: Any) -> GenerationSpec:
    base: dict[str, Any] = dict(prompt="a lighthouse", negative_prompt=None, width=64, height=64, steps=4, cfg_scale=5.0,
                                scheduler="Default", seeds=(3, 4))  # fmt: skip
    base.update(fields)
    return GenerationSpec(**base)


def pixels(images: list[Any]) -> list[bytes]:
    return [np.asarray(i).tobytes() for i in images]


@pytest.fixture(scope="module")
def models(engine_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    torch.set_num_threads(1)
    folder = ensure_tiny_sdxl(engine_data_dir)
    other = write_sdxl_single_file(folder, tmp_path_factory.mktemp("refiner") / "other.safetensors", noise_seed=2, noise_scale=0.2)
    return load_folder(folder), load_single_file(other, folder)


def test_a_refiner_finishes_the_schedule_differently_and_deterministically(models):
    base, refiner = models
    alone = base.run(spec())
    refined = base.run(spec(refiner_start=0.5), refiner=refiner)
    again = base.run(spec(refiner_start=0.5), refiner=refiner)
    assert [i.size for i in refined] == [(64, 64), (64, 64)]
    assert pixels(refined) == pixels(again)
    assert pixels(refined) != pixels(alone)
    later = base.run(spec(refiner_start=0.75), refiner=refiner)
    assert pixels(later) != pixels(refined)  # where the refiner takes over matters
    assert len(base.run(spec(refiner_start=0.5), refiner=base)) == 2  # a model may refine its own latents


def _task(**fields: Any) -> Any:
    element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": BUILTIN_SDXL_AIR, "positivePrompt": "x",
               "width": 64, "height": 64, "steps": 4, "seed": 1, **fields}
    decoded = decode_frame(json.dumps([element]))[0]
    return decoded


def test_the_engine_runs_a_refiner_and_refuses_what_cannot_be_refined(engine):
    ok = _task(refiner={"model": BUILTIN_SDXL_AIR, "startStep": 2})
    assert ok.error is None, ok.error
    images = asyncio.run(engine.generate(ok.task, team="t", owner="o"))
    assert len(images) == 1 and images[0].data.startswith(b"\x89PNG")

    sd1 = _task(model="wisp:tiny-sd15@1", refiner={"model": BUILTIN_SDXL_AIR})
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.generate(sd1.task, team="t", owner="o"))
    assert info.value.parameter == "refiner" and "SDXL" in str(info.value)
    wrong = _task(refiner={"model": "wisp:tiny-sd15@1"})
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.generate(wrong.task, team="t", owner="o"))
    assert info.value.parameter == "refiner.model"


@pytest.mark.parametrize(
    ("refiner", "extra", "parameter"),
    [
        ({"model": BUILTIN_SDXL_AIR, "startStep": 4}, {}, "refiner.startStep"),
        ({"model": BUILTIN_SDXL_AIR, "startStep": 2, "startStepPercentage": 50}, {}, "refiner.startStepPercentage"),
        ({"model": BUILTIN_SDXL_AIR}, {"hiresFix": True}, "refiner"),
        ({"model": BUILTIN_SDXL_AIR, "bogus": 1}, {}, "refiner.bogus"),
    ],
)
def test_bad_refiners_are_refused_on_the_wire(refiner, extra, parameter):
    decoded = _task(refiner=refiner, **extra)
    assert decoded.error is not None
    assert decoded.error.parameter == parameter, decoded.error
