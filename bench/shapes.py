"""``wisp:shapes-sd15@1`` draws what it is asked, and a LoRA trained through wisp teaches it a new word.

Why (issue 17): the built-in model a newcomer meets first must draw the prompt,
measured rather than hoped.  Three parts, each against a baseline in the same run:

* **metric**: ``--cases`` prompt × seed pairs (random scenes, every attribute named,
  in the captions' free word orders; :func:`engine.builtin.shapes.scene.metric_cases`),
  generated through wisp's engine at the model's defaults (20 steps, CFG 2) and
  graded by :func:`engine.builtin.shapes.scene.judge`: the named colour must dominate
  the named shape's region and the named background colour the border.  Goal ≥ 90 %.
  Baseline: the random-weight ``wisp:tiny-sd15@1`` on the same prompts.  ``--cfg-sweep``
  grades the shapes model again at other CFG scales (how the default was chosen).
* **speed**: seconds per image at 64 and 128 px on one torch thread, through the
  engine vs diffusers' pipeline called directly on the same folder.
* **concept**: a LoRA trained through the ``training`` task on ``--concept-images``
  pictures of a purple star captioned "a sks on a white background"; the same prompt
  with and without it over ``--concept-seeds`` seeds, graded as a purple shape in
  the centre on white.

Run: ``.venv/bin/python bench/shapes.py [--cases 120] [--concept-steps 300] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from bench._common import dump_json, environment, log, render_table  # noqa: E402

SHAPES = "wisp:shapes-sd15@1"
TINY = "wisp:tiny-sd15@1"


def decode_one(element: dict[str, Any]) -> Any:
    """The task of a one-element frame (asserting that it decodes)."""
    from protocol.frames import decode_frame

    decoded = decode_frame(json.dumps([element]))
    assert isinstance(decoded, list) and decoded[0].error is None, decoded
    return decoded[0].task


def inference(model: str, prompt: str, seed: int, side: int = 64, lora: list[dict] | None = None, cfg: float | None = None) -> Any:
    element = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": model, "positivePrompt": prompt,
               "width": side, "height": side, "seed": seed, "lora": lora or []}
    if cfg is not None:
        element["CFGScale"] = cfg
    return decode_one(element)


def generate(engine: Any, task: Any) -> Any:
    from PIL import Image

    images = asyncio.run(engine.generate(task, team="bench", owner="bench"))
    return Image.open(io.BytesIO(images[0].data))


def metric(engine: Any, cases: list[Any], model: str, cfg: float | None = None) -> dict[str, Any]:
    from engine.builtin.shapes.scene import judge

    shape_ok = background_ok = both = 0
    for case in cases:
        image = generate(engine, inference(model, case.prompt, case.seed, cfg=cfg))
        verdict = judge(image, case.scene.colour, case.scene.background, case.scene.position, case.scene.size)
        shape_ok += verdict.shape_ok
        background_ok += verdict.background_ok
        both += verdict.ok
    n = len(cases)
    return {"model": model, "cfg": "default" if cfg is None else cfg, "cases": n, "shape_colour": shape_ok / n,
            "background": background_ok / n, "both": both / n}


def speed(engine: Any, folder: Path, repeats: int) -> list[dict[str, Any]]:
    import torch
    from diffusers import StableDiffusionPipeline

    from engine.models import BUILTIN_MODELS

    cfg = BUILTIN_MODELS[SHAPES].defaults.cfg_scale  # what the engine uses when a request names none
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a large red star at the top left on a blue background"
    rows = []
    for side in (64, 128):
        generate(engine, inference(SHAPES, prompt, 0, side))  # warm both sides
        pipe(prompt, height=side, width=side, num_inference_steps=20, guidance_scale=cfg)
        wisp_s, direct_s = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            generate(engine, inference(SHAPES, prompt, i, side))
            wisp_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipe(prompt, height=side, width=side, num_inference_steps=20, guidance_scale=cfg,
                 generator=torch.Generator().manual_seed(i))  # fmt: skip
            direct_s.append(time.perf_counter() - t0)
        wisp_mean, direct_mean = sum(wisp_s) / repeats, sum(direct_s) / repeats
        rows.append({"side": side, "wisp_s": wisp_mean, "direct_s": direct_mean, "ratio": wisp_mean / direct_mean})
    return rows


def concept(engine: Any, images: int, steps: int, seeds: int) -> dict[str, Any]:
    from engine.builtin.shapes.scene import CONCEPT, CONCEPT_PROMPT, CONCEPT_WORD, concept_images, judge

    uris = []
    for picture in concept_images(images):
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    element = {"taskType": "training", "taskUUID": str(uuid.uuid4()), "model": "wisp:sd1x@lora-training",
               "baseModel": SHAPES, "inputs": {"dataset": uris}, "instance_prompt": CONCEPT_PROMPT,
               "trainingSteps": steps, "learningRate": 1e-3, "rank": 8, "seed": 1}
    task = decode_one(element)

    async def quiet(status: str, message: str, **fields: Any) -> None:
        return None

    t0 = time.perf_counter()
    outcome = asyncio.run(engine.train(task, "bench", quiet))
    train_s = time.perf_counter() - t0
    with_lora = without = 0
    for seed in range(seeds):
        for lora, counter in (([{"model": outcome.air, "weight": 1.0}], "with"), (None, "without")):
            image = generate(engine, inference(SHAPES, CONCEPT_PROMPT, 500 + seed, lora=lora))
            ok = judge(image, CONCEPT.colour, CONCEPT.background, CONCEPT.position).ok
            if counter == "with":
                with_lora += ok
            else:
                without += ok
    return {"word": CONCEPT_WORD, "images": images, "steps": steps, "train_s": train_s, "seeds": seeds,
            "with_lora": with_lora / seeds, "without_lora": without / seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=10, help="timed images per size and side")
    parser.add_argument("--concept-images", type=int, default=6)
    parser.add_argument("--concept-steps", type=int, default=300)
    parser.add_argument("--concept-seeds", type=int, default=20)
    parser.add_argument("--cfg-sweep", default="", help="comma-separated CFG scales to grade the shapes model at too")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: metric, speed, concept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from engine.builtin.shapes import MODEL_FOLDER
    from engine.builtin.shapes.scene import metric_cases
    from engine.core import Engine, EngineConfig

    result: dict[str, Any] = {"environment": environment()}
    with tempfile.TemporaryDirectory(prefix="wisp-bench-shapes-") as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp), torch_threads=1))
        engine.start()
        try:
            if "metric" not in skip:
                cases = metric_cases(args.cases)
                log(f"metric: {len(cases)} prompt × seed pairs, shapes then tiny")
                result["metric"] = [metric(engine, cases, SHAPES), metric(engine, cases, TINY)]
                result["metric"] += [metric(engine, cases, SHAPES, float(c)) for c in filter(None, args.cfg_sweep.split(","))]
                print(render_table(["model", "CFG", "cases", "shape colour", "background", "both (goal ≥ 0.90)"],
                                   [[m["model"], m["cfg"], m["cases"], f"{m['shape_colour']:.1%}", f"{m['background']:.1%}",
                                     f"{m['both']:.1%}"] for m in result["metric"]]))  # fmt: skip
            if "speed" not in skip:
                log("speed: 20 steps at the default CFG, one torch thread")
                result["speed"] = speed(engine, MODEL_FOLDER, args.repeats)
                print(render_table(["side", "wisp s/image", "diffusers s/image", "wisp/diffusers"],
                                   [[r["side"], f"{r['wisp_s']:.3f}", f"{r['direct_s']:.3f}", f"{r['ratio']:.3f}×"] for r in result["speed"]]))
            if "concept" not in skip:
                log(f"concept: training a LoRA on {args.concept_images} images, {args.concept_steps} steps")
                c = concept(engine, args.concept_images, args.concept_steps, args.concept_seeds)
                result["concept"] = c
                print(render_table(["concept", "images", "steps", "train s", "seeds", "with LoRA", "without (baseline)"],
                                   [[c["word"], c["images"], c["steps"], f"{c['train_s']:.0f}", c["seeds"],
                                     f"{c['with_lora']:.0%}", f"{c['without_lora']:.0%}"]]))  # fmt: skip
        finally:
            engine.stop()
    if args.json:
        dump_json(result)


if __name__ == "__main__":
    main()
