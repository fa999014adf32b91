"""A generated image's parameters as AUTOMATIC1111 writes them ("infotext"), for the PNG ``parameters`` chunk.

A1111, ComfyUI's loaders, InvokeAI and Civitai read this text back to show how
an image was made or to send it back to a form::

    a red circle
    Negative prompt: blurry
    Steps: 20, Sampler: Default, CFG scale: 7, Seed: 42, Size: 64x64, Model: wisp:shapes-sd15@1, …

The text depends only on the job and the seed, so equal requests still give
equal bytes.  Sampler names are wisp's (Runware's) scheduler names; model and
LoRA hashes are the first ten hex digits of the file's SHA-256 (A1111's
"AutoV2" short hash) where the file is an upload.
"""

from __future__ import annotations

from engine.jobs import InferenceJob


def _value(text: str, always: bool = False) -> str:
    """A parameter value as A1111 writes it: quoted when it holds a comma, a quote or a line break (or ``always``)."""
    if always or any(c in text for c in ',"\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _number(value: float) -> str:
    return f"{value:g}"


def parameters_text(job: InferenceJob, seed: int, size: tuple[int, int]) -> str:
    """The infotext of one image of ``job``: ``size`` is the image's own (after hires fix or outpaint)."""
    lines = [job.prompt.replace("\r", "")]
    if job.negative_prompt:
        lines.append("Negative prompt: " + job.negative_prompt.replace("\r", ""))
    fields: list[tuple[str, str]] = [
        ("Steps", str(job.steps)),
        ("Sampler", _value(job.scheduler)),
        ("CFG scale", _number(job.cfg_scale)),
        ("Seed", str(seed)),
        ("Size", f"{size[0]}x{size[1]}"),
    ]
    if job.model.sha256:
        fields.append(("Model hash", job.model.sha256[:10]))
    fields.append(("Model", _value(job.model.name or job.model.air)))
    fields.append(("AIR", _value(job.model.air)))
    if job.clip_skip:
        fields.append(("Clip skip", str(job.clip_skip + 1)))  # A1111 counts the last layer as 1
    if job.seed_image is not None or job.init_bytes is not None:
        fields.append(("Denoising strength", _number(job.strength)))
    if job.hires is not None:
        width, height, strength, steps = job.hires
        fields += [("Hires resize", f"{width}x{height}"), ("Hires steps", str(steps)), ("Hires denoising strength", _number(strength))]
    if job.loras:
        fields.append(("Lora hashes", _value(", ".join(f"{lora.air}: {lora.sha256[:10]}" for lora in job.loras), always=True)))
        fields.append(("Lora weights", _value(", ".join(f"{lora.air}: {_number(lora.weight)}" for lora in job.loras), always=True)))
    if job.controlnets:
        for i, control in enumerate(job.controlnets):
            described = f"Model: {control.air}, Weight: {_number(control.scale)}"
            if control.preprocessor:
                described += f", Preprocessor: {control.preprocessor}"
            fields.append((f"ControlNet {i}", _value(described)))
    if job.refiner is not None:
        fields += [("Refiner", _value(job.refiner.model.name or job.refiner.model.air)), ("Refiner switch at", _number(job.refiner.start))]
    if job.prompt_weighting:
        fields.append(("Prompt weighting", job.prompt_weighting))
    fields.append(("Version", "wisp"))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)
