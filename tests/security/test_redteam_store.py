"""Stored model files are re-verified against their content hash before first use (issue 18 #16).

Real files in a real store layout, hashed for real; the loaders that call the
check are the engine's.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import msgspec
import pytest

from engine.lora import LoraLoadError
from engine.registry.integrity import verify_stored_file
from engine.upload.store import ModelStore


def _stored(tmp_path: Path, payload: bytes) -> Path:
    store = ModelStore(tmp_path / "store")
    src = tmp_path / "incoming.safetensors"
    src.write_bytes(payload)
    return store.put(src, hashlib.sha256(payload).hexdigest())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime …


def test_an_intact_file_passes_and_a_flipped_byte_is_refused(tmp_path: Path):
    intact = _stored(tmp_path / "a", b"header" + bytes(range(256)) * 64)
    verify_stored_file(intact, LoraLoadError, "lora[0].model")
    damaged = _stored(tmp_path / "b", b"header" + bytes(range(255, -1, -1)) * 64)
    _flip(damaged, 4000)  # … a file flipped before this process first used it is caught
    with pytest.raises(LoraLoadError) as caught:
        verify_stored_file(damaged, LoraLoadError, "lora[0].model")
    assert caught.value.code == "loraLoadFailed" and caught.value.parameter == "lora[0].model"
    assert str(damaged) not in caught.value.message  # no server path on the wire


def test_a_file_changed_after_it_was_verified_is_checked_again(tmp_path: Path):
    path = _stored(tmp_path, b"x" * 10_000)
    verify_stored_file(path, LoraLoadError, "lora[0].model")
    data = bytearray(path.read_bytes())
    data[10] ^= 0x40
    path.write_bytes(bytes(data))  # a new mtime
    with pytest.raises(LoraLoadError):
        verify_stored_file(path, LoraLoadError, "lora[0].model")


def test_a_missing_file_and_unhashed_names(tmp_path: Path):
    path = _stored(tmp_path, b"y" * 100)
    path.unlink()
    with pytest.raises(LoraLoadError):
        verify_stored_file(path, LoraLoadError, "lora[0].model")
    other = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"  # a built-in model's folder: not content-addressed
    other.parent.mkdir()
    other.write_bytes(b"anything")
    verify_stored_file(other, LoraLoadError, "model")


# ---- end to end: a LoRA whose tensor bytes were flipped on disk --------------------



async def test_a_lora_flipped_on_disk_is_refused_not_used(tmp_path: Path):
    from engine.builtin.tiny_sd15 import BUILTIN_SD15_AIR
    from engine.core import Engine, EngineConfig
    from engine.models import builtin_folder
    from protocol.inference import ImageInference
    from protocol.models import ModelUpload
    from tests.fixtures.loras import write_lora

    engine = Engine(EngineConfig(data_dir=tmp_path / "data", torch_threads=1))
    engine.start()
    try:
        lora = write_lora(builtin_folder(BUILTIN_SD15_AIR, tmp_path / "data"), tmp_path / "ink.safetensors", fmt="kohya")
        engine.registry.create_source("mine", "t")
        upload = msgspec.convert(
            {"taskType": "modelUpload", "taskUUID": str(uuid.uuid4()), "air": "mine:ink@1", "category": "lora",
             "architecture": "sd1x", "downloadURL": "https://example.invalid/ink.safetensors", "uniqueIdentifier": "ink",
             "name": "ink", "version": "1"}, ModelUpload)

        async def emit(status: str, message: str) -> None:
            pass

        row = await engine.upload_model(upload, "t", emit, local_source=lora)
        stored = engine.model_store.path_for(row.sha256)
        _flip(stored, stored.stat().st_size - 100)  # a tensor byte, not the header: the file still parses
        task = msgspec.convert(
            {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": BUILTIN_SD15_AIR, "positivePrompt": "a fox",
             "width": 64, "height": 64, "steps": 2, "seed": 1, "lora": [{"model": "mine:ink@1"}]}, ImageInference)
        with pytest.raises(LoraLoadError) as caught:
            await engine.generate(task, team="t", owner="a")
        assert caught.value.code == "loraLoadFailed"
    finally:
        engine.stop()
