"""The playground's copies of server tables (it is plain JS with no build step) match the server's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.schedulers import SCHEDULERS
from protocol.models import ARCHITECTURES

APP_JS = (Path(__file__).resolve().parents[2] / "server" / "static" / "app.js").read_text()


def js_list(name: str) -> list[str]:
    match = re.search(rf"const {name} = \[(.*?)\];", APP_JS, re.S)
    assert match, name
    return json.loads("[" + match.group(1).rstrip().rstrip(",") + "]")


def test_scheduler_names_match_the_engine_table():
    short_names = [n for n in SCHEDULERS if not n.endswith("Scheduler")]
    assert js_list("SCHEDULERS") == short_names


def test_architectures_match_the_protocol():
    assert sorted(js_list("ARCHITECTURES")) == sorted(ARCHITECTURES)
