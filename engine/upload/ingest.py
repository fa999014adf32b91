"""modelUpload, phase by phase: validated → downloaded → optimized → stored → ready.

Each phase is announced through ``emit`` only once it has really happened.
Any failure raises an :class:`~engine.errors.EngineError` (the server turns it
into an error carrying the taskUUID); temp files are removed and nothing is
registered, because the registry row is written last, after the file is in
the content-addressed store.  Blocking work (download, hashing, header
checks, conversion) runs in threads; the checkpoint load test runs on the
device worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from engine import upscalers
from engine.errors import EngineError
from engine.lora import LoraLoadError, lora_format
from engine.models import LOADABLE_FAMILIES, family, spandrel_ready
from engine.net import NetPolicy, check_url
from engine.registry.models import ModelRegistry, ModelRow
from engine.registry.team_settings import TeamSettings
from engine.schedulers import canonical_scheduler
from engine.upload.fetch import Limits, copy_and_hash, download
from engine.upload.lycoris import to_kohya_lora
from engine.upload.optimize import convert, needs_conversion
from engine.upload.pool import DaemonPool
from engine.upload.safetensors_check import InvalidModelFile, read_safetensors_info
from engine.upload.sniff import ARCHITECTURE_FAMILIES, check_declared, sniff_model
from engine.upload.store import ModelStore
from protocol.errors import ErrorCode
from protocol.models import ModelUpload, split_air

PHASE_MESSAGES = {
    "validated": "Model parameters and configuration validated.",
    "downloaded": "Model downloaded from provider.",
    "optimized": "Model optimized for deployment.",
    "stored": "Model uploaded to secure storage.",
    "ready": "Model successfully deployed and ready for use.",
}
REUSED_MESSAGES = {
    "downloaded": "Same uniqueIdentifier: the stored file is reused, no download.",
    "optimized": "Stored file already optimized.",
    "stored": "Stored file unchanged.",
    "ready": "Model metadata updated and ready for use.",
}

Emit = Callable[[str, str], Awaitable[None]]


class UploadRefused(EngineError):
    code = ErrorCode.INVALID_PARAMETER


class SourceNotAllowed(EngineError):
    code = "sourceNotAllowed"


@dataclass(frozen=True)
class IngestConfig:
    tmp_dir: Path
    max_model_bytes: int = 20 * 1024**3
    storage_dtype: str = "F16"
    policy: NetPolicy = NetPolicy()
    download_threads: int = 4
    """Downloads at once (their own daemon threads: :mod:`engine.upload.pool`); more wait in line."""
    download_timeout_s: float = 3600.0
    """Total time one download may take, retries included."""
    cancel: threading.Event | None = None
    """Set when the engine stops: a download in progress gives up at its next read."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestRequest:
    """What registering a model file needs, whoever asks: a wire modelUpload (:meth:`from_upload`), or a
    training that made the file (no URL: the file is handed to :meth:`ModelIngest.run`)."""

    air: str
    category: str
    architecture: str
    name: str
    version: str
    unique_identifier: str
    private: bool
    download_url: str | None = None
    """Where to fetch the file; None: the caller hands a local file."""
    format: str = "safetensors"
    type: str | None = None
    conditioning: str | None = None
    retry: int = 2
    default_scheduler: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """The row's metadata (tags, trigger words, defaults, description…), as stored."""

    @classmethod
    def from_upload(cls, task: ModelUpload) -> "IngestRequest":
        return cls(
            air=task.air, category=task.category, architecture=task.architecture, name=task.name, version=task.version,
            unique_identifier=task.uniqueIdentifier, private=task.is_private, download_url=task.downloadURL,
            format=task.format, type=task.type, conditioning=task.conditioning, retry=2 if task.retry is None else task.retry,
            default_scheduler=task.defaultScheduler, meta=_meta(task),
        )


def _meta(req: ModelUpload) -> dict[str, Any]:
    def words(value: str | list[str] | None) -> str | None:
        return ", ".join(value) if isinstance(value, list) else value

    meta = {
        "defaultScheduler": canonical_scheduler(req.defaultScheduler) if req.defaultScheduler else None,
        "defaultSteps": req.defaultSteps,
        "defaultCFG": req.cfg,
        "defaultStrength": req.defaultStrength,
        "defaultWeight": req.defaultWeight,
        "heroImageURL": req.heroImageURL,
        "tags": req.tags or [],
        "positiveTriggerWords": words(req.positiveTriggerWords),
        "negativeTriggerWords": words(req.negativeTriggerWords),
        "shortDescription": req.shortDescription,
        "comment": req.comment,
    }
    return {k: v for k, v in meta.items() if v is not None}


