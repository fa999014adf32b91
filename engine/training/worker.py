"""The training process: ``python -m engine.training.worker`` (started by :mod:`engine.training.runner`).

Training runs in its own process so that a long job can neither hold the
server's GIL (pings stay prompt) nor take the server down if it crashes, and
so that cancel is a plain kill.  The conversation is line-delimited JSON:

- stdin: one line, the job (see ``runner._job_document``); then nothing.  When
  the server goes away, stdin reaches EOF and this process exits at once, so
  no orphan keeps a device busy after a ``kill -9`` of the server.
- stdout: events ``{"event": "status"|"progress"|"done"|"error", …}``.
  Progress is reported at most every ``progress_interval_s`` (and on the
  first and last step), so a long job cannot flood the server.
- stderr: diagnostics, kept in the job folder (never shown to clients).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO


def _emit(out: TextIO, event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()


def _watch_parent(stdin: TextIO) -> None:
    """Exit as soon as the server's end of the pipe closes (server stopped or killed)."""
    stdin.read()
    os._exit(3)


def _load_base(job: dict[str, Any]) -> Any:
    """The base checkpoint's diffusers pipeline, loaded the way the server loads it."""
    from engine.models import ModelDefaults, ModelEntry, ModelLibrary

    base = job["base"]
    entry = ModelEntry(
        air=base["air"], name=base["air"], category="checkpoint", architecture=base["architecture"],
        defaults=ModelDefaults(), builtin=base["builtin"], file=Path(base["file"]) if base.get("file") else None,
    )
    library = ModelLibrary(Path(job["data_dir"]), job["device"], registry=None, store=None)  # type: ignore[arg-type]
    return library._loader(entry)()


def _class_images(model: Any, job: dict[str, Any], out: TextIO) -> list[Any]:
    """Prior-preservation images drawn by the base model itself from the class prompt."""
    import torch

    count, size = job["class_images"], job["resolution"]
    pipe = model.base
    images = []
    for i in range(count):
        _emit(out, "status", status="deploying_gpu", message=f"drawing class image {i + 1} of {count}")
        with torch.inference_mode():
            result = pipe(
                prompt=job["class_prompt"], negative_prompt=job.get("negative_prompt"), width=size, height=size,
                num_inference_steps=job.get("class_steps", 20), generator=torch.Generator().manual_seed(job["loop"]["seed"] + i),
                output_type="pil",
            )
        images.append(result.images[0])
    return images


def run(job: dict[str, Any], out: TextIO) -> None:
    import diffusers
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file

    from engine.training import loop

    torch.set_num_threads(job["threads"])
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    _emit(out, "status", status="deploying_gpu", message="loading the base model")
    model = _load_base(job)
    pipe = model.base
    pipe.set_progress_bar_config(disable=True)
    config = loop.LoopConfig(**job["loop"])
    generator = torch.Generator().manual_seed(config.seed)
    images = [Image.open(p).convert("RGB") for p in job["images"]]
    prior = None
    if job.get("class_prompt") and job["class_images"] > 0:
        prior = loop.encode(pipe, _class_images(model, job, out), job["class_prompt"], generator)
    instance = loop.encode(pipe, images, job["caption"], generator)
    loop.add_adapter(pipe.unet, config)

    steps = config.steps
    _emit(out, "status", status="training_started", message=f"training {steps} steps", step=0, steps=steps, progress=0.0)
    interval = job.get("progress_interval_s", 0.5)
    last_report = 0.0
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        nonlocal last_report
        now = time.perf_counter()
        if step in (1, steps) or now - last_report >= interval:
            last_report = now
            _emit(out, "progress", step=step, steps=steps, loss=loss, progress=round(step / steps, 4), elapsed_s=now - started)

    loss = loop.train(pipe, instance, config, prior=prior, generator=generator, on_step=on_step)
    seconds = time.perf_counter() - started
    _emit(out, "status", status="training_success", message=f"{steps} steps in {seconds:.1f} s, final loss {loss:.4f}",
          step=steps, steps=steps, loss=loss, progress=1.0)
    _emit(out, "status", status="trained_model_compressing", message="writing the adapter")
    state = loop.lora_state_dict(pipe.unet, config)
    path = Path(job["job_dir"]) / "lora.safetensors"
    tmp = path.with_suffix(".part")
    # one metadata key: safetensors writes metadata in hash-map order, and a seeded run must give the same bytes
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    _emit(out, "done", file=str(path), loss=loss, steps=steps, seconds=seconds, seconds_per_step=seconds / steps)


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints goes to the log, not into the event stream
    job = json.loads(sys.stdin.readline())
    threading.Thread(target=_watch_parent, args=(sys.stdin,), daemon=True).start()
    try:
        run(job, out)
    except BaseException as exc:  # reported as a line; the traceback stays in the log
        import traceback

        traceback.print_exc()
        _emit(out, "error", kind=type(exc).__name__, message=str(exc)[:500])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
