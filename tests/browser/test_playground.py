"""The playground page in a real browser, against a real ``wisp serve``.

Each test opens its own tab (fresh localStorage) on the session's server. That
server is shared with tests/server, which search the library by tag and name:
what is uploaded here uses names and tags of its own ("pg…", "pgtest").
"""

from __future__ import annotations

import re
import shutil
import uuid

import pytest

from tests.conftest import FileServer, RunningServer, wisp_cli

pytestmark = pytest.mark.browser

PHASES = ["validated", "downloaded", "optimized", "stored", "ready"]


def expect(locator):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def new_source(server: RunningServer) -> str:
    name = "pg" + uuid.uuid4().hex[:10]
    result = wisp_cli("sources", "create", name, "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    return name


def rendered_images(page) -> list[dict]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(
        "#results .slot img.result",
        "imgs => imgs.map(i => ({w: i.naturalWidth, complete: i.complete, src: i.src}))",
    )


def wait_images(page, count: int) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        "n => [...document.querySelectorAll('#results .slot img.result')].filter(i => i.complete && i.naturalWidth > 0).length >= n",
        arg=count,
    )


def test_connects_with_the_key_and_keeps_it(playground):
    playground.open()
    page = playground.page
    playground.session_uuid()
    assert page.evaluate("localStorage.getItem('wisp.apiKey')") == playground.server.key
    # modelSearch filled the model picker with the built-in checkpoint.
    expect(page.locator("#g-model option[value='wisp:tiny-sd15@1']")).to_have_count(1)
    # The keep-alive ping (every 5 s) is answered.
    page.wait_for_function("() => window.__wispTest.pongs > 0", timeout=10_000)
    # The key survives a reload and reconnects by itself.
    page.reload()
    playground.expect_state("connected")


def test_wrong_key_says_auth_failed(playground):
    playground.open(key="wisp_not_a_key", wait="auth failed")
    page = playground.page
    expect(page.locator("#conn-detail")).to_contain_text("Invalid API key")
    page.wait_for_timeout(1200)  # no reconnect loop with a key the server refused
    assert page.evaluate("window.__wispTest.states").count("connecting") == 1
    playground.expect_state("auth failed")
    assert page.evaluate("localStorage.getItem('wisp.apiKey')") is None  # a refused key is not kept


def test_generate_shows_images_seeds_and_cost(playground, screenshot_dir):
    playground.open()
    page = playground.page
    playground.fill_generate(width=64, height=64, steps=2, seed=4242, numberResults=2)
    page.select_option("#g-scheduler", "Euler a")
    page.click("#gen-form button[type=submit]")
    wait_images(page, 2)
    images = rendered_images(page)
    assert len(images) == 2 and all(i["w"] == 64 for i in images), images
    seeds = page.locator("#results .seed").all_inner_texts()
    assert seeds == ["4242", "4243"]
    costs = page.locator("#results .cost").all_inner_texts()
    assert len(costs) == 2 and all(float(c) > 0 for c in costs), costs
    expect(page.locator("#results .run .run-status").first).to_have_text("done")
    path = screenshot_dir / "playground-desktop.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


@pytest.mark.parametrize(
    "fields, parameter, text",
    [
        ({"width": 63}, "width", "must be a whole number from 64 to 2048"),
        ({"width": 100}, "width", "multiple of 8"),
        ({"steps": 0}, "steps", "must be a whole number from 1 to 100"),
    ],
)
def test_validation_error_is_shown_at_its_field(playground, fields, parameter, text):
    playground.open()
    page = playground.page
    playground.fill_generate(**{"width": 64, "height": 64, "steps": 2, **fields})
    page.click("#gen-form button[type=submit]")
    error = page.locator(f"#gen-form [data-param='{parameter}'] > .field-error")
    expect(error).to_contain_text(text)
    expect(page.locator(f"#gen-form [data-param='{parameter}']")).to_have_class(re.compile("has-error"))
    expect(page.locator("#results .run.failed")).to_have_count(1)
    # The next submit clears the old error.
    playground.fill_generate(width=64, height=64, steps=2)
    page.click("#gen-form button[type=submit]")
    wait_images(page, 1)
    expect(error).to_have_count(0)


def test_unknown_scheduler_and_model_errors_land_at_their_fields(playground):
    playground.open()
    page = playground.page
    playground.fill_generate(width=64, height=64, steps=2)
    # A name the server doesn't know, as a custom option would send it.
    page.evaluate("""() => { const s = document.querySelector('#g-scheduler');
                             s.add(new Option('Warp Drive', 'Warp Drive')); s.value = 'Warp Drive'; }""")
    page.click("#gen-form button[type=submit]")
    expect(page.locator("#gen-form [data-param='scheduler'] > .field-error")).to_contain_text("unknown scheduler")
    page.select_option("#g-scheduler", "")
    page.evaluate("""() => { const s = document.querySelector('#g-model');
                             s.add(new Option('gone', 'nosuch:model@1')); s.value = 'nosuch:model@1'; }""")
    page.click("#gen-form button[type=submit]")
    expect(page.locator("#gen-form [data-param='model'] > .field-error")).to_contain_text("nosuch:model@1")