class ModelIngest:
    def __init__(
        self,
        registry: ModelRegistry,
        store: ModelStore,
        config: IngestConfig,
        prove_checkpoint: Callable[[Path, str], Awaitable[None]],
    ) -> None:
        self.registry = registry
        self.store = store
        self.config = config
        self.prove_checkpoint = prove_checkpoint
        self.downloads = DaemonPool(config.download_threads, "wisp-download")
        config.tmp_dir.mkdir(parents=True, exist_ok=True)

    async def run(self, request: IngestRequest | ModelUpload, team: str, emit: Emit, local_source: Path | None = None) -> ModelRow:
        """Register a model file for ``team`` phase by phase: ``request``'s URL fetched, or ``local_source`` read."""
        req = IngestRequest.from_upload(request) if isinstance(request, ModelUpload) else request
        if local_source is None and req.download_url is None:
            raise UploadRefused("a model needs a downloadURL", parameter="downloadURL")
        existing = await self._validate(req, team, check_remote=local_source is None)
        await emit("validated", PHASE_MESSAGES["validated"])
        reuse = existing is not None and existing.unique_identifier == req.unique_identifier and self.store.exists(existing.sha256)
        if reuse:
            assert existing is not None
            for phase in ("downloaded", "optimized", "stored"):
                await emit(phase, REUSED_MESSAGES[phase])
            sha, size = existing.sha256, existing.size_bytes
            found = {k: existing.meta[k] for k in FOUND_META if k in existing.meta}
        else:
            sha, size, found = await self._fetch_and_store(req, emit, local_source)
        converted_from = found.get("convertedFrom")
        meta = dict(req.meta)
        meta.setdefault("tags", [])
        if "upscaler" in found:  # what the network was detected as (modelSearch shows it)
            meta["upscaler"] = found["upscaler"]
        if converted_from:  # a LyCORIS LoHa/LoKr stored as its equivalent LoRA
            meta["convertedFrom"] = converted_from
            if "lycoris" not in meta["tags"]:
                meta["tags"] = [*meta["tags"], "lycoris"]
        row = ModelRow(
            air=req.air, team=team, category=req.category, architecture=req.architecture, format=req.format,
            name=req.name, version=req.version, unique_identifier=req.unique_identifier, sha256=sha, size_bytes=size,
            private=req.private, type=req.type, conditioning=req.conditioning, meta=meta,
        )
        quota = TeamSettings(self.registry.db)
        # Checked again where the row is written: two uploads that both passed the early check cannot both land.
        await asyncio.to_thread(self.registry.upsert, row, lambda is_new: quota.check_lora_upload(team, req.category, is_new))
        await emit("ready", REUSED_MESSAGES["ready"] if reuse else PHASE_MESSAGES["ready"])
        return row

    async def _validate(self, req: IngestRequest, team: str, check_remote: bool = True) -> ModelRow | None:
        source, _, _ = split_air(req.air)
        owner = await asyncio.to_thread(self.registry.source_team, source)
        if owner != team:
            default = await asyncio.to_thread(TeamSettings(self.registry.db).default_source, team)
            raise SourceNotAllowed(
                f"source {source!r} is not one of your team's sources: upload under your team's default source "
                f"({default}:<id>@<version>), or have an admin create {source!r} for your team "
                f"(`wisp sources create {source} --team {team}`)",
                parameter="air",
            )
        existing = await asyncio.to_thread(self.registry.get, req.air)
        if existing is not None:
            if existing.category != req.category:
                raise UploadRefused(f"{req.air} is a {existing.category}; the category cannot change", parameter="category")
            if existing.type != req.type:
                raise UploadRefused(f"{req.air} has type {existing.type}; the type cannot change in an update", parameter="type")
        await asyncio.to_thread(TeamSettings(self.registry.db).check_lora_upload, team, req.category, existing is None)
        if req.category == upscalers.CATEGORY:  # its architecture was checked with the request (ModelUpload.check)
            await asyncio.to_thread(spandrel_ready, "category")  # before any download: this server reads upscalers at all
        if req.category == "checkpoint" and family(req.architecture) not in LOADABLE_FAMILIES:
            supported = sorted(a for a in ARCHITECTURE_FAMILIES if family(a) in LOADABLE_FAMILIES)
            raise UploadRefused(
                f"checkpoints of architecture {req.architecture} cannot be loaded by this build yet (supported: {', '.join(supported)})",
                parameter="architecture",
            )
        if req.default_scheduler:
            canonical_scheduler(req.default_scheduler)
        if check_remote:
            assert req.download_url is not None
            await check_url(req.download_url, self.config.policy, "downloadURL")
        return existing

    async def _fetch_and_store(self, req: IngestRequest, emit: Emit, local_source: Path | None) -> tuple[str, int, dict[str, Any]]:
        """Fetch, check, convert and store the file: its sha256, size and what was found in it (:data:`FOUND_META`)."""
        work = Path(tempfile.mkdtemp(prefix="upload-", dir=self.config.tmp_dir))
        try:
            if local_source is not None:
                fetched = await asyncio.to_thread(copy_and_hash, local_source, work / "download.safetensors", self.config.max_model_bytes)
            else:
                limits = Limits(self.config.download_timeout_s, self.config.cancel)
                fetched = await self.downloads.run(
                    download, req.download_url, work / "download.safetensors", self.config.policy,
                    max_bytes=self.config.max_model_bytes, retries=req.retry, limits=limits,
                )
            await emit("downloaded", PHASE_MESSAGES["downloaded"])
            final, sha, found = await asyncio.to_thread(self._optimize, req, fetched.path, fetched.sha256, work)
            if req.category == "checkpoint":
                await self.prove_checkpoint(final, req.architecture)
            await emit("optimized", PHASE_MESSAGES["optimized"])
            size = final.stat().st_size
            await asyncio.to_thread(self.store.put, final, sha)
            await emit("stored", PHASE_MESSAGES["stored"])
            return sha, size, found
        finally:
            await asyncio.to_thread(_remove_tree, work)

    def _optimize(self, req: IngestRequest, path: Path, sha: str, work: Path) -> tuple[Path, str, dict[str, Any]]:
        """Worker thread: validate the header, convert LoHa/LoKr, sniff, check the declaration, convert the dtype;
        an upscaler is then loaded (CPU, safetensors) and detected.

        The third value is what was found (:data:`FOUND_META`): the LyCORIS kind a LoRA was converted from, what an
        upscaler's network is.
        """
        info = read_safetensors_info(path)
        found: dict[str, Any] = {}
        if req.category in ("lora", "lycoris"):
            lora = work / "lycoris-as-lora.safetensors"
            converted_from = to_kohya_lora(info, lora, family(req.architecture))
            if converted_from is not None:  # sniffed and stored from here on as the equivalent LoRA
                path, info = lora, read_safetensors_info(lora)
                found["convertedFrom"] = converted_from
        if req.category == upscalers.CATEGORY:
            _not_a_diffusion_file(info)
        else:
            sniffed = sniff_model(info)
            if req.category in ("lora", "lycoris") and sniffed.category in ("lora", "lycoris"):
                try:
                    lora_format(info.tensors)  # refuses DoRA, OFT and other kinds diffusers would misapply
                except LoraLoadError as exc:
                    raise InvalidModelFile(exc.message, parameter="downloadURL") from None
            check_declared(sniffed, req.category, req.architecture)
            _check_usable(info, req.category)
        final, final_sha = path, (sha if "convertedFrom" not in found else _sha256_file(path))
        if needs_conversion(info, self.config.storage_dtype):
            final = work / "converted.safetensors"
            convert(info, final, self.config.storage_dtype)
            read_safetensors_info(final)  # what we wrote must pass our own checks
            final_sha = _sha256_file(final)
        if req.category == upscalers.CATEGORY:  # the stored bytes, as inference will load them
            found["upscaler"] = upscalers.detect(final).as_meta()
        return final, final_sha, found


FOUND_META = ("convertedFrom", "upscaler")
"""What the ingest finds in a file and keeps in its row's meta (kept as it was when an upload reuses the stored file)."""


def _not_a_diffusion_file(info: Any) -> None:
    """An upload declared ``upscaler`` whose header is a LoRA, checkpoint, ControlNet, VAE or embedding: refused so."""
    try:
        sniffed = sniff_model(info)
    except InvalidModelFile:
        return  # no diffusion layout (or a broken one): spandrel decides
    raise InvalidModelFile(f"file looks like {sniffed.describe()}, but was declared an upscaler ({sniffed.detail})",
                           parameter="category")


def _check_usable(info: Any, category: str) -> None:
    """Embeddings and VAEs: the file is one inference can apply (engine.embeddings / engine.vae), from the header."""

    try:
        if category == "embeddings":
            from engine.embeddings import parts_of

            parts_of(info.tensors, "the embedding")
        elif category == "vae":
            from engine.vae import size_class

            size_class({name: t.shape for name, t in info.tensors.items()})
    except EngineError as exc:
        raise InvalidModelFile(exc.message, parameter="downloadURL") from None


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
