"""``python bench/loadtest.py``: the load generator, run from the bench folder.

The code lives in the product, :mod:`server.loadtest` (``wisp loadtest``);
this entry and the names below keep the bench scripts that import
``bench.loadtest`` working.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.loadtest import (  # noqa: E402
    MAX_DURATION_S,
    Client,
    LoadConfig,
    Stats,
    add_arguments,
    check_target,
    cmd_loadtest,
    config_from_args,
    main,
    parse_mix,
    render,
    run_load,
)

__all__ = [
    "MAX_DURATION_S",
    "Client",
    "LoadConfig",
    "Stats",
    "add_arguments",
    "check_target",
    "cmd_loadtest",
    "config_from_args",
    "main",
    "parse_mix",
    "render",
    "run_load",
]

if __name__ == "__main__":
    sys.exit(main())
