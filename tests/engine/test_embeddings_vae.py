"""Textual-inversion embeddings and VAE overrides on the built-in tiny models (no server).

Files are written by ``tests/fixtures/embeddings.py`` at the tiny models'
widths.  What is checked: an embedding changes the image, and the next
request without it is bit-identical to the base (tokens and vectors really
unloaded); weight 0 is no embedding; weight scales the vectors; negative
embeddings act through the negative prompt; the VAE override changes the
image, is restored exactly, and an unperturbed VAE file reproduces the base
(the LDM conversion is right); files that do not fit are refused naming
the field.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.builtin.tiny_sd15 import ensure_tiny_sd15
from engine.builtin.tiny_sdxl import ensure_tiny_sdxl
from engine.embeddings import EmbeddingLoadError, EmbeddingUse, _rewrite, parts_of, trigger_word
from engine.errors import InvalidInput
from engine.pipelines.stable_diffusion import GenerationSpec
from engine.pipelines.stable_diffusion.loading import load_folder
from engine.upload.safetensors_check import InvalidModelFile, read_safetensors_info
from engine.upload.sniff import check_declared, sniff_model
from engine.vae import VaeUse, load_vae
from tests.fixtures.embeddings import (
    write_a1111_embedding,
    write_diffusers_embedding,
    write_diffusers_vae,
    write_ldm_vae,
    write_sdxl_embedding,
)
from tests.fixtures.generation import png, spec as generation_spec


def spec(*embeddings: EmbeddingUse, **fields) -> GenerationSpec:
    return generation_spec(embeddings=tuple(embeddings), **fields)


def emb(path: Path, trigger: str = "foxy", kind: str = "positive", weight: float = 1.0, index: int = 0) -> EmbeddingUse:
    return EmbeddingUse(key=path.name, path=path, trigger=trigger, kind=kind, weight=weight, parameter=f"embeddings[{index}].model")


@pytest.fixture(scope="module")
def sd15(engine_data_dir: Path) -> Path:
    return ensure_tiny_sd15(engine_data_dir)


@pytest.fixture(scope="module")
def sdxl(engine_data_dir: Path) -> Path:
    return ensure_tiny_sdxl(engine_data_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, sd15: Path, sdxl: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("embeddings")
    a1111 = write_a1111_embedding(d / "a1111.safetensors", vectors=2, seed=1)
    doubled = d / "a1111-x2.safetensors"
    save_file({"emb_params": load_file(str(a1111))["emb_params"] * 2}, str(doubled))
    return {
        "a1111": a1111,
        "a1111-x2": doubled,
        "other": write_a1111_embedding(d / "other.safetensors", vectors=1, seed=2),
        "diffusers": write_diffusers_embedding(d / "diffusers.safetensors", token="<cat-toy>", seed=3),
        "sdxl": write_sdxl_embedding(d / "sdxl.safetensors", vectors=2, seed=4),
        "wide": write_a1111_embedding(d / "wide.safetensors", width=768, seed=5),
        "vae": write_ldm_vae(sd15, d / "vae-ldm.safetensors", seed=1),
        "vae-prefixed": write_ldm_vae(sd15, d / "vae-prefixed.safetensors", seed=1, prefix="first_stage_model."),
        "vae-diffusers": write_diffusers_vae(sd15, d / "vae-diffusers.safetensors", seed=1),
        "vae-exact": write_ldm_vae(sd15, d / "vae-exact.safetensors", scale=0.0),
        "vae-xl-exact": write_ldm_vae(sdxl, d / "vae-xl-exact.safetensors", scale=0.0),
        "vae-fp16": write_ldm_vae(sd15, d / "vae-fp16.safetensors", seed=1, dtype=torch.float16),
    }


@pytest.fixture(scope="module")
def pristine(sd15: Path):
    """Never gets an embedding or a VAE: the reference for base images."""
    return load_folder(sd15)


@pytest.fixture(scope="module")
def model(sd15: Path):
    """One model shared by the tests, as a server's would be."""
    return load_folder(sd15)


