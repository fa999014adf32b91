"""Uploaded single-file SD-1.x checkpoints (original LDM layout) load offline and generate.

The checkpoints are written from the built-in tiny model's own weights
(``tests/fixtures/checkpoints.py``), so a correct load must reproduce the
built-in model's images byte for byte.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.errors import EngineError
from engine.pipelines.stable_diffusion import GenerationSpec, ModelLoadError, StableDiffusionModel, load_single_file
from tests.fixtures.checkpoints import perturbed, sd15_original_state_dict, write_sd15_single_file
from tests.fixtures.generation import pngs, spec as generation_spec

UNET_KEY = "model.diffusion_model.input_blocks.3.1.proj_in.weight"


def spec(**fields) -> GenerationSpec:
    return generation_spec(**{"seeds": (7, 8), **fields})


@pytest.fixture(scope="module")
def builtin(engine_data_dir: Path) -> Path:
    return ensure_tiny_sd15(engine_data_dir)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def fp32_file(builtin: Path, ckpt_dir: Path) -> Path:
    return write_sd15_single_file(builtin, ckpt_dir / "tiny-fp32.safetensors", torch.float32)


@pytest.fixture(scope="module")
def base_images(builtin: Path) -> list[bytes]:
    return pngs(StableDiffusionModel.load(builtin).run(spec()))


def test_writer_uses_the_original_layout(builtin: Path):
    state = sd15_original_state_dict(builtin)
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    # SD-1.x landmarks, at the tiny model's 2 levels × 1 layer
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in state  # level-0 downsampler
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in state  # upsampler after attention
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1×1 conv in LDM
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state


def test_single_file_generates_the_builtin_images(fp32_file: Path, builtin: Path, base_images: list[bytes]):
    model = load_single_file(fp32_file, builtin)
    reference = StableDiffusionModel.load(builtin)
    for component in ("unet", "vae", "text_encoder"):
        got, want = getattr(model.base, component).state_dict(), getattr(reference.base, component).state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), component
    assert pngs(model.run(spec())) == base_images
    # the derived img2img pipeline and clip_skip work on a single-file model too
    from PIL import Image

    init = Image.new("RGB", (64, 64), (200, 40, 40))
    assert pngs(model.run(spec(init_image=init, strength=0.5, clip_skip=2))) == pngs(
        reference.run(spec(init_image=init, strength=0.5, clip_skip=2))
    )


def test_perturbed_checkpoint_generates_other_images(builtin: Path, ckpt_dir: Path, base_images: list[bytes]):
    other = load_single_file(perturbed(builtin, ckpt_dir / "tiny-perturbed.safetensors", seed=3), builtin)
    images = pngs(other.run(spec()))
    assert images[0] != base_images[0] and images[1] != base_images[1]


def test_fp16_file_loads_as_fp32_and_generates(builtin: Path, ckpt_dir: Path):
    model = load_single_file(write_sd15_single_file(builtin, ckpt_dir / "tiny-fp16.safetensors", torch.float16), builtin)
    for component in ("unet", "vae", "text_encoder"):
        assert {p.dtype for p in getattr(model.base, component).parameters()} == {torch.float32}
    images = model.run(spec(seeds=(7,)))
    assert images[0].size == (64, 64)


def test_loading_never_opens_a_socket(fp32_file: Path, builtin: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_single_file tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert load_single_file(fp32_file, builtin).base.unet is not None


def _drop(key: str):
    return lambda state: state.pop(key)


def _reshape(key: str, shape: tuple[int, ...]):
    return lambda state: state.__setitem__(key, torch.zeros(shape))


def _drop_prefix(prefix: str):
    def edit(state):
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_drop(UNET_KEY), "missing 1 UNet tensor"),
        (_drop("first_stage_model.decoder.mid.attn_1.q.weight"), "missing 1 VAE tensor"),
        # diffusers itself would leave this one on the meta device without an error
        (_drop("cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"), "missing 1 text encoder tensor"),
        (_reshape(UNET_KEY, (64, 32, 1, 1)), "wrong shape"),
        (_drop_prefix("cond_stage_model."), "no text encoder weights"),
        (_drop_prefix("model.diffusion_model."), "no UNet weights"),
    ],
    ids=["unet-tensor", "vae-tensor", "clip-tensor", "wrong-shape", "no-text-encoder", "no-unet"],
)
def test_broken_checkpoints_fail_clearly(builtin: Path, ckpt_dir: Path, edit, expected: str):
    broken = write_sd15_single_file(builtin, ckpt_dir / "broken.safetensors", edit=edit)
    with pytest.raises(ModelLoadError) as info:
        load_single_file(broken, builtin)
    assert isinstance(info.value, EngineError)
    assert info.value.code == "modelLoadFailed"
    assert expected in info.value.message
    assert str(ckpt_dir) not in info.value.message  # no server paths in client-facing text


def test_unreadable_and_pickled_files_are_refused(builtin: Path, fp32_file: Path, ckpt_dir: Path):
    garbage = ckpt_dir / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_single_file(garbage, builtin)
    pickled = ckpt_dir / "tiny.ckpt"
    pickled.write_bytes(fp32_file.read_bytes())
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load_single_file(pickled, builtin)
