from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from engine.core import Engine, EngineConfig


@pytest.fixture(scope="session")
def engine_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-data")


@pytest.fixture
def engine(engine_data_dir: Path) -> Iterator[Engine]:
    """An engine driven without any socket (one worker thread, one torch thread)."""
    eng = Engine(EngineConfig(data_dir=engine_data_dir, torch_threads=1))
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()
