"""The playground's Training tab in a real browser, against a real ``wisp serve``.

Trains on the built-in tiny model (random weights: it proves the path, not the
pictures) for a few steps. The server and its one training slot are shared with
the other tests, so each job here is short or cancelled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.datasets import png, zip_of

pytestmark = pytest.mark.browser

APP_JS = (Path(__file__).resolve().parents[2] / "server" / "static" / "app.js").read_text()
SEED_ORDER = [
    "deploying_gpu", "training_started", "training_success", "trained_model_compressing",
    "trained_model_uploading", "trained_model_uploaded", "deploying_model", "model_ready",
]


def expect(locator):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def js_value(name: str) -> object:
    match = re.search(rf"const {name} = (\[.*?\]|\{{.*?\}});", APP_JS, re.S)
    assert match, name
    return json.loads(re.sub(r",\s*([\]}])", r"\1", match.group(1)))


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("dataset")
    paths = []
    for seed in (1, 2):
        path = folder / f"face-{seed}.png"
        path.write_bytes(png(seed))
        paths.append(path)
    return paths


def start_training(playground, files: list[Path], steps: int, **fields: str) -> object:  # type: ignore[no-untyped-def]
    """Fill the Training form and submit it; returns the new job's card."""
    page = playground.page
    playground.tab("training")
    page.set_input_files("#t-files", [str(f) for f in files])
    page.fill("#t-steps", str(steps))
    for name, value in fields.items():
        page.fill(f"#train-form [name={name}]", value)
    before = page.locator("#trainings .training-run").count()
    page.click("#train-form button[type=submit]")
    expect(page.locator("#trainings .training-run")).to_have_count(before + 1)
    return page.locator("#trainings .training-run").first


def statuses_done(card) -> list[str]:  # type: ignore[no-untyped-def]
    return card.locator(".train-statuses li[data-state=done]").evaluate_all("lis => lis.map(l => l.dataset.status)")


# ---- the JS tables match the server's (plain Python: runs without a browser too) ------------


def test_training_tables_match_the_server():
    from engine.training.runner import RECIPE_BASES
    from engine.upload.sniff import ARCHITECTURE_FAMILIES
    from protocol.training import RECIPES, TRAINING_STATUSES

    assert js_value("TRAINING_RECIPES") == RECIPES
    assert js_value("RECIPE_BASES") == RECIPE_BASES
    assert js_value("ARCHITECTURE_FAMILIES") == ARCHITECTURE_FAMILIES
    assert js_value("TRAINING_STATUSES") == list(TRAINING_STATUSES)
    # Each status has its plain words (shown; the wire name stays in data-status).
    words = js_value("TRAINING_STATUS_WORDS")
    assert list(words) == list(TRAINING_STATUSES) and len(set(words.values())) == len(words)


# ---- in the browser ------------------------------------------------------------------------


def test_train_follow_statuses_then_generate_with_the_lora(playground, pngs, screenshot_dir):
    playground.open()
    page = playground.page
    playground.tab("training")
    # The base-model picker offers the recipe's built-in model and SD-1.x checkpoints only.
    expect(page.locator("#t-base option").first).to_have_text("wisp:tiny-sd15@1 (built-in)")
    assert page.locator("#t-base option[value='wisp:tiny-sdxl@1']").count() == 0
    page.select_option("#t-recipe", "wisp:sdxl@lora-training")
    expect(page.locator("#t-base option").first).to_have_text("wisp:tiny-sdxl@1 (built-in)")
    assert page.locator("#t-base option[value='wisp:tiny-sd15@1']").count() == 0
    page.select_option("#t-recipe", "wisp:sd1x@lora-training")

    card = start_training(playground, pngs, steps=3, triggerWord="pgzq", learningRate="0.005")
    expect(card.locator(".run-status")).to_have_attribute("data-status", "model_ready", timeout=120_000)
    assert statuses_done(card) == SEED_ORDER
    # Shown in plain words; the wire names stay in data-status (and the title).
    expect(card.locator(".run-status")).to_have_text("Ready to use")
    assert card.locator(".train-statuses .phase-name").all_inner_texts() == [
        "Preparing", "Training", "Trained", "Packing the LoRA", "Saving the LoRA", "Saved", "Adding it to the library", "Ready to use",
    ]
    expect(card.locator(".train-step")).to_have_text(re.compile(r"^step 3/3 · loss \d"))
    assert card.locator(".progress .bar").evaluate("b => b.style.width") == "100%"
    air = card.locator(".train-result code.air").inner_text()
    assert re.fullmatch(r"[\w.-]+:lora-[0-9a-f]{12}@1", air), air
    expect(card.locator(".cancel")).to_be_hidden()
    path = screenshot_dir / "playground-training.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")

    # One click: the Generate tab, the LoRA picked and added, the trained-on model chosen.
    card.locator(".use-lora").click()
    expect(page.locator("#tab-generate")).to_be_visible()
    expect(page.locator(f"#g-lora-pick option[value='{air}']")).to_have_count(1)
    expect(page.locator("#g-loras .lora-air")).to_have_text([air])
    assert page.locator("#g-model").input_value() == "wisp:tiny-sd15@1"
    playground.fill_generate(positivePrompt="pgzq", width=64, height=64, steps=2, seed=5)
    page.click("#gen-form button[type=submit]")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .slot img')].some(i => i.complete && i.naturalWidth > 0)"
    )
    expect(page.locator("#results .run.failed")).to_have_count(0)