def test_lora_upload_by_url_streams_phases_then_is_usable(playground, wisp_server, file_server: FileServer, lora_file, screenshot_dir):
    source = new_source(wisp_server)
    air = f"{source}:wash@1"
    served = file_server.root / f"{uuid.uuid4().hex}.safetensors"
    shutil.copy(lora_file, served)
    playground.open()
    page = playground.page
    playground.tab("models")
    page.fill("#u-url", file_server.url(served))
    page.fill("#u-air", air)
    page.select_option("#u-category", "lora")
    page.select_option("#u-arch", "sd1x")
    page.fill("#u-name", "Playground wash")
    page.fill("#u-tags", "pgtest, watercolour")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form .form-message")).to_have_text(f"{air} is ready", timeout=60_000)
    phases = page.locator("#upload-phases li")
    assert phases.evaluate_all("lis => lis.map(l => [l.dataset.phase, l.dataset.state])") == [[p, "done"] for p in PHASES]
    # The library lists it with its category, architecture, visibility and tags.
    entry = page.locator(f"#model-list li[data-air='{air}']")
    expect(entry).to_contain_text("Playground wash")
    assert entry.locator(".badge").all_inner_texts()[:3] == ["lora", "sd1x", "private"]
    assert entry.locator(".tag").all_inner_texts() == ["pgtest", "watercolour"]
    path = screenshot_dir / "playground-models.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    # It is in the LoRA picker; generating with it works.
    playground.tab("generate")
    expect(page.locator(f"#g-lora-pick option[value='{air}']")).to_have_count(1)
    page.select_option("#g-lora-pick", air)
    page.click("#g-lora-add")
    page.fill("#g-loras input[type=number]", "0.8")
    page.select_option("#g-model", "wisp:tiny-sd15@1")  # the model the LoRA was made for (not the default shapes one)
    playground.fill_generate(width=64, height=64, steps=2, seed=7)
    page.click("#gen-form button[type=submit]")
    wait_images(page, 1)
    # A LoRA weight out of range comes back at that LoRA's row.
    page.fill("#g-loras input[type=number]", "9")
    page.click("#gen-form button[type=submit]")
    expect(page.locator("#g-loras [data-param='lora[0].weight'] .field-error")).to_contain_text("must be a number from -4 to 4")


def test_lora_upload_from_a_local_file(playground, wisp_server, lora_file):
    source = new_source(wisp_server)
    air = f"{source}:local@1"
    playground.open()
    page = playground.page
    playground.tab("models")
    page.check("#upload-form input[name=source][value=file]")
    expect(page.locator("#u-url")).to_be_hidden()
    page.set_input_files("#u-file", str(lora_file))
    page.fill("#u-air", air)
    page.fill("#u-name", "Playground local")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form .form-message")).to_have_text(f"{air} is ready", timeout=60_000)
    assert page.locator("#upload-phases li[data-state=done]").count() == 5
    expect(page.locator(f"#g-lora-pick option[value='{air}']")).to_have_count(1)
    # Errors of an upload land at their fields too: a source that is not ours.
    page.fill("#u-air", "wisp:stolen@1")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form [data-param='air'] > .field-error")).to_be_visible()


def test_upload_air_is_prefilled_under_the_teams_default_source(playground, lora_file, tmp_path):
    """A first upload needs no AIR typed and no shell step: the team's default source is there from the start."""
    named = tmp_path / f"pg first {uuid.uuid4().hex[:6]}.safetensors"
    shutil.copy(lora_file, named)
    playground.open()
    page = playground.page
    playground.tab("models")
    expect(page.locator("#u-air")).to_have_value("default:my-model@1")
    expect(page.locator("#u-air-hint")).to_contain_text("team default's sources (default")
    page.check("#upload-form input[name=source][value=file]")
    page.set_input_files("#u-file", str(named))
    air = "default:" + re.sub(r"[^A-Za-z0-9_-]+", "-", named.stem) + "@1"
    expect(page.locator("#u-air")).to_have_value(air)
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form .form-message")).to_have_text(f"{air} is ready", timeout=60_000)
    # A user's own AIR is never overwritten by a later file choice.
    page.fill("#u-air", "default:mine@2")
    page.set_input_files("#u-file", str(lora_file))
    expect(page.locator("#u-air")).to_have_value("default:mine@2")


def test_dropped_socket_reconnects_and_resumes_the_session(playground):
    playground.open()
    page = playground.page
    before = playground.session_uuid()
    # Long enough (~0.5 s here) that the result is produced while the socket is gone.
    playground.fill_generate(width=256, height=256, steps=10, seed=99, numberResults=1)
    page.click("#gen-form button[type=submit]")
    shown_at_drop = page.evaluate(
        "() => { window.__wispTest.dropSocket(1500); return document.querySelectorAll('#results .slot img.result').length; }"
    )
    assert shown_at_drop == 0
    playground.expect_state("reconnecting", timeout=5_000)
    playground.expect_state("connected")
    assert playground.session_uuid() == before
    expect(page.locator("#conn-detail")).to_have_text("resumed")
    wait_images(page, 1)
    assert page.locator("#results .seed").all_inner_texts() == ["99"]
    assert page.evaluate("window.__wispTest.resumes") == 1
    states = page.evaluate("window.__wispTest.states")
    assert states[-2:] == ["reconnecting", "connected"], states


def test_phone_width_has_no_horizontal_scroll(playground, screenshot_dir):
    page = playground.page
    page.set_viewport_size({"width": 375, "height": 800})
    playground.open()
    playground.fill_generate(width=64, height=64, steps=2, numberResults=3)
    page.click("#gen-form button[type=submit]")
    wait_images(page, 3)
    widths = {}
    for tab in ("generate", "models", "training"):
        playground.tab(tab)
        widths[tab] = page.evaluate("document.scrollingElement.scrollWidth")
    assert all(w <= 375 for w in widths.values()), widths
    playground.tab("generate")
    path = screenshot_dir / "playground-phone.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
