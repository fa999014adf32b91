"""LoRAs on the built-in model: both file formats, weights, exact unloading and request isolation.

The LoRA files are written for the tiny model (``tests/fixtures/loras.py``)
with seeded random factors; every comparison is on exact PNG bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.errors import EngineError
from engine.lora import LoraLoadError, LoraUse, lora_format
from engine.pipelines.stable_diffusion import GenerationSpec, StableDiffusionModel
from tests.fixtures.loras import write_foreign_lora, write_lora, write_loha, write_with_extra_layer
from tests.fixtures.generation import png, spec as generation_spec


def spec(*loras: LoraUse, **fields) -> GenerationSpec:
    return generation_spec(loras=tuple(loras), **fields)


@pytest.fixture(scope="module")
def builtin(engine_data_dir: Path) -> Path:
    return ensure_tiny_sd15(engine_data_dir)


def _mixed_alpha(module: str) -> float:
    return 1.0 if "attn2" in module or "out_proj" in module else 8.0


@pytest.fixture(scope="module")
def files(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The LoRA files, written once: A in both formats (alpha ≠ rank), B, a text-encoder-only one, bad ones."""
    d = tmp_path_factory.mktemp("loras")
    out = {
        "A-kohya": write_lora(builtin, d / "a-kohya.safetensors", fmt="kohya", seed=1, alpha=2),
        "A-diffusers": write_lora(builtin, d / "a-diffusers.safetensors", fmt="diffusers", seed=1, alpha=2),
        "B": write_lora(builtin, d / "b.safetensors", fmt="diffusers", seed=2),
        "TE": write_lora(builtin, d / "te.safetensors", fmt="kohya", seed=3, unet=False),
        "M-kohya": write_lora(builtin, d / "m-kohya.safetensors", fmt="kohya", seed=4, alpha_for=_mixed_alpha),
        "M-diffusers": write_lora(builtin, d / "m-diffusers.safetensors", fmt="diffusers", seed=4, alpha_for=_mixed_alpha),
        "foreign": write_foreign_lora(d / "foreign.safetensors"),
        "loha": write_loha(builtin, d / "loha.safetensors"),
    }
    out["extra"] = write_with_extra_layer(out["A-kohya"], d / "extra.safetensors")
    return out


def use(files: dict[str, Path], name: str, weight: float = 1.0) -> LoraUse:
    return LoraUse(key=f"sha-{name}", path=files[name], weight=weight)


@pytest.fixture(scope="module")
def pristine(builtin: Path) -> StableDiffusionModel:
    """A model that never gets an adapter: the reference for base images."""
    return StableDiffusionModel.load(builtin)


@pytest.fixture(scope="module")
def model(builtin: Path) -> StableDiffusionModel:
    """One model shared by the tests, accumulating adapters as a server's would."""
    return StableDiffusionModel.load(builtin)


@pytest.fixture(scope="module")
def base(pristine: StableDiffusionModel) -> bytes:
    return png(pristine.run(spec()))


def test_formats_are_detected(files):
    from safetensors import safe_open

    def keys(name):
        with safe_open(str(files[name]), "pt") as f:
            return list(f.keys())

    assert lora_format(keys("A-kohya")) == "kohya"
    assert lora_format(keys("A-diffusers")) == "diffusers"


@pytest.mark.parametrize(
    "key, name",
    [
        ("lora_unet_x_to_q.lokr_w1", "LyCORIS LoKr"),
        ("lora_unet_x_to_q.lora_mid.weight", "LyCORIS LoCon with CP decomposition"),
        ("lora_unet_x_to_q.dora_scale", "DoRA"),
        ("unet.x.to_q.lora_magnitude_vector", "DoRA"),
    ],
)
def test_unsupported_adapter_types_are_named(key: str, name: str):
    with pytest.raises(LoraLoadError, match=f"^{name}.* not supported"):
        lora_format(["lora_unet_x_to_q.lora_down.weight", "lora_unet_x_to_q.lora_up.weight", key])
    with pytest.raises(LoraLoadError, match="not a LoRA"):
        lora_format(["model.diffusion_model.out.2.weight"])


def test_kohya_and_diffusers_loras_change_the_image_identically(model, files, base):
    kohya = png(model.run(spec(use(files, "A-kohya"))))
    diffusers = png(model.run(spec(use(files, "A-diffusers"))))
    assert kohya != base
    # the same update in both layouts: the kohya alpha/rank scale is kept
    assert kohya == diffusers


def test_fp16_lora_file_applies(model, builtin, base, tmp_path):
    half = write_lora(builtin, tmp_path / "a-fp16.safetensors", fmt="kohya", seed=1, alpha=2, dtype=torch.float16)
    assert png(model.run(spec(LoraUse("sha-a-fp16", half, 1.0)))) != base


