"""imageInference: a task becomes an :class:`~engine.jobs.InferenceJob` once, a job becomes images.

:meth:`Inference.prepare` runs in a worker thread (it reads the registry):
model, LoRAs, embeddings and VAE are resolved to content hashes, the model's
defaults applied, the scheduler named, the work limit and the img2img step
count checked, seeds drawn and the cost known.  :meth:`Inference.load_inputs`
reads the seed and mask images the request pointed at (network or disk,
never on the event loop).  :meth:`Inference.run` turns the job into a
generation spec (paths from hashes: whoever runs the job maps them to its own
store), queues it for the device (batching compatible jobs) and reports
``Started`` / ``Step`` / ``Finished`` / ``Failed`` to the sink.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
from typing import Any, Callable

import msgspec

from engine.controlnets import BUILTIN_CONTROLNETS, scale_and_mode, step_range
from engine.errors import EngineError, EngineStopped, InvalidInput, JobCancelled, QueueFull, WorkLimitExceeded
from engine.file_leases import FileLeases
from engine.images.codec import FORMATS, decode_image, encode_image
from engine.images.infotext import parameters_text
from engine.images.sources import load_image_bytes
from engine.images.store import ImageStore
from engine.jobs import (
    ControlRef, EmbeddingRef, Failed, Finished, GeneratedImage, InferenceJob, LoraRef, ModelRef, RefinerRef, Sink, Started, Step, VaeRef,
)
from engine.models import BUILTIN_MODELS, ModelEntry, ModelLibrary, architecture_defaults, family
from engine.net import NetPolicy
from engine.pipelines import families
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.pipeline import batch_key
from engine.preprocessors import check as check_preprocessor
from engine.pricing import image_cost
from engine.schedulers import canonical_scheduler
from engine.workqueue import Batchable, FairQueue, StepRelay, submit, withdraw
from protocol.inference import ImageInference, img2img_steps_error

log = logging.getLogger("wisp.engine")

MAX_RANDOM_SEED = 2**31 - 1


def report_failure(sink: Sink, task_uuid: str, exc: BaseException, errors: list[BaseException] | None) -> None:
    """A job's exception as its Failed event; in-process callers that asked for it (``errors``) get the exception too."""
    if errors is not None:
        errors.append(exc)
    sink(failure(task_uuid, exc))


def failure(task_uuid: str, exc: BaseException) -> Failed:
    """The :class:`Failed` event for an exception: engine errors keep their code; anything else is logged, never shown."""
    if isinstance(exc, EngineError):
        return Failed(task_uuid=task_uuid, code=exc.code, message=exc.message, parameter=exc.parameter, extra=dict(exc.extra),
                      retryable=isinstance(exc, QueueFull) or getattr(exc, "retryable", False))
    log.error("job %s failed", task_uuid, exc_info=exc)
    return Failed(task_uuid=task_uuid, code="internalError", message="the server failed while running this task; it has been logged")


