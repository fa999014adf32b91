"""One code path for CPU and CUDA: only the device and the weights' dtype differ."""

from __future__ import annotations

import pytest
import torch

from engine.core import inference_dtype


def test_auto_is_half_on_cuda_and_float32_on_cpu():
    assert inference_dtype("cuda") is torch.float16 and inference_dtype("cuda:1") is torch.float16
    assert inference_dtype("cpu") is None  # float32, the loaders' default


def test_explicit_dtypes():
    assert inference_dtype("cuda", "bfloat16") is torch.bfloat16
    assert inference_dtype("cpu", "bfloat16") is torch.bfloat16
    assert inference_dtype("cuda", "float32") is None
    with pytest.raises(ValueError):
        inference_dtype("cpu", "float16")
    with pytest.raises(ValueError):
        inference_dtype("cpu", "float64")
