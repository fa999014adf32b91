#!/usr/bin/env bash
# spandrel, the library that reads uploaded upscaler models (engine/upscalers.py), into .venv
# WITHOUT its dependencies. It declares torchvision, and the only torchvision pip reaches for this
# project's torch (2.13.0+cpu) is a CUDA build that fails to load against it ("operator
# torchvision::nms does not exist") and, once installed, breaks diffusers' pipeline imports too. So
# spandrel cannot be a dependency in pyproject.toml (pip would pull torchvision with it); wisp imports
# it without the two architectures that need torchvision (LaMa, RestoreFormer: no upscalers). Its
# other dependencies (torch, numpy, safetensors, einops, typing_extensions) are wisp's own.
# Idempotent; creates .venv if it is not there. pip's later installs into .venv may print
# "spandrel 0.4.2 requires torchvision, which is not installed": expected, and harmless.
# Where no package index offers spandrel it says so and goes on: the server then refuses upscaler
# uploads, and the tests of upscaler models are skipped, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/pip ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/pip install -q --no-deps spandrel==0.4.2; then
    echo "spandrel.sh: could not install spandrel==0.4.2: upscaler models are off, their tests skipped" >&2
fi