class Inference:
    def __init__(
        self, library: ModelLibrary, images: ImageStore, queue: FairQueue, net: NetPolicy, stopping: threading.Event,
        max_work: float, batching: bool, leases: FileLeases | None = None, png_parameters: bool = True,
    ) -> None:
        """``png_parameters``: whether PNGs carry their generation parameters when the request does not say."""
        self.library = library
        self.png_parameters = png_parameters
        self.leases = leases or FileLeases()
        """The stored files running jobs use: a model deleted meanwhile keeps its file until they finish."""
        self.images = images
        self.queue = queue
        self.net = net
        self.stopping = stopping
        self.max_work = max_work
        self.batching = batching
        self._cancels: dict[tuple[str, str], threading.Event] = {}
        """(team, taskUUID) → the cancel flag of each job between :meth:`run`'s start and end (taskCancel)."""

    # ---- task → job (worker thread) -------------------------------------------------

    @staticmethod
    def needs_registry(task: ImageInference) -> bool:
        """Whether preparing ``task`` reads the registry (an uploaded model, LoRAs, embeddings or a VAE).

        A request for a built-in model with none of those is resolved from
        memory alone, so it is prepared where it arrives, without a thread hop.
        """
        return (task.model not in BUILTIN_MODELS or bool(task.lora) or bool(task.embeddings) or bool(task.vae)
                or any(c.model not in BUILTIN_CONTROLNETS for c in task.controlNet)
                or (task.refiner is not None and task.refiner.model not in BUILTIN_MODELS))

    def prepare(self, task: ImageInference, team: str, owner: str) -> InferenceJob:
        """Resolve and check ``task`` for ``team``: the job, or an :class:`EngineError` to answer before any ack."""
        entry = self.library.resolve(task.model, team)
        defaults = entry.defaults
        scheduler = canonical_scheduler(task.scheduler or defaults.scheduler)
        steps = task.steps or defaults.steps
        strength = task.strength if task.strength is not None else defaults.strength
        if task.outpaint is not None and task.strength is None:
            strength = 1.0  # the new margins start as noise: denoise them fully
        if task.seedImage is not None:  # img2img/inpainting: at least one denoising step, the model's defaults included
            kind = families.family_of(entry.architecture)
            pndm = scheduler in ("PNDM", "PNDMScheduler") or (scheduler == "Default" and kind is not None and kind.default_scheduler_adds_a_step)
            err = img2img_steps_error(steps, strength, strength_given=task.strength is not None, extra_step=pndm and task.maskImage is None)
            if err is not None:
                raise InvalidInput(err.message, parameter=err.parameter if isinstance(err.parameter, str) else None, min=err.min)
        hires = None
        if task.hires is not None:
            fix = task.hires
            hires_steps = fix.steps or steps
            if int(hires_steps * fix.strength) < 1:
                hires_steps = math.ceil(1 / fix.strength)  # at least one denoising step in the second pass
            hires = (max(64, round(task.width * fix.scale / 8) * 8), max(64, round(task.height * fix.scale / 8) * 8),
                     fix.strength, hires_steps)
        work = task.width * task.height / 1_048_576 * steps * task.numberResults
        if hires is not None:
            work += hires[0] * hires[1] / 1_048_576 * int(hires[3] * hires[2]) * task.numberResults
        if work > self.max_work:
            raise WorkLimitExceeded(
                f"this request is {work:.1f} megapixel-steps (width × height / 2^20 × steps × numberResults); "
                f"this server allows at most {self.max_work:g} per request: fewer images, steps or pixels",
                parameter="steps", max=self.max_work,
            )
        loras = []
        for index, ref in enumerate(task.lora):
            lora = self.library.resolve_lora(ref.model, team, entry, f"lora[{index}].model")
            loras.append(LoraRef(air=lora.air, sha256=lora.sha256, weight=lora.default_weight if ref.weight is None else ref.weight))
        extras = self.library.resolve_extras(task, team, entry)
        embeddings = tuple(
            EmbeddingRef(sha256=use.key, trigger=use.trigger, kind=use.kind, weight=use.weight, parameter=use.parameter)
            for use in extras["embeddings"]
        )
        vae = extras["vae"]
        controlnets = []
        for index, item in enumerate(task.controlNet):
            where = f"controlNet[{index}]"
            resolved = self.library.resolve_controlnet(item.model, team, entry, f"{where}.model")
            start, end = step_range(steps, item.startStep, item.endStep, item.startStepPercentage, item.endStepPercentage, where)
            scale, guess_mode = scale_and_mode(item.weight, item.controlMode)
            preprocessor = None if item.preprocessor is None else check_preprocessor(item.preprocessor, f"{where}.preprocessor")
            controlnets.append(ControlRef(air=resolved.air, family=resolved.family, sha256=resolved.sha256, scale=scale, start=start,
                                          end=end, guess_mode=guess_mode, guide_image=item.guideImage, parameter=where,
                                          preprocessor=preprocessor, low_threshold=item.lowThresholdCanny,
                                          high_threshold=item.highThresholdCanny))
        refiner = None if task.refiner is None else self._refiner(task, team, entry, steps)
        if task.seed is not None:
            seeds = tuple((task.seed + i) % 2**63 for i in range(task.numberResults))
        else:
            seeds = tuple(secrets.randbelow(MAX_RANDOM_SEED) for _ in range(task.numberResults))
        return InferenceJob(
            task_uuid=task.taskUUID, team=team, owner=owner, model=model_ref(entry),
            prompt=task.positivePrompt, negative_prompt=task.negativePrompt, width=task.width, height=task.height,
            steps=steps, cfg_scale=task.CFGScale if task.CFGScale is not None else defaults.cfg_scale, scheduler=scheduler,
            seeds=seeds, clip_skip=task.clipSkip if task.clipSkip is not None else defaults.clip_skip, strength=strength,
            mask_margin=task.maskMargin, loras=tuple(loras), embeddings=embeddings,
            vae=None if vae is None else VaeRef(air=vae.air, sha256=vae.path.stem, family=vae.family, parameter=vae.parameter),
            seed_image=task.seedImage, mask_image=task.maskImage, output_format=task.outputFormat,
            output_quality=task.outputQuality, progress=bool(task.includeProgress), previews=bool(task.includePreviews),
            cost_per_image=image_cost(task.width, task.height, steps), ttl_s=task.ttl, controlnets=tuple(controlnets),
            hires=hires, prompt_weighting=None if task.promptWeighting is None else task.promptWeighting.lower(),
            outpaint=None if task.outpaint is None else (task.outpaint.top, task.outpaint.right, task.outpaint.bottom,
                                                         task.outpaint.left, task.outpaint.blur),
            png_parameters=self.png_parameters if task.embedParameters is None else task.embedParameters, refiner=refiner,
        )

    def _refiner(self, task: ImageInference, team: str, entry: ModelEntry, steps: int) -> RefinerRef:
        """``task.refiner`` resolved: a checkpoint of the base's family, a family that refines (SDXL), a split inside the steps."""
        assert task.refiner is not None
        base_family = families.family_of(entry.architecture)
        if base_family is None or not base_family.refines:
            raise InvalidInput(f"refiner needs an SDXL-family model; {entry.air} is {entry.architecture}", parameter="refiner")
        second = self.library.resolve(task.refiner.model, team, "refiner.model")
        if families.family_of(second.architecture) is not base_family:
            raise InvalidInput(f"the refiner must be a {base_family.title} checkpoint like the model; {second.air} is "
                               f"{second.architecture}", parameter="refiner.model")  # fmt: skip
        if task.refiner.startStep is not None and task.refiner.startStep >= steps:
            raise InvalidInput(f"refiner.startStep must be below steps ({steps})", parameter="refiner.startStep", max=steps - 1)
        return RefinerRef(model=model_ref(second), start=task.refiner.start_fraction(steps))

    async def load_inputs(self, job: InferenceJob, own_hosts: frozenset[str] = frozenset()) -> InferenceJob:
        """The job with its seed and mask images read (URLs fetched with the guard, files off the loop)."""
        if job.inputs_loaded:
            return job
        init = await self._read(job.seed_image, "seedImage", own_hosts, job.team) if job.seed_image is not None else None
        mask = await self._read(job.mask_image, "maskImage", own_hosts, job.team) if job.mask_image is not None else None
        controls = []
        for c in job.controlnets:
            if c.guide_bytes is None:
                c = msgspec.structs.replace(c, guide_bytes=await self._read(c.guide_image, f"{c.parameter}.guideImage", own_hosts, job.team))
            controls.append(c)
        return msgspec.structs.replace(job, init_bytes=init, mask_bytes=mask, controlnets=tuple(controls))

    async def _read(self, ref: str, parameter: str, own_hosts: frozenset[str], team: str) -> bytes:
        """An input image's bytes; an imageUUID must be ``team``'s own (another team's looks missing)."""
        return await load_image_bytes(ref, parameter, self.images, self.net, own_hosts, team)

    # ---- job → spec (worker thread or loop: no I/O but decoding the inputs) ---------------

    def entry(self, ref: ModelRef) -> ModelEntry:
        """The library entry a job's model reference names (no registry read: the hash says which file)."""
        if ref.builtin:
            return BUILTIN_MODELS[ref.air]
        assert ref.sha256 is not None
        return ModelEntry(air=ref.air, name=ref.name, category="checkpoint", architecture=ref.architecture,
                          defaults=architecture_defaults(ref.architecture), builtin=False,
                          file=self.library.store.path_for(ref.sha256), sha256=ref.sha256)

    def spec(self, job: InferenceJob, on_step: Callable[[int, int, Any], None] | None = None) -> GenerationSpec:
        from engine.embeddings import EmbeddingUse
        from engine.lora import LoraUse
        from engine.vae import VaeUse

        path_for = self.library.store.path_for
        return GenerationSpec(
            prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width, height=job.height, steps=job.steps,
            cfg_scale=job.cfg_scale, scheduler=job.scheduler, seeds=job.seeds, clip_skip=job.clip_skip,
            **self._inputs(job), hires=job.hires, prompt_weighting=job.prompt_weighting,
            refiner_start=None if job.refiner is None else job.refiner.start,
            strength=job.strength, mask_margin=job.mask_margin,
            loras=tuple(LoraUse(key=lora.sha256, path=path_for(lora.sha256), weight=lora.weight) for lora in job.loras),
            embeddings=tuple(
                EmbeddingUse(key=e.sha256, path=path_for(e.sha256), trigger=e.trigger, kind=e.kind, weight=e.weight, parameter=e.parameter)
                for e in job.embeddings
            ),
            vae=None if job.vae is None else VaeUse(key=f"vae|{job.vae.sha256}|{job.vae.family}", air=job.vae.air,
                                                    path=path_for(job.vae.sha256), family=job.vae.family, parameter=job.vae.parameter),
            controlnets=tuple(self.library.control_use(c, job.width, job.height) for c in job.controlnets),
            on_step=on_step, step_latents=job.progress and job.previews,
        )

    @staticmethod
    def _inputs(job: InferenceJob) -> dict[str, Any]:
        """The spec's init and mask images; for ``outpaint``, the extended canvas and a mask of its margins."""
        init = decode_image(job.init_bytes, "seedImage") if job.init_bytes is not None else None
        mask = decode_image(job.mask_bytes, "maskImage") if job.mask_bytes is not None else None
        if job.outpaint is None or init is None:
            return {"init_image": init, "mask_image": mask}
        from engine.images.outpaint import extend

        canvas, margins = extend(init.convert("RGB"), job.outpaint, job.width, job.height)
        return {"init_image": canvas, "mask_image": margins}

    # ---- running ------------------------------------------------------------------

    async def run(
        self, job: InferenceJob, sink: Sink, own_hosts: frozenset[str] = frozenset(), errors: list[BaseException] | None = None,
    ) -> None:
        """Run ``job``, reporting to ``sink``; ends with exactly one Finished or Failed event.

        ``errors``: in-process callers that want the exception behind a
        Failed event (tests) get it appended there too.
        """
        files = [job.model.sha256, *(lora.sha256 for lora in job.loras), *(e.sha256 for e in job.embeddings),
                 job.vae.sha256 if job.vae is not None else None, *(c.sha256 for c in job.controlnets)]
        with self.leases.hold(files):
            await self._run(job, sink, own_hosts, errors)

    async def _run(
        self, job: InferenceJob, sink: Sink, own_hosts: frozenset[str], errors: list[BaseException] | None,
    ) -> None:
        cancel = threading.Event()
        key = (job.team, job.task_uuid.lower())
        self._cancels[key] = cancel
        try:
            job = await self.load_inputs(job, own_hosts)
            if cancel.is_set():
                raise JobCancelled("cancelled by taskCancel before it started")
            entry = self.entry(job.model)
            relay = StepRelay(asyncio.get_running_loop(), lambda step, steps, previews: sink(Step(job.task_uuid, step, steps, previews)),
                              live=job.progress)
            on_step = self._step_reporter(relay, job.progress and job.previews, entry)
            if job.init_bytes is None and job.mask_bytes is None and not job.controlnets:
                spec = self.spec(job, on_step)  # nothing to decode: no thread hop
            else:
                spec = await asyncio.to_thread(self.spec, job, on_step)  # input images are decoded off the loop
            batch = None
            compatible = batch_key(spec)
            if compatible is not None and self.batching:
                batch = Batchable(key=(self.library.cache_key(entry), compatible),
                                  payload=(spec, job),
                                  run=lambda payloads: self._render_batch(entry, payloads))
            relay.begin()
            try:
                images = await submit(
                    self.queue, job.owner, lambda: self._render(entry, spec, job, cancel),
                    batch=batch, on_start_here=relay.started(lambda when: sink(Started(job.task_uuid, at=when))), cancel=cancel,
                )
            finally:
                relay.finish()  # every step is reported before the result
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            report_failure(sink, job.task_uuid, exc, errors)
            return
        finally:
            if self._cancels.get(key) is cancel:
                del self._cancels[key]
        sink(Finished(task_uuid=job.task_uuid, images=images))

    def cancel(self, team: str, task_uuid: str) -> bool:
        """``taskCancel``: a queued job ends at once, a running one after its current step; False if none runs."""
        cancel = self._cancels.get((team, task_uuid.lower()))
        if cancel is None:
            return False
        withdraw(self.queue, cancel)
        return True

    @staticmethod
    def _step_reporter(relay: StepRelay, previews: bool, entry: ModelEntry) -> Callable[[int, int, Any], None]:
        """The worker-thread step callback: (step, steps, previews when asked) to ``relay``, which makes the Step events.

        Every job reports its steps (the REST dialects show progress without
        asking for it); the relay hands them to the loop at once only when the
        client streams progress, else in bunches (see :class:`StepRelay`).
        """
        from engine.images.previews import preview_data_uris

        kind = family(entry.architecture)

        def on_step(step: int, steps: int, latents: Any) -> None:
            images = preview_data_uris(latents, kind) if previews and latents is not None else None
            relay.report(step, steps, images)

        return on_step

    def _render(
        self, entry: ModelEntry, spec: GenerationSpec, job: InferenceJob, cancel: threading.Event | None = None,
    ) -> list[GeneratedImage]:
        """Worker thread: generate, encode, store; stops between steps when the engine stops or ``cancel`` is set."""
        stopping = self.stopping

        def should_stop() -> bool:
            return stopping.is_set() or (cancel is not None and cancel.is_set())

        try:
            with (self.library.use(entry) as model, self.library.use_vae(spec) as spec,  # pinned: not evicted while it runs
                  self.library.use_controlnets(spec) as spec):
                if job.refiner is not None:
                    with self.library.use(self.entry(job.refiner.model)) as refiner:
                        images = model.run(spec, should_stop, refiner=refiner)
                else:
                    images = model.run(spec, should_stop)
                if spec.mask_image is not None and spec.init_image is not None:
                    images = keep_unmasked_pixels(images, spec.init_image, spec.mask_image)
                if spec.hires is not None:
                    images = self._hires_pass(model, spec, images, should_stop)
        except EngineStopped:
            if cancel is not None and cancel.is_set() and not stopping.is_set():
                raise JobCancelled("cancelled by taskCancel between denoising steps") from None
            raise
        return self._store(spec, images, job)

    @staticmethod
    def _hires_pass(model: Any, spec: GenerationSpec, images: list[Any], should_stop: Callable[[], bool]) -> list[Any]:
        """hiresFix's second pass: each image upscaled (Lanczos) to the larger size and refined by img2img with its seed.

        The request's LoRAs, embeddings and VAE apply again; ControlNets, a mask
        and progress reports belong to the first pass only.
        """
        from dataclasses import replace

        from PIL import Image

        assert spec.hires is not None
        width, height, strength, steps = spec.hires
        refined = []
        for seed, image in zip(spec.seeds, images):
            second = replace(spec, width=width, height=height, steps=steps, strength=strength, seeds=(seed,),
                             init_image=image.resize((width, height), Image.Resampling.LANCZOS), mask_image=None,
                             controlnets=(), hires=None, on_step=None)
            refined.extend(model.run(second, should_stop))
        return refined

    def _render_batch(
        self, entry: ModelEntry, payloads: list[tuple[GenerationSpec, InferenceJob]],
    ) -> list[list[GeneratedImage]]:
        """Worker thread: compatible one-image requests in one pipeline call (dynamic batching)."""
        with self.library.use(entry) as model:
            images = model.run_batch([payload[0] for payload in payloads], self.stopping.is_set)
        return [self._store(spec, [image], job) for (spec, job), image in zip(payloads, images)]

    def _store(self, spec: GenerationSpec, images: list[Any], job: InferenceJob) -> list[GeneratedImage]:
        _, ext, mime = FORMATS[job.output_format]
        cost = image_cost(spec.width, spec.height, spec.steps)
        results = []
        for seed, image in zip(spec.seeds, images):
            text = parameters_text(job, seed, image.size) if job.png_parameters and job.output_format == "PNG" else None
            data = encode_image(image, job.output_format, job.output_quality, parameters=text)
            image_uuid, name = self.images.put(data, ext, team=job.team, ttl_s=job.ttl_s)
            results.append(GeneratedImage(image_uuid=image_uuid, file_name=name, seed=seed, data=data, mime=mime, cost=cost))
        return results


def keep_unmasked_pixels(images: list[Any], init: Any, mask: Any) -> list[Any]:
    """Inpainting and outpainting: the seed image's own pixels, exactly, wherever the mask is black.

    The pipeline returns the whole picture decoded by the VAE, which changes
    every pixel a little; A1111, ComfyUI and Runware's clients expect the
    unmasked area back as sent (a grey mask value blends the two, so a
    feathered seam stays feathered).  Seed and mask are resized to the output
    the way the pipeline resized them (Lanczos, nearest)."""
    from PIL import Image

    size = images[0].size
    seed = init.convert("RGB")
    seed = seed if seed.size == size else seed.resize(size, Image.Resampling.LANCZOS)
    matte = mask.convert("L")
    matte = matte if matte.size == size else matte.resize(size, Image.Resampling.NEAREST)
    return [Image.composite(image.convert("RGB"), seed, matte) for image in images]


def model_ref(entry: ModelEntry) -> ModelRef:
    size = entry.row.size_bytes if entry.row is not None else 0
    return ModelRef(air=entry.air, architecture=entry.architecture, builtin=entry.builtin, sha256=entry.sha256, name=entry.name,
                    size_bytes=size)
