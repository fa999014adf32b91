"""``wisp:shapes-sd15@1``: a small SD-1.x model trained in the repo to draw coloured shapes.

It knows one flat-coloured shape on a plain background: the colours red,
green, blue, yellow, white, black, purple and orange; circle, square (or box),
triangle and star; in the centre or at the top/bottom left/right; small or
large; "on a <colour> background"; in any word order.  It draws nothing else
(no people, objects, textures or text) and is at its best at 64×64, its
training size.  The weights (``model/``, float16, ~5 MB) were made by
``python -m engine.builtin.shapes.train`` from pictures drawn by
:mod:`engine.builtin.shapes.scene`; rerun it to reproduce them.
"""

from __future__ import annotations

from pathlib import Path

SHAPES_AIR = "wisp:shapes-sd15@1"
BUILD_VERSION = "2"
DEFAULT_CFG = 2.0
"""Its default guidance scale (the one-hour weights are at their best at 1.5–2 and oversaturate by 3: bench/RESULTS.md)."""
MODEL_FOLDER = Path(__file__).resolve().parent / "model"


def shapes_folder(data_dir: Path) -> Path:
    """The shipped diffusers folder (``data_dir`` is unused: nothing is built)."""
    if not (MODEL_FOLDER / "model_index.json").exists():
        raise FileNotFoundError(
            f"{SHAPES_AIR}'s weights are missing from {MODEL_FOLDER}; "
            "rebuild them with: python -m engine.builtin.shapes.train"
        )
    return MODEL_FOLDER