@pytest.fixture(scope="module")
def base(pristine) -> bytes:
    return png(pristine.run(spec()))


# ---- triggering -------------------------------------------------------------------------


def test_trigger_word_is_the_first_trigger_word_or_the_air_id():
    assert trigger_word("team:easyneg@1", {}, "negative") == "easyneg"
    assert trigger_word("team:x@2", {"positiveTriggerWords": "bad-hands, worse"}, "positive") == "bad-hands"
    assert trigger_word("team:x@2", {"positiveTriggerWords": ["  ", "style1 style2"]}, "positive") == "style1"
    assert trigger_word("team:x@2", {"negativeTriggerWords": "neg1"}, "negative") == "neg1"
    assert trigger_word("team:x@2", {"negativeTriggerWords": "neg1"}, "positive") == "x"


def test_trigger_word_is_replaced_or_appended():
    assert _rewrite("a foxy fox", "foxy", "<t>") == "a <t> fox"
    assert _rewrite("Foxy, foxy!", "foxy", "<t>") == "<t>, <t>!"
    assert _rewrite("a foxyness", "foxy", "<t>") == "a foxyness, <t>"
    assert _rewrite(None, "foxy", "<t>") == "<t>"
    assert _rewrite("", "foxy", "<t>") == "<t>"


# ---- SD-1.x embeddings ------------------------------------------------------------------


def test_embedding_changes_the_image_and_is_unloaded_exactly(model, files, base):
    assert png(model.run(spec())) == base
    with_embedding = png(model.run(spec(emb(files["a1111"]))))
    assert with_embedding != base
    assert png(model.run(spec())) == base  # tokens and vectors gone: bit-exact base again
    tokenizer, encoder = model.base.tokenizer, model.base.text_encoder
    assert not any("wisp-ti" in t for t in tokenizer.get_vocab())
    assert encoder.get_input_embeddings().weight.shape[0] == encoder.config.vocab_size == len(tokenizer)
    assert png(model.run(spec(emb(files["a1111"])))) == with_embedding  # and repeatable


def test_formats_and_requests_are_isolated(model, files, base):
    a = png(model.run(spec(emb(files["a1111"]))))
    other = png(model.run(spec(emb(files["other"]))))
    diffusers = png(model.run(spec(emb(files["diffusers"]))))
    both = png(model.run(spec(emb(files["a1111"]), emb(files["other"], trigger="bar", index=1))))
    assert len({a, other, diffusers, both, base}) == 5
    assert png(model.run(spec(emb(files["other"])))) == other  # not polluted by the earlier requests


def test_weight_zero_is_no_embedding_and_weight_scales_the_vectors(model, files, base):
    assert png(model.run(spec(emb(files["a1111"], weight=0.0)))) == base
    assert png(model.run(spec(emb(files["a1111"], weight=2.0)))) == png(model.run(spec(emb(files["a1111-x2"]))))
    assert png(model.run(spec(emb(files["a1111"], weight=2.0)))) != png(model.run(spec(emb(files["a1111"]))))


def test_trigger_word_in_the_prompt_places_the_embedding(model, files):
    """The word in the prompt is where the vectors go: same prompt with the word ≠ word appended elsewhere."""
    placed = png(model.run(spec(emb(files["a1111"]), prompt="foxy a red fox")))
    appended = png(model.run(spec(emb(files["a1111"]), prompt="a red fox")))
    plain_word = png(model.run(spec(prompt="foxy a red fox")))
    assert len({placed, appended, plain_word}) == 3


def test_negative_embedding_acts_through_the_negative_prompt(model, files, base):
    negative = png(model.run(spec(emb(files["a1111"], kind="negative"))))
    assert negative != base
    assert negative != png(model.run(spec(emb(files["a1111"]))))
    # the same as writing its token in the negative prompt oneself: trigger word in negativePrompt
    assert png(model.run(spec(emb(files["a1111"], kind="negative"), negative_prompt="foxy"))) == negative
    assert png(model.run(spec())) == base