def test_kohya_per_layer_alphas_are_honoured(model, files):
    """diffusers 0.42 alone would give every layer the most common alpha (8 here)."""
    assert png(model.run(spec(use(files, "M-kohya")))) == png(model.run(spec(use(files, "M-diffusers"))))


def test_text_encoder_part_is_applied(model, files, base):
    """Guards the clip_skip alias: with it in place diffusers skipped the text-encoder layers."""
    assert png(model.run(spec(use(files, "TE")))) != base
    adapters = model.base.get_list_adapters()
    assert "text_encoder" in adapters and adapters["text_encoder"]
    assert model.base.text_encoder.text_model is model.base.text_encoder  # alias restored
    assert png(model.run(spec(use(files, "TE"), clip_skip=2))) != png(model.run(spec(use(files, "TE"))))


def test_weight_zero_is_the_base_image(model, files, base):
    assert png(model.run(spec(use(files, "A-kohya", 0.0)))) == base


def test_base_after_a_lora_is_bit_identical(model, files, base):
    with_lora = png(model.run(spec(use(files, "B"))))
    assert with_lora != base
    assert png(model.run(spec())) == base


def test_weights_and_combinations_differ(model, files):
    a = png(model.run(spec(use(files, "A-kohya"))))
    half = png(model.run(spec(use(files, "A-kohya", 0.5))))
    b = png(model.run(spec(use(files, "B"))))
    both = png(model.run(spec(use(files, "A-kohya"), use(files, "B"))))
    assert len({a, half, b, both}) == 4
    # a set, not a sequence: the order in the request does not matter
    assert png(model.run(spec(use(files, "B"), use(files, "A-kohya")))) == both


def test_requests_are_isolated_in_any_order(builtin, files):
    requests = {
        "A": (use(files, "A-kohya"),),
        "B": (use(files, "B", 0.7),),
        "A+B": (use(files, "A-kohya", 0.5), use(files, "B")),
        "none": (),
    }
    alone = {name: png(StableDiffusionModel.load(builtin).run(spec(*loras))) for name, loras in requests.items()}
    assert len(set(alone.values())) == 4
    shared = StableDiffusionModel.load(builtin)
    for name in ["A+B", "none", "B", "A", "none", "A+B", "B"]:
        assert png(shared.run(spec(*requests[name]))) == alone[name], name


def test_img2img_and_inpaint_see_the_loras(model, pristine, files):
    init = Image.new("RGB", (64, 64), (30, 120, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for extra in ({"init_image": init, "strength": 0.6}, {"init_image": init, "mask_image": mask}):
        plain = png(pristine.run(spec(**extra)))
        with_lora = png(model.run(spec(use(files, "A-kohya"), **extra)))
        assert with_lora != plain
        assert png(model.run(spec(use(files, "A-kohya"), **extra))) == with_lora
        assert png(model.run(spec(**extra))) == plain


@pytest.mark.parametrize(
    "name, message",
    [
        ("foreign", "not found in the base model"),
        ("extra", "targets 45 layers but only 44 exist"),
        ("loha", "LyCORIS LoHa adapters are not supported"),
    ],
)
def test_loras_that_do_not_fit_raise(model, files, base, name, message):
    before = model.base.get_list_adapters()
    with pytest.raises(LoraLoadError) as info:
        model.run(spec(use(files, "B"), use(files, name)))
    assert isinstance(info.value, EngineError)
    assert info.value.code == "loraLoadFailed"
    assert info.value.parameter == "lora[1].model"
    assert message in info.value.message
    # nothing of the failed adapter stays behind, and the model still works
    assert model.base.get_list_adapters() == before
    assert png(model.run(spec())) == base


def test_a_file_that_is_not_a_lora_raises(model, tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not safetensors at all")
    with pytest.raises(LoraLoadError, match="not a readable safetensors file"):
        model.run(spec(LoraUse("sha-bogus", bogus, 1.0)))


def test_forget_unloads_an_adapter(model, files, base):
    a = png(model.run(spec(use(files, "A-kohya"))))
    assert model.loras.forget("sha-A-kohya")
    assert "sha-A-kohya" not in model.loras.loaded
    assert png(model.run(spec())) == base
    assert png(model.run(spec(use(files, "A-kohya")))) == a


def test_a_batch_with_a_lora_set_gives_each_request_its_lone_image(model, files):
    # Inside a batch the adapter layers are split per request like the base layers (engine.pipelines.batch_invariance).
    loras = (use(files, "A-kohya", 0.8), use(files, "B"))
    specs = [spec(*loras, prompt=f"a red fox {i}", seeds=(20 + i,), scheduler="Euler a") for i in range(3)]
    together = [png([image]) for image in model.run_batch(specs)]
    assert together == [png(model.run(s)) for s in specs]
    assert len(set(together)) == 3
