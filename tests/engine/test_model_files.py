"""Upload checks on model files: safetensors validation and category/architecture sniffing.

The corpora live in ``tests/fixtures/bad_files.py``; these tests hold each
file to its expected outcome, plus the properties that matter for safety:
a large file is validated without reading its tensor data, and a refusal
names both what the file is and what it was declared as.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.upload.safetensors_check import InvalidModelFile, read_safetensors_info
from engine.upload.sniff import ARCHITECTURE_FAMILIES, Sniffed, check_declared, sniff_model
from tests.fixtures.bad_files import (
    MALFORMED,
    SEMANTIC,
    VALID_WRITERS,
    MalformedFixture,
    SemanticFixture,
    ValidFixture,
    raw_safetensors,
    write_malformed_corpus,
    write_semantic_corpus,
    write_valid_corpus,
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-files")


@pytest.fixture(scope="module")
def valid(corpus_dir: Path) -> dict[str, ValidFixture]:
    (corpus_dir / "valid").mkdir()
    return {f.id: f for f in write_valid_corpus(corpus_dir / "valid")}


@pytest.fixture(scope="module")
def malformed(corpus_dir: Path) -> dict[str, MalformedFixture]:
    (corpus_dir / "malformed").mkdir()
    return {f.id: f for f in write_malformed_corpus(corpus_dir / "malformed")}


@pytest.fixture(scope="module")
def semantic(corpus_dir: Path) -> dict[str, SemanticFixture]:
    return {f.id: f for f in write_semantic_corpus(corpus_dir / "semantic")}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fid", sorted(VALID_WRITERS))
def test_valid_file_is_read_and_sniffed(valid: dict[str, ValidFixture], fid: str) -> None:
    fixture = valid[fid]
    info = read_safetensors_info(fixture.path)
    sniffed = sniff_model(info)
    assert (sniffed.category, sniffed.architecture) == (fixture.category, fixture.architecture), sniffed.detail
    assert sniffed.detail
    # Matching declarations pass (an undecided architecture accepts any).
    check_declared(sniffed, fixture.category, fixture.architecture or "sdxl")


def test_malformed_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 14
    assert len(SEMANTIC) >= 4


@pytest.mark.parametrize("fid", sorted(MALFORMED))
def test_malformed_file_is_refused(malformed: dict[str, MalformedFixture], fid: str) -> None:
    fixture = malformed[fid]
    with pytest.raises(InvalidModelFile) as excinfo:
        read_safetensors_info(fixture.path)
    err = excinfo.value
    assert fixture.expected in err.message
    assert err.code == "invalidModelFile"
    assert err.parameter == "downloadURL"
    assert "\n" not in err.message and len(err.message) < 400


def test_info_fields_match_the_reference_writer(tmp_path: Path) -> None:
    path = tmp_path / "two.safetensors"
    save_file(
        {"b": torch.zeros(3, 5, dtype=torch.bfloat16), "a": torch.zeros(2, dtype=torch.int64)},
        str(path),
        metadata={"format": "pt", "note": "ü"},
    )
    info = read_safetensors_info(path)
    assert info.file_size == path.stat().st_size
    assert info.data_start == 8 + info.header_size
    assert info.header_size % 8 == 0  # the writer pads with spaces; the reader must accept that
    assert info.metadata == {"format": "pt", "note": "ü"}
    assert info.dtypes == {"BF16", "I64"}
    assert info.total_params == 17
    a, b = info.tensors["a"], info.tensors["b"]
    assert (a.dtype, a.shape, a.nbytes) == ("I64", (2,), 16)
    assert (b.dtype, b.shape, b.nbytes, b.numel) == ("BF16", (3, 5), 30, 15)
    assert sorted((a.begin, a.end, b.begin, b.end))[0] == 0
    assert max(a.end, b.end) == info.file_size - info.data_start


def test_large_space_padded_header_is_accepted(tmp_path: Path) -> None:
    body = json.dumps({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = raw_safetensors(tmp_path / "padded.safetensors", body + b" " * 1_000_000, bytes(4))
    info = read_safetensors_info(path)
    assert info.header_size == len(body) + 1_000_000
    assert list(info.tensors) == ["w"]


def test_header_limit_is_configurable(tmp_path: Path) -> None:
    body = json.dumps({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode() + b" " * 200
    path = raw_safetensors(tmp_path / "f.safetensors", body, b"\0")
    read_safetensors_info(path)
    with pytest.raises(InvalidModelFile, match="exceeds the limit of 64 bytes"):
        read_safetensors_info(path, max_header_bytes=64)


def test_padding_other_than_spaces_is_refused(tmp_path: Path) -> None:
    body = json.dumps({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode()
    path = raw_safetensors(tmp_path / "nul.safetensors", body + b"\0" * 8, b"\0")
    with pytest.raises(InvalidModelFile, match="not valid JSON"):
        read_safetensors_info(path)


def test_empty_tensors_may_share_an_offset(tmp_path: Path) -> None:
    header = {
        "e1": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
        "e2": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    info = read_safetensors_info(raw_safetensors(tmp_path / "e.safetensors", header, bytes(4)))
    assert info.total_params == 1


def test_null_metadata_is_no_metadata(tmp_path: Path) -> None:
    """The reference reader treats ``"__metadata__": null`` as absent; so does this one."""
    header = {"__metadata__": None, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    assert read_safetensors_info(raw_safetensors(tmp_path / "n.safetensors", header, b"\0")).metadata == {}


def test_long_names_are_truncated_in_messages(tmp_path: Path) -> None:
    name = "x" * 5000
    header = {name: {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 1]}}
    with pytest.raises(InvalidModelFile) as excinfo:
        read_safetensors_info(raw_safetensors(tmp_path / "long.safetensors", header, b"\0"))
    assert "unknown dtype" in excinfo.value.message
    assert len(excinfo.value.message) < 300


def test_big_sparse_file_is_validated_without_reading_its_data(tmp_path: Path) -> None:
    """A 2 GiB file: only the header is read, so it takes milliseconds and kilobytes."""
    size = 2 * 1024**3
    header_size = 256
    data = size - 8 - header_size
    body = json.dumps(
        {"__metadata__": {"format": "pt"}, "big": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}
    ).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", header_size) + body.ljust(header_size, b" "))
        f.truncate(size)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        info = read_safetensors_info(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.file_size == size and info.tensors["big"].numel == data
    assert elapsed < 0.5
    assert peak < 1024 * 1024


# --------------------------------------------------------------------------- sniffing


def test_lora_for_a_non_unet_model_is_unrecognised(tmp_path: Path) -> None:
    """kohya Flux LoRAs also use ``lora_unet_``; their modules are not U-Net modules."""
    path = tmp_path / "flux.safetensors"
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(8, 4),
        },
        str(path),
    )
    with pytest.raises(InvalidModelFile, match="could not tell what this file is"):
        sniff_model(read_safetensors_info(path))


def test_transformer_checkpoint_is_unrecognised(tmp_path: Path) -> None:
    path = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(InvalidModelFile, match="could not tell what this file is"):
        sniff_model(read_safetensors_info(path))


def test_arbitrary_tensors_are_unrecognised(tmp_path: Path) -> None:
    path = tmp_path / "random.safetensors"
    save_file({f"layer.{i}.weight": torch.zeros(2, 2) for i in range(10)}, str(path))
    with pytest.raises(InvalidModelFile) as excinfo:
        sniff_model(read_safetensors_info(path))
    message = excinfo.value.message
    assert "could not tell what this file is" in message and "'layer.0.weight'" in message and "7 more" in message
    assert excinfo.value.parameter == "downloadURL"


def test_sixteen_channel_vae_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flux_vae.safetensors"
    save_file(
        {
            "encoder.down.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3),
            "decoder.up.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3),
            "decoder.conv_in.weight": torch.zeros(2, 16, 3, 3),
        },
        str(path),
    )
    with pytest.raises(InvalidModelFile, match="16 latent channels"):
        sniff_model(read_safetensors_info(path))


def test_embedding_of_unknown_width_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ti.safetensors"
    save_file({"emb_params": torch.zeros(2, 4096)}, str(path))
    with pytest.raises(InvalidModelFile, match="4096 wide"):
        sniff_model(read_safetensors_info(path))


def test_half_an_sdxl_embedding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ti.safetensors"
    save_file({"clip_l": torch.zeros(2, 768)}, str(path))
    with pytest.raises(InvalidModelFile, match="exactly clip_l and clip_g"):
        sniff_model(read_safetensors_info(path))


def test_widths_override_names(tmp_path: Path) -> None:
    """A checkpoint whose text encoder looks like SD 1.x but whose U-Net attends to 1024-wide context is SD 2.x."""
    path = tmp_path / "ckpt.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 1024),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(2, 2),
        },
        str(path),
    )
    assert sniff_model(read_safetensors_info(path)).architecture == "sd2x"


def test_ambiguous_lora_architecture_is_undecided(tmp_path: Path) -> None:
    """U-Net-only diffusers LoRA with tiny widths on blocks SD 1.x and SDXL share: accept any declaration."""
    path = tmp_path / "lora.safetensors"
    module = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{module}.lora_A.weight": torch.zeros(2, 8), f"{module}.lora_B.weight": torch.zeros(8, 2)}, str(path))
    sniffed = sniff_model(read_safetensors_info(path))
    assert (sniffed.category, sniffed.architecture) == ("lora", None)
    for architecture in ("sd1x", "sdxl", "pony", "flux1d"):
        check_declared(sniffed, "lora", architecture)


# --------------------------------------------------------------------------- declarations


@pytest.mark.parametrize(
    ("fid", "category", "architecture"),
    [
        ("sdxl-kohya-lora", "lora", "pony"),
        ("sdxl-kohya-lora", "lora", "illustrious"),
        ("sdxl-kohya-lora", "lora", "sdxllightning"),
        ("sdxl-checkpoint", "checkpoint", "sdxlturbo"),
        ("sd1-kohya-lora", "lora", "sd1xlcm"),
        ("sd1-kohya-lora", "lora", "sdhyper"),
        ("sd1-kohya-lora", "lycoris", "sd1x"),  # LyCORIS loaders read plain LoRA
        ("loha", "lycoris", "sd1x"),
        ("ldm-vae", "vae", "sd1x"),
        ("ldm-vae", "vae", "sdxl"),
        ("ti-sdxl", "embeddings", "sdxl"),
        ("controlnet-diffusers-sdxl", "controlnet", "sdxl"),
    ],
)
def test_matching_declarations_are_accepted(
    valid: dict[str, ValidFixture], fid: str, category: str, architecture: str
) -> None:
    check_declared(sniff_model(read_safetensors_info(valid[fid].path)), category, architecture)


@pytest.mark.parametrize("fid", sorted(SEMANTIC))
def test_mismatched_declarations_are_refused(semantic: dict[str, SemanticFixture], fid: str) -> None:
    fixture = semantic[fid]
    sniffed = sniff_model(read_safetensors_info(fixture.path))
    with pytest.raises(InvalidModelFile) as excinfo:
        check_declared(sniffed, fixture.category, fixture.architecture)
    err = excinfo.value
    assert err.parameter == fixture.parameter
    for text in fixture.expected:
        assert text in err.message, err.message


def test_mismatch_message_reads_plainly() -> None:
    with pytest.raises(InvalidModelFile) as excinfo:
        check_declared(Sniffed("lora", "sdxl", "kohya LoRA; lora_te1_ keys"), "lora", "sd1x")
    assert excinfo.value.message.startswith("file looks like a lora for sdxl, but was declared lora for sd1x")


def test_every_sd_architecture_has_a_family() -> None:
    from protocol.models import ARCHITECTURES

    sd = {a for a in ARCHITECTURES if a.startswith("sd") and a != "sd3"} | {"pony", "illustrious"}
    assert sd <= set(ARCHITECTURE_FAMILIES)
