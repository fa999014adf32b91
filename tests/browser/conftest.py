"""A real headless Chromium (Debian's) driven by Playwright for Python.

Skipped, with the reason shown, where /usr/bin/chromium or the ``playwright``
package is missing (``.ci/browser-deps.sh`` installs the browser). Playwright's
own browser download (``playwright install``) is never used: it cannot work
without the internet; Playwright drives the system Chromium over CDP instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import RunningServer

CHROMIUM = Path(os.environ.get("WISP_CHROMIUM", "/usr/bin/chromium"))

# Without the background-networking flags Chromium keeps calling home, which
# here means hammering a closed network. Playwright gives every launch() a
# fresh temporary profile (it refuses --user-data-dir in args for that reason).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (needs /usr/bin/chromium and playwright)")


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: run .ci/browser-deps.sh (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright (no `playwright install` needed)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Playground:
    """One tab on the playground, with the page's JS errors collected."""

    def __init__(self, page, server: RunningServer) -> None:  # type: ignore[no-untyped-def]
        self.page = page
        self.server = server
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message) -> None:  # type: ignore[no-untyped-def]
        # CSP violations and uncaught errors land here as console errors.
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def open(self, key: str | None = None, wait: str | None = "connected") -> "Playground":
        self.page.goto(self.server.http_url + "/playground")
        self.page.fill("#api-key", key if key is not None else self.server.key)
        self.page.click("#key-form button[type=submit]")
        if wait:
            self.expect_state(wait)
        return self

    def expect_state(self, state: str, timeout: float = 15_000) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#conn-state")).to_have_text(state, timeout=timeout)

    def tab(self, name: str) -> None:
        self.page.click(f".tabs [data-tab={name}]")

    def fill_generate(self, **fields: object) -> None:
        """Fill the Generate form by input name (width=64, steps=2, seed=…)."""
        for name, value in fields.items():
            self.page.fill(f"#gen-form [name={name}]", "" if value is None else str(value))

    def session_uuid(self) -> str:
        text = self.page.inner_text("#session-uuid").strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", text), text
        return text


@pytest.fixture
def playground(browser, wisp_server: RunningServer) -> Iterator[Playground]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    pg = Playground(page, wisp_server)
    try:
        yield pg
        assert not pg.problems, pg.problems
        # Nothing ended up in the general message area unasked (stray errors are shown there).
        assert page.locator("#general-message").is_hidden(), page.inner_text("#general-message")
    finally:
        context.close()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """$WISP_SCREENSHOT_DIR when set (to keep them), else the test's tmp dir."""
    folder = Path(os.environ.get("WISP_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lora_file(wisp_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small kohya LoRA for the tiny SD-1.x model (uploads in the Models tab)."""
    from engine.builtin.tiny_sd15 import ensure_tiny_sd15
    from tests.fixtures.loras import write_lora

    folder = ensure_tiny_sd15(tmp_path_factory.mktemp("builtin"))
    return write_lora(folder, tmp_path_factory.mktemp("lora") / "pg-wash.safetensors", fmt="kohya", seed=3)
