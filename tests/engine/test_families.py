"""The model-family registry: one descriptor per family folder, and nobody else switches on a family name.

Two checks:

* a scan (with :mod:`ast`, nothing imported) of ``engine/`` for code that
  decides on a family name literal (``family(...) == "sdxl"``, ``{"sd1x": …}``,
  ``TABLE["sd1x"]``, ``case "sdxl":``) outside the family folders' descriptor
  modules and the registry: that knowledge belongs in a descriptor;
* every registered family's descriptor is complete, and the tables other
  modules derive from the registry are the ones they had before (so behaviour
  did not move when the knowledge did).

``protocol/`` and ``server/`` are out of the scan's scope: they carry family
names as *wire values* (``baseModelType``, dialect model types), not as a
switch on what a model is.
"""

from __future__ import annotations

import ast
import dataclasses

import pytest

from engine.pipelines import families
from engine.pipelines.family import ModelDefaults, ModelFamily
from tests.conftest import ROOT, run_python

ALLOWED = {
    "engine/pipelines/families.py",
    "engine/pipelines/family.py",
}
"""The registry and the descriptor type; plus every ``engine/pipelines/<family>/family.py`` (see ``_allowed``)."""

KNOWN_LEFT: set[str] = set()
"""Switches known and left to their owners; a file may leave this set, never join it."""

FAMILY_NAMES = ("sd1x", "sdxl")
"""Spelled out (not read from the registry) so that the scan does not depend on what it checks."""


def _allowed(relative: str) -> bool:
    parts = relative.split("/")
    return relative in ALLOWED or (len(parts) == 4 and parts[:2] == ["engine", "pipelines"] and parts[3] == "family.py")


def _is_name(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in FAMILY_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_name(e) for e in node.elts)
    return False


