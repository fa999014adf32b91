"""engine.upscalers: spandrel without its ``__init__`` (no torchvision), detection, the job's round trip."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from engine import jobs, upscalers
from engine.upload.safetensors_check import InvalidModelFile
from tests.conftest import run_python
from tests.fixtures.upscalers import write_compact, write_dncnn, write_esrgan

if importlib.util.find_spec("spandrel") is None:
    pytest.skip("spandrel is not installed (.ci/spandrel.sh could not fetch it): upscaler models are off", allow_module_level=True)


def _main_registry() -> list[tuple[str, str]]:
    """(module, class) of every ``ArchSupport.from_architecture(M.C())`` in the installed spandrel's main registry, in order."""
    spec = importlib.util.find_spec("spandrel")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "__helpers" / "main_registry.py"
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_architecture":
            arch = node.args[0]
            assert isinstance(arch, ast.Call) and isinstance(arch.func, ast.Attribute) and isinstance(arch.func.value, ast.Name)
            found.append((arch.func.value.id, arch.func.attr))
    return found


def test_the_registry_is_spandrels_less_the_two_that_need_torchvision():
    main = _main_registry()
    assert len(main) == 42
    assert [m for m, _ in main if m in upscalers.LEFT_OUT] == ["RestoreFormer", "LaMa"]
    assert list(upscalers.ARCHITECTURES) == [entry for entry in main if entry[0] not in upscalers.LEFT_OUT]
    registry = upscalers.require().registry
    assert [str(s.architecture.id) for s in registry.architectures("insertion")] == [m for m, _ in upscalers.ARCHITECTURES]


def test_spandrel_is_read_without_its_init_nor_torchvision():
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: spandrel is imported whole")
    result = run_python(
        "import sys\n"
        "from engine import upscalers\n"
        "parts = upscalers.require()\n"
        "print(parts.piecemeal, len(parts.registry), 'torchvision' in sys.modules, hasattr(sys.modules['spandrel'], 'MAIN_REGISTRY'))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "40", "False", "False"]


def test_detection(tmp_path):
    compact = upscalers.detect(write_compact(tmp_path / "c.safetensors"))
    assert (compact.architecture, compact.arch_id, compact.scale) == ("RealESRGAN Compact", "Compact", 2)
    esrgan = upscalers.detect(write_esrgan(tmp_path / "e.safetensors"))
    assert (esrgan.architecture, esrgan.scale, esrgan.input_channels, esrgan.output_channels) == ("ESRGAN", 4, 3, 3)
    with pytest.raises(InvalidModelFile, match="DnCNN network ×1, a restoration model") as refused:
        upscalers.detect(write_dncnn(tmp_path / "d.safetensors"))
    assert refused.value.parameter == "downloadURL"


def test_a_loaded_upscaler_runs_on_rgb(tmp_path):
    from PIL import Image

    network = upscalers.load(write_esrgan(tmp_path / "e.safetensors"), "cpu")
    out = network.run(Image.new("RGB", (9, 7), (10, 200, 30)))
    assert out.size == (36, 28) and out.mode == "RGB"
    assert network.run(Image.new("RGB", (9, 7), (10, 200, 30))).tobytes() == out.tobytes()


def test_the_job_round_trips():
    job = jobs.UpscaleJob(task_uuid="t", team="a", image="x", factor=4.0, owner="s",
                          model=jobs.UpscalerRef(air="s:u@1", sha256="ab" * 32, architecture="ESRGAN", scale=4, size_bytes=9))
    assert jobs.decode_job(jobs.encode(job)) == job
    plain = jobs.UpscaleJob(task_uuid="t", team="a", image="x", factor=2.0)
    assert jobs.decode_job(jobs.encode(plain)) == plain and plain.model is None
