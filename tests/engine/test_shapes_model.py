"""``wisp:shapes-sd15@1`` draws what it is asked (issue 17), judged by the metric in engine.builtin.shapes.scene.

Small counts here; the ≥ 90 % figure over 120 prompt × seed pairs is bench/shapes.py's (bench/RESULTS.md).
The test draws at the model's defaults (CFG 3): a default that oversaturates shows here first.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import uuid
from typing import Any

import pytest
from PIL import Image

from engine.builtin.shapes import MODEL_FOLDER, SHAPES_AIR
from engine.builtin.shapes.scene import (
    COLOURS, CONCEPT, CONCEPT_PROMPT, WORDS, caption, concept_images, judge, metric_cases, parse_prompt, render, sample_scene,
)  # fmt: skip
from protocol.frames import decode_frame


def _task(**fields: Any) -> Any:
    element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": SHAPES_AIR, "width": 64, "height": 64, **fields}
    decoded = decode_frame(json.dumps([element]))[0]
    assert decoded.error is None, decoded.error
    return decoded.task


def _draw(engine: Any, **fields: Any) -> Image.Image:
    images = asyncio.run(engine.generate(_task(**fields), team="shapes", owner="t"))
    return Image.open(io.BytesIO(images[0].data))


def test_rendered_scenes_pass_the_metric_and_wrong_colours_fail_it():
    rng = random.Random(5)
    for _ in range(40):
        scene = sample_scene(rng)
        picture = render(scene)
        assert judge(picture, scene.colour, scene.background, scene.position).ok
        other = next(c for c in COLOURS if c not in (scene.colour, scene.background))
        assert not judge(picture, other, scene.background, scene.position).shape_ok
        assert not judge(picture, scene.colour, other, scene.position).background_ok
        moved = "centre" if scene.position != "centre" else "top left"
        assert not judge(picture, scene.colour, scene.background, moved).shape_ok


def test_captions_in_any_order_say_what_the_scene_is():
    rng = random.Random(6)
    for _ in range(60):
        scene = sample_scene(rng)
        named = parse_prompt(caption(scene, rng, drop=0.0))
        assert named == {"colour": scene.colour, "shape": scene.shape, "position": scene.position, "size": scene.size,
                         "background": scene.background}  # fmt: skip


def test_the_shipped_tokenizer_gives_each_word_a_token_and_spells_unknown_ones():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(MODEL_FOLDER / "tokenizer"))
    for word in WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert len(tokenizer.tokenize("sks")) > 1


def test_the_model_draws_the_named_colours_where_they_belong(engine):
    cases = metric_cases(12, seed=77)
    passed = sum(
        judge(_draw(engine, positivePrompt=c.prompt, seed=c.seed), c.scene.colour, c.scene.background, c.scene.position).ok
        for c in cases
    )
    tiny = sum(
        judge(_draw(engine, model="wisp:tiny-sd15@1", positivePrompt=c.prompt, seed=c.seed), c.scene.colour,
              c.scene.background, c.scene.position).ok
        for c in cases
    )  # fmt: skip
    # Measured 12/12 here (bench/shapes.py: the goal is 90 % over 120): the test holds the model to at least 9
    # and the random-weight model, on the same prompts, to at most 1.
    assert passed >= 9, f"{passed}/12 pass"
    assert tiny <= 1, f"the random-weight model passes {tiny}/12: the metric does not discriminate"


def _png_uri(picture: Image.Image) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a_lora_trained_through_the_training_task_teaches_a_new_word(engine):
    element = {"taskType": "training", "taskUUID": str(uuid.uuid4()), "model": "wisp:sd1x@lora-training",
               "baseModel": SHAPES_AIR, "inputs": {"dataset": [_png_uri(p) for p in concept_images(6)]},
               "instance_prompt": CONCEPT_PROMPT, "trainingSteps": 300, "learningRate": 1e-3, "rank": 8, "seed": 1}
    decoded = decode_frame(json.dumps([element]))[0]
    assert decoded.error is None, decoded.error

    async def quiet(status: str, message: str, **fields: Any) -> None:
        return None

    outcome = asyncio.run(engine.train(decoded.task, "shapes", quiet))
    seeds = range(300, 312)
    lora = [{"model": outcome.air, "weight": 1.0}]
    taught = sum(judge(_draw(engine, positivePrompt=CONCEPT_PROMPT, seed=s, lora=lora), CONCEPT.colour, CONCEPT.background).ok
                 for s in seeds)  # fmt: skip
    base = sum(judge(_draw(engine, positivePrompt=CONCEPT_PROMPT, seed=s), CONCEPT.colour, CONCEPT.background).ok for s in seeds)
    # Measured 8/12 with and 1/12 without on these seeds (bench/shapes.py, 20 seeds: 75 % and 15 %; the misses draw the
    # purple star red or blue: see bench/RESULTS.md).  The run is seeded and one-threaded, so these counts repeat.
    assert taught >= 7, f"with the LoRA {taught}/12 draw the concept"
    assert base <= 3, f"without it {base}/12 already do"
    assert taught - base >= 5, f"the LoRA adds too little: {taught}/12 with, {base}/12 without"


def test_a_single_file_export_of_the_model_loads_with_its_own_configuration(engine_data_dir, tmp_path):
    import numpy as np
    import torch

    from engine.builtin.sd15_config import sd1_config_for
    from engine.pipelines.stable_diffusion import GenerationSpec
    from engine.pipelines.stable_diffusion.loading import load_folder, load_single_file
    from tests.fixtures.checkpoints import write_sd15_single_file

    torch.set_num_threads(1)
    path = write_sd15_single_file(MODEL_FOLDER, tmp_path / "shapes.safetensors")
    assert sd1_config_for(engine_data_dir, path) == MODEL_FOLDER
    spec = GenerationSpec(prompt="a red star on a blue background", negative_prompt=None, width=64, height=64, steps=4,
                          cfg_scale=5.0, scheduler="Default", seeds=(1,))  # fmt: skip
    exported = load_single_file(path, MODEL_FOLDER).run(spec)[0]
    shipped = load_folder(MODEL_FOLDER).run(spec)[0]
    assert np.array_equal(np.asarray(exported), np.asarray(shipped))