def family_switches(source: str) -> list[int]:
    """Line numbers where ``source`` decides on a family name literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_is_name(n) for n in (node.left, *node.comparators)):
            found.append(node.lineno)  # == "sdxl", in ("sd1x", …)
        elif isinstance(node, ast.Dict) and any(_is_name(k) for k in node.keys):
            found.append(node.lineno)  # a table keyed by family
        elif isinstance(node, ast.Subscript) and _is_name(node.slice):
            found.append(node.lineno)  # TABLE["sd1x"]
        elif isinstance(node, ast.MatchValue) and _is_name(node.value):
            found.append(node.lineno)  # case "sdxl":
    return sorted(found)


def test_the_scan_finds_each_kind_of_switch() -> None:
    """The switches this issue removed, as they were written, are all found; a plain use of a name is not."""
    before = '''
if family(architecture) == "sd1x":
    pass
LATENT_RGB = {"sd1x": 1, "sdxl": 2}
factors = LATENT_RGB.get(family, LATENT_RGB["sd1x"])
layers = plan(conv_projections=family == "sd1x")
ok = kind in ("sd1x", "sdxl")
match kind:
    case "sdxl":
        pass
'''
    assert family_switches(before) == [2, 4, 5, 6, 7, 9]
    assert family_switches('ModelEntry(architecture="sd1x")\nreturn "sdxl", "why"\n') == []


def test_no_module_outside_the_family_folders_switches_on_a_family_name() -> None:
    offenders: dict[str, list[int]] = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if _allowed(relative):
            continue
        lines = family_switches(path.read_text(encoding="utf-8"))
        if lines:
            offenders[relative] = lines
    unexpected = {k: v for k, v in offenders.items() if k not in KNOWN_LEFT}
    assert not unexpected, (
        f"family names switched on outside engine/pipelines/<family>/family.py: {unexpected}; "
        "ask engine.pipelines.families (family_of/get/all) and put the knowledge in the descriptor"
    )


@pytest.mark.parametrize("family", families.all(), ids=lambda f: f.name)
def test_each_registered_family_is_complete(family: ModelFamily) -> None:
    import diffusers

    optional = {"refiner_layout"}  # only SDXL has a refiner-only layout
    for field in dataclasses.fields(family):
        assert field.name in optional or getattr(family, field.name) is not None, field.name
    assert families.get(family.name) is family
    assert next(iter(family.architectures)) == family.name  # its own name first: the fallback defaults
    assert all(isinstance(d, ModelDefaults) for d in family.architectures.values())
    for architecture in family.architectures:
        assert families.family_of(architecture) is family
    assert set(family.pipelines) == {"txt2img", "img2img", "inpaint"}
    for class_name in family.pipelines.values():
        assert hasattr(diffusers, class_name), class_name
    assert families.by_pipeline(family.pipeline) is family
    names = [c.name for c in family.components]
    assert {"unet", "vae"} <= set(names) and len(set(names)) == len(names)
    assert all(c.prefix.endswith(".") and c.title for c in family.components)
    assert callable(family.config_folder) and callable(family.builtin.build)
    assert family.builtin.architecture in family.architectures and family.builtin.air.startswith("wisp:")
    assert family.training_resolution > 0 and family.training_resolution % 64 == 0
    assert len(family.preview_factors) == 4 and all(len(row) == 3 for row in family.preview_factors)
    assert family.sniffing.context_widths
    assert family.sniffing.embedding_widths or family.sniffing.embedding_parts
    assert family.sniffing.checkpoint_keys and family.sniffing.checkpoint_keys_why
    assert family.sniffing.controlnet_zero_convs > 0
    assert family.sniffing.lora_names
    assert isinstance(family.lycoris_conv_projections, bool)


def test_families_do_not_overlap() -> None:
    registered = families.all()
    assert len({f.name for f in registered}) == len(registered)
    architectures = [a for f in registered for a in f.architectures]
    assert len(set(architectures)) == len(architectures)
    widths = [w for f in registered for w in f.sniffing.context_widths]
    assert len(set(widths)) == len(widths)
    zero_convs = [f.sniffing.controlnet_zero_convs for f in registered]
    assert len(set(zero_convs)) == len(zero_convs)
    assert families.family_of("sd2x") is None and families.family_of("flux1d") is None
    with pytest.raises(KeyError):
        families.get("sd3")


def test_register_refuses_a_second_family_of_the_same_name_or_architecture() -> None:
    sd1x = families.get("sd1x")
    with pytest.raises(ValueError, match="registered twice"):
        families.register(sd1x)
    with pytest.raises(ValueError, match="already belong"):
        families.register(dataclasses.replace(sd1x, name="sdx", architectures={"sdx": ModelDefaults(), "sdhyper": ModelDefaults()}))
    assert families.names() == ("sd1x", "sdxl")


def test_tables_derived_from_the_registry_are_the_ones_written_by_hand_before() -> None:
    """What models.py, sniff.py, previews.py and runner.py used to spell out, now gathered from the descriptors."""
    from engine.images.previews import LATENT_RGB
    from engine.models import ARCHITECTURE_DEFAULTS, BUILTIN_MODELS, LOADABLE_FAMILIES
    from engine.pipelines.stable_diffusion.loading import CHECKPOINT_PREFIXES
    from engine.training.runner import RECIPE_BASES
    from engine.upload import sniff

    assert LOADABLE_FAMILIES == ("sd1x", "sdxl")
    assert sniff.ARCHITECTURE_FAMILIES == {
        "sd1x": "sd1x", "sdhyper": "sd1x", "sd1xlcm": "sd1x", "sd2x": "sd2x",
        "sdxl": "sdxl", "sdxllcm": "sdxl", "sdxldistilled": "sdxl", "sdxlhyper": "sdxl", "sdxllightning": "sdxl",
        "sdxlturbo": "sdxl", "pony": "sdxl", "illustrious": "sdxl",
    }  # fmt: skip
    assert sniff.CONTEXT_WIDTHS == {768: "sd1x", 1024: "sd2x", 1280: "sdxl", 2048: "sdxl"}
    assert sniff.TEXT_WIDTHS == {768: "sd1x", 1024: "sd2x"}
    assert sniff.TINY_TI_WIDTHS == {32: "sd1x"}
    assert sniff.SDXL_TI_WIDTHS == {"clip_l": 768, "clip_g": 1280}
    assert sniff.TINY_SDXL_TI_WIDTHS == {"clip_l": 32, "clip_g": 64}
    assert sniff.ZERO_CONVS == {12: "sd1x", 9: "sdxl"}
    assert ARCHITECTURE_DEFAULTS == {
        "sd1x": ModelDefaults(steps=20, cfg_scale=7.0),
        "sdhyper": ModelDefaults(steps=8, cfg_scale=1.0, scheduler="TCD"),
        "sd1xlcm": ModelDefaults(steps=4, cfg_scale=1.5, scheduler="LCM"),
        "sdxl": ModelDefaults(steps=25, cfg_scale=7.0),
        "sdxldistilled": ModelDefaults(steps=25, cfg_scale=7.0),
        "sdxllcm": ModelDefaults(steps=4, cfg_scale=1.5, scheduler="LCM"),
        "sdxlhyper": ModelDefaults(steps=8, cfg_scale=1.0, scheduler="TCD"),
        "sdxllightning": ModelDefaults(steps=4, cfg_scale=1.0, scheduler="Euler trailing"),
        "sdxlturbo": ModelDefaults(steps=4, cfg_scale=1.0, scheduler="Euler a trailing", strength=0.5),
        "pony": ModelDefaults(steps=25, cfg_scale=7.0, scheduler="Euler a", clip_skip=1),
        "illustrious": ModelDefaults(steps=28, cfg_scale=6.0, scheduler="Euler a", clip_skip=1),
    }
    assert {air: (e.name, e.architecture) for air, e in BUILTIN_MODELS.items()} == {
        "wisp:tiny-sd15@1": ("wisp tiny SD 1.x (random weights)", "sd1x"),
        "wisp:tiny-sdxl@1": ("wisp tiny SDXL (random weights)", "sdxl"),
        "wisp:shapes-sd15@1": ("wisp shapes SD 1.x (coloured shapes, 64 px)", "sd1x"),
    }
    assert BUILTIN_MODELS["wisp:shapes-sd15@1"].defaults == ModelDefaults(steps=20, cfg_scale=2.0)
    assert RECIPE_BASES == {"sd1x": "wisp:tiny-sd15@1", "sdxl": "wisp:tiny-sdxl@1"}
    assert LATENT_RGB["sd1x"][0] == (0.3512, 0.2297, 0.3227) and LATENT_RGB["sdxl"][3] == (-0.3112, -0.2359, -0.2076)
    assert CHECKPOINT_PREFIXES == (
        "cond_stage_model.transformer.", "conditioner.embedders.0.model.", "conditioner.embedders.0.transformer.",
        "conditioner.embedders.1.model.", "first_stage_model.", "model.diffusion_model.",
    )  # fmt: skip  (conditioner.embedders.0.model.: the SDXL refiner's one text encoder)
    assert [f.training_resolution for f in families.all()] == [512, 1024]
    assert [f.lycoris_conv_projections for f in families.all()] == [True, False]


@pytest.mark.parametrize(
    "first",
    ["engine.pipelines.stable_diffusion.family", "engine.pipelines.stable_diffusion", "engine.vae", "engine.upload.sniff"],
)
def test_the_registry_is_whole_whichever_module_is_imported_first(first: str) -> None:
    """A family folder's package imports the registry's users; none of them may see it half built."""
    check = (
        f"import {first}\n"
        "from engine.pipelines import families\n"
        "from engine.pipelines.stable_diffusion.loading import CHECKPOINT_PREFIXES, FAMILIES\n"
        "from engine.upload.sniff import ARCHITECTURE_FAMILIES\n"
        "assert families.names() == ('sd1x', 'sdxl') and len(CHECKPOINT_PREFIXES) == 6 and set(FAMILIES) == {'sd1x', 'sdxl'}\n"
        "assert ARCHITECTURE_FAMILIES['pony'] == 'sdxl'\n"
    )
    done = run_python(check)
    assert done.returncode == 0, done.stderr[-2000:]