def test_cancel_a_long_training(playground, pngs):
    playground.open()
    page = playground.page
    card = start_training(playground, pngs, steps=10_000)
    # Running, with the progress bar moving, before it is cancelled.
    expect(card.locator(".train-step")).to_contain_text("/10000", timeout=60_000)
    expect(card.locator(".progress")).to_be_visible()
    card.locator(".cancel").click()
    expect(card.locator(".run-status")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(card.locator(".run-error")).to_contain_text("taskCancelled")
    expect(card).to_have_class(re.compile("failed"))
    # Shown like other errors without a parameter: in the form's message area.
    expect(page.locator("#train-form > .form-message")).to_contain_text("taskCancelled")
    expect(card.locator(".cancel")).to_be_hidden()


def test_bad_dataset_entry_is_shown_at_the_dataset_field(playground, pngs, tmp_path):
    playground.open()
    page = playground.page
    # Nothing at all: refused before anything is sent.
    playground.tab("training")
    page.click("#train-form button[type=submit]")
    field = page.locator("#train-form [data-param='inputs.dataset']")
    expect(field.locator(".field-error")).to_contain_text("choose image")
    assert page.locator("#trainings .training-run").count() == 0
    # A file that is no image: the server names it, at the dataset field.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all")
    card = start_training(playground, [pngs[0], notes], steps=2)
    expect(field.locator(".field-error")).to_contain_text("inputs.dataset[1]", timeout=60_000)
    expect(field).to_have_class(re.compile("has-error"))
    expect(card.locator(".run-status")).to_have_attribute("data-status", "failed")
    expect(card.locator(".run-error")).to_contain_text("invalidImage (inputs.dataset)")
    # A bad line in the URL/imageUUID box lands there too; the files are cleared first.
    page.set_input_files("#t-files", [])
    page.fill("#t-refs", "not-an-image")
    page.click("#train-form button[type=submit]")
    expect(page.locator("#trainings .training-run").first.locator(".run-status")).to_have_attribute("data-status", "failed", timeout=60_000)
    expect(field.locator(".field-error")).to_contain_text("neither an imageUUID")


def test_training_survives_a_socket_drop(playground, pngs):
    playground.open()
    page = playground.page
    card = start_training(playground, pngs, steps=3)
    expect(card.locator(".run-status")).not_to_have_attribute("data-status", "sending")
    # Statuses produced while the socket is gone arrive on resume.
    page.evaluate("window.__wispTest.dropSocket(1500)")
    playground.expect_state("reconnecting", timeout=5_000)
    playground.expect_state("connected")
    expect(page.locator("#conn-detail")).to_have_text("resumed")
    expect(card.locator(".run-status")).to_have_attribute("data-status", "model_ready", timeout=120_000)
    assert statuses_done(card) == SEED_ORDER


def test_training_after_a_session_was_lost_is_polled(playground, pngs):
    playground.open()
    page = playground.page
    card = start_training(playground, pngs, steps=3)
    expect(card.locator(".run-status")).not_to_have_attribute("data-status", "sending")
    # The server does not know the session on return: pushes go nowhere, getResponse tells.
    page.evaluate("window.__wispTest.dropSession(500)")
    playground.expect_state("connected")
    expect(page.locator("#conn-detail")).to_have_text("new session")
    expect(card.locator(".run-status")).to_have_attribute("data-status", "model_ready", timeout=120_000)
    expect(card.locator(".train-result code.air")).to_have_count(1)


def test_training_tab_fits_a_phone_and_takes_a_zip(playground, pngs, tmp_path, screenshot_dir):
    page = playground.page
    page.set_viewport_size({"width": 375, "height": 800})
    playground.open()
    archive = tmp_path / "faces.zip"
    archive.write_bytes(zip_of({p.name: p.read_bytes() for p in pngs}))
    card = start_training(playground, [archive], steps=2)
    expect(card.locator(".run-status")).to_have_attribute("data-status", "model_ready", timeout=120_000)
    expect(card.locator(".train-statuses li[data-status=training_success] .phase-message")).to_contain_text("2 steps")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    path = screenshot_dir / "playground-training-phone.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


@pytest.mark.parametrize(
    "fields, parameter, text",
    [
        ({"importAir": "wisp:stolen@1"}, "importModel.air", "your team's sources"),
        ({"trainingSteps": "0"}, "trainingSteps", "between 1 and 10000"),
        ({"rank": "500"}, "rank", "must be a whole number from 1 to 128"),
    ],
)
def test_refused_fields_are_shown_at_their_field(playground, pngs, fields, parameter, text):
    playground.open()
    page = playground.page
    card = start_training(playground, pngs[:1], steps=2, **fields)
    expect(page.locator(f"#train-form [data-param='{parameter}'] > .field-error")).to_contain_text(text)
    expect(card.locator(".run-status")).to_have_attribute("data-status", "failed")