def test_img2img_and_inpaint_see_embeddings(model, pristine, files):
    init = Image.new("RGB", (64, 64), (200, 80, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for fields in (dict(init_image=init, strength=0.7), dict(init_image=init, mask_image=mask, strength=0.9)):
        plain = png(pristine.run(spec(**fields)))
        assert png(model.run(spec(emb(files["a1111"]), **fields))) != plain
        assert png(model.run(spec(**fields))) == plain


def test_embeddings_that_do_not_fit_are_refused_naming_the_field(model, files, base, tmp_path):
    with pytest.raises(InvalidInput) as excinfo:
        model.run(spec(emb(files["a1111"]), emb(files["wide"], index=1)))
    assert excinfo.value.parameter == "embeddings[1].model" and "768" in excinfo.value.message
    with pytest.raises(InvalidInput) as excinfo:
        model.run(spec(emb(files["sdxl"])))
    assert excinfo.value.parameter == "embeddings[0].model" and "clip_l" in excinfo.value.message
    junk = tmp_path / "junk.safetensors"
    save_file({"a.b": torch.zeros(3, 32), "c.d": torch.zeros(3, 32)}, str(junk))
    with pytest.raises(EmbeddingLoadError) as excinfo:
        model.run(spec(emb(junk)))
    assert excinfo.value.parameter == "embeddings[0].model"
    assert png(model.run(spec())) == base  # nothing was left half-loaded


def test_parts_of_each_format():
    t = lambda *shape: torch.zeros(*shape)  # noqa: E731
    assert parts_of({"emb_params": t(2, 32)}).keys() == {""}
    assert parts_of({"string_to_param.*": t(1, 768)}).keys() == {""}
    assert parts_of({"<tok>": t(32)}).keys() == {""}
    assert parts_of({"clip_l": t(2, 32), "clip_g": t(2, 64)}).keys() == {"clip_l", "clip_g"}
    for bad in ({"clip_l": t(2, 32)}, {"clip_l": t(2, 32), "clip_g": t(3, 64)}, {"a": t(32), "b": t(32)}, {"x.weight": t(4, 4)},
                {"emb_params": t(2, 3, 4)}):
        with pytest.raises(EmbeddingLoadError):
            parts_of(bad)


# ---- SDXL embeddings --------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl(sdxl: Path):
    return load_folder(sdxl)


def test_sdxl_embedding_loads_into_both_encoders_and_unloads_exactly(xl, files):
    base = png(xl.run(spec()))
    with_embedding = png(xl.run(spec(emb(files["sdxl"]))))
    assert with_embedding != base
    assert png(xl.run(spec())) == base
    for tokenizer, encoder in ((xl.base.tokenizer, xl.base.text_encoder), (xl.base.tokenizer_2, xl.base.text_encoder_2)):
        assert encoder.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert png(xl.run(spec(emb(files["sdxl"], kind="negative")))) not in (base, with_embedding)
    assert png(xl.run(spec(emb(files["sdxl"], weight=0)))) == base
    with pytest.raises(InvalidInput) as excinfo:
        xl.run(spec(emb(files["a1111"])))
    assert "clip_l/clip_g" in excinfo.value.message
    assert png(xl.run(spec())) == base


# ---- VAE overrides ----------------------------------------------------------------------


def vae_use(engine_data_dir: Path, path: Path, family: str = "sd1x") -> VaeUse:
    module = load_vae(path, engine_data_dir, family)
    return VaeUse(key=f"vae|{path.name}|{family}", air="t:vae@1", path=path, family=family, module=module)


def test_ldm_vae_with_the_models_own_weights_reproduces_the_base(model, files, base, engine_data_dir):
    assert png(model.run(spec(vae=vae_use(engine_data_dir, files["vae-exact"])))) == base


def test_vae_layouts_load_to_the_same_weights(files, engine_data_dir):
    ldm = load_vae(files["vae"], engine_data_dir, "sd1x").state_dict()
    for other in ("vae-prefixed", "vae-diffusers"):
        got = load_vae(files[other], engine_data_dir, "sd1x").state_dict()
        assert got.keys() == ldm.keys() and all(torch.equal(got[k], ldm[k]) for k in ldm)
    fp16 = load_vae(files["vae-fp16"], engine_data_dir, "sd1x")
    assert next(fp16.parameters()).dtype == torch.float32


def test_vae_override_changes_the_image_and_is_restored(model, files, base, engine_data_dir):
    own = model.base.vae
    use = vae_use(engine_data_dir, files["vae"])
    swapped = png(model.run(spec(vae=use)))
    assert swapped != base
    assert model.base.vae is own
    assert png(model.run(spec())) == base
    init = Image.new("RGB", (64, 64), (20, 120, 220))
    img2img = spec(init_image=init, strength=0.6)
    plain = png(model.run(img2img))
    assert png(model.run(replace(img2img, vae=use))) != plain
    assert all(p.vae is own for p in model._variants.values())  # incl. a variant created during the swap
    assert png(model.run(img2img)) == plain
    assert png(model.run(spec())) == base


def test_vae_and_embedding_together(model, files, base, engine_data_dir):
    both = png(model.run(spec(emb(files["a1111"]), vae=vae_use(engine_data_dir, files["vae"]))))
    assert both not in (base, png(model.run(spec(emb(files["a1111"])))))
    assert png(model.run(spec())) == base


def test_sdxl_vae_override(xl, files, engine_data_dir, sdxl):
    base = png(xl.run(spec()))
    assert png(xl.run(spec(vae=vae_use(engine_data_dir, files["vae-xl-exact"], "sdxl")))) == base
    changed = vae_use(engine_data_dir, write_ldm_vae(sdxl, files["vae"].parent / "xl-vae.safetensors", seed=3), "sdxl")
    assert changed.module.config.scaling_factor == xl.base.vae.config.scaling_factor  # SDXL's, not SD-1.x's
    assert png(xl.run(spec(vae=changed))) != base
    assert png(xl.run(spec())) == base


def test_a_vae_of_unknown_shape_is_refused(tmp_path, engine_data_dir):
    path = tmp_path / "odd.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(64, 4, 3, 3), "encoder.down.0.x": torch.zeros(1)}, str(path))
    with pytest.raises(InvalidInput) as excinfo:
        load_vae(path, engine_data_dir, "sd1x")
    assert excinfo.value.parameter == "vae" and "64" in excinfo.value.message


def test_library_caches_loaded_vaes(engine, files, engine_data_dir):
    """The engine's model cache holds a VAE by sha256 + family: a second request does not reload it."""
    use = VaeUse(key="vae|cache-test|sd1x", air="t:vae@1", path=files["vae"], family="sd1x")
    before = engine.cache.stats().as_dict()
    for _ in range(2):
        with engine.library.use_vae(spec(vae=use)) as loaded:
            assert loaded.vae.module is not None
    after = engine.cache.stats().as_dict()
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    assert "vae|cache-test|sd1x" in engine.cache


# ---- upload checks ----------------------------------------------------------------------


def test_tiny_widths_match_the_built_ins(pristine, xl):
    from engine.upload.sniff import TINY_SDXL_TI_WIDTHS, TINY_TI_WIDTHS

    assert set(TINY_TI_WIDTHS) == {pristine.base.text_encoder.config.hidden_size}
    assert TINY_SDXL_TI_WIDTHS == {"clip_l": xl.base.text_encoder.config.hidden_size,
                                   "clip_g": xl.base.text_encoder_2.config.hidden_size}


def test_upload_sniffing_checks_the_architecture_by_width(files):
    def declare(name: str, architecture: str) -> None:
        check_declared(sniff_model(read_safetensors_info(files[name])), "embeddings", architecture)

    declare("a1111", "sd1x")
    declare("diffusers", "sd1x")
    declare("wide", "sd1x")
    declare("sdxl", "sdxl")
    declare("sdxl", "pony")
    for name, architecture in (("a1111", "sdxl"), ("sdxl", "sd1x"), ("wide", "sdxl")):
        with pytest.raises(InvalidModelFile) as excinfo:
            declare(name, architecture)
        assert excinfo.value.parameter == "architecture"
