"""The playground as a studio (issue 17): live progress and previews, a history that survives a
reload, reuse seed, copied code that runs, img2img/inpainting with a painted mask, ControlNet, the
queue with cancel and retry, the model browser (thumbnails, use, delete), errors that stay in sight.

Against the session's real ``wisp serve``; images are 64×64 with few steps except where a slow task
is the point (the queue). Tests that compare images compare bytes or pixels the server produced with
the same request and seed, never what the model draws.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FileServer
from tests.fixtures.datasets import png

pytestmark = pytest.mark.browser

SHAPES = "wisp:shapes-sd15@1"
TINY = "wisp:tiny-sd15@1"
TINY_CONTROLNET = "wisp:tiny-controlnet-sd15@1"
SUBMIT = "#gen-form button[type=submit]"
IMAGE_URL = re.compile(r"http://127\.0\.0\.1:\d+/images/[\w.-]+")

# Every element's text, word by word: a word drawn on two lines is broken mid-word ("downloade d").
# Long tokens (AIRs, UUIDs, code) may break anywhere on purpose and are left out.
BROKEN_WORDS_JS = r"""(root) => {
  const broken = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest('code, pre, .air, .task-uuid, .breakable, option, select, textarea, dialog')) continue;
    if (!parent.getClientRects().length) continue;  // not rendered
    for (const match of node.textContent.matchAll(/[^\s\-\/·,;:()…]{2,}/g)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
      if (lines.size > 1) broken.push(match[0]);
    }
  }
  return broken;
}"""


def expect(locator):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def data_uri_bytes(uri: str) -> bytes:
    head, _, body = uri.partition(",")
    assert head.startswith("data:image/png;base64"), head[:40]
    return base64.b64decode(body)


def wait_done(page, count: int) -> None:  # type: ignore[no-untyped-def]
    """`count` cards done, each with all its images loaded."""
    page.wait_for_function(
        """n => {
          const done = [...document.querySelectorAll('#results .run[data-status=done]')];
          return done.length >= n && done.every(card =>
            [...card.querySelectorAll('img.result')].every(i => i.complete && i.naturalWidth > 0));
        }""",
        arg=count,
    )


def card_image(card) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(imageURL, seed) of a card's first image."""
    return card.locator("img.result").first.get_attribute("src"), card.locator(".seed").first.inner_text()


def copied(page, card, lang: str, fill_key: bool = False) -> str:  # type: ignore[no-untyped-def]
    """The text "Copy request" shows for a card, in one language; the dialog is closed again."""
    card.locator(".copy-request").click()
    dialog = page.locator("#code-dialog")
    expect(dialog).to_be_visible()
    if page.locator("#code-key").is_checked() != fill_key:
        page.locator("#code-key").click()
    dialog.locator(f".code-tabs [data-lang={lang}]").click()
    expect(page.locator("#code-text")).to_have_attribute("data-lang", lang)
    text = page.locator("#code-text").inner_text()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    return text


def run_python(code: str, folder: Path, key: str | None = None) -> str:
    """Run a copied snippet with this interpreter (the venv's: it has the runware SDK); returns stdout."""
    script = folder / f"snippet-{uuid.uuid4().hex[:6]}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "WISP_API_KEY"}
    if key:
        env["WISP_API_KEY"] = key
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=folder)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr[-3000:]}"
    return done.stdout


def screenshot(page, folder: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


# ---- generate: progress, previews, history, reuse seed, copied code ---------------------------


def test_progress_previews_history_reuse_seed_and_copied_code(playground, tmp_path, screenshot_dir):
    playground.open()
    page = playground.page
    # The defaults: the shapes model at 64×64, 20 steps, CFG 2, its kind of prompt; its name in full under the picker.
    expect(page.locator("#g-model")).to_have_value(SHAPES)
    expect(page.locator(f"#g-model option[value='{TINY}']")).to_have_count(1)
    assert [page.input_value(f"#gen-form [name={n}]") for n in ("width", "height", "steps", "CFGScale")] == ["64", "64", "20", "2"]
    assert page.input_value("#g-prompt") == "a red circle at the top left on a blue background"
    expect(page.locator("#g-model-info")).to_contain_text("shapes")
    expect(page.locator("#g-size")).to_have_value("64x64")

    # What the page shows while the task runs, recorded as it changes (bar widths, previews, queue rows).
    page.evaluate("""() => {
      const seen = window.__seen = { widths: [], steps: [], previews: [], queue: 0 };
      new MutationObserver(() => {
        const card = document.querySelector('#results .run');
        const bar = card && card.querySelector('.progress:not([hidden]) .bar');
        if (bar && bar.style.width && seen.widths.at(-1) !== bar.style.width) seen.widths.push(bar.style.width);
        const step = card && card.querySelector('.run-step:not([hidden])');
        if (step && seen.steps.at(-1) !== step.textContent) seen.steps.push(step.textContent);
        for (const img of document.querySelectorAll('#results img.preview')) if (!seen.previews.includes(img.src)) seen.previews.push(img.src);
        seen.queue = Math.max(seen.queue, document.querySelectorAll('#queue .queue-item').length);
      }).observe(document.querySelector('#tab-generate'), { subtree: true, childList: true, attributes: true, characterData: true });
    }""")
    page.click(SUBMIT)
    wait_done(page, 1)
    seen = page.evaluate("window.__seen")
    widths = [float(w.rstrip("%")) for w in seen["widths"]]
    assert len(widths) >= 5 and widths == sorted(widths) and any(0 < w < 100 for w in widths), seen["widths"]
    assert re.fullmatch(r"step \d+/\d+", seen["steps"][-1]) and len(seen["steps"]) >= 5, seen["steps"]
    assert seen["previews"], "no preview image was shown"
    preview = Image.open(io.BytesIO(data_uri_bytes(seen["previews"][-1])))
    assert preview.format == "PNG" and min(preview.size) >= 64, (preview.format, preview.size)
    assert seen["queue"] == 1  # it was in the queue view while it ran …
    expect(page.locator("#queue .queue-item")).to_have_count(0)  # … and left it when done
    first = page.locator("#results .run").first
    expect(first.locator(".progress")).to_be_hidden()
    url1, seed1 = card_image(first)
    image1 = fetch(url1)

    # Reuse seed: the same request with that seed makes the same bytes.
    first.locator(".reuse-seed").click()
    expect(page.locator("#g-seed")).to_have_value(seed1)
    page.click(SUBMIT)
    wait_done(page, 2)
    url2, seed2 = card_image(page.locator("#results .run").first)
    assert seed2 == seed1 and url2 != url1
    assert fetch(url2) == image1

    # Copy request: the first card (its seed was random: the copy pins the one the server chose).
    older = page.locator("#results .run").nth(1)
    tasks = json.loads(copied(page, older, "json"))
    assert len(tasks) == 1 and tasks[0]["taskType"] == "imageInference" and tasks[0]["seed"] == int(seed1), tasks
    assert "includeProgress" not in tasks[0] and re.fullmatch(r"[0-9a-f-]{36}", tasks[0]["taskUUID"])
    # Python (the runware SDK), with the key filled in: runs as pasted and makes the same image.
    code = copied(page, older, "python", fill_key=True)
    assert playground.server.key in code and playground.server.ws_url in code
    out = run_python(code, tmp_path)
    urls = IMAGE_URL.findall(out)
    assert len(urls) == 1 and f" {seed1}" in out, out
    assert fetch(urls[0]) == image1
    # Without the box ticked the key comes from WISP_API_KEY, never from the page.
    code = copied(page, older, "python")
    assert playground.server.key not in code and 'os.environ["WISP_API_KEY"]' in code
    assert IMAGE_URL.findall(run_python(code, tmp_path, key=playground.server.key))
    js = copied(page, older, "js")
    assert "RunwareServer" in js and "process.env.WISP_API_KEY" in js and f'"seed": {seed1}' in js
    curl = copied(page, older, "curl")
    assert f"{playground.server.http_url}/v1" in curl and "$WISP_API_KEY" in curl
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "WISP_API_KEY": playground.server.key})
        assert done.returncode == 0, done.stderr
        assert fetch(json.loads(done.stdout)["data"][0]["imageURL"]) == image1

    # Full-size view and download.
    page.locator("#results img.result").first.click()
    expect(page.locator("#viewer")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#viewer-image').naturalWidth === 64")
    assert page.locator("#viewer-download").get_attribute("href") == url2
    assert page.locator("#viewer-download").get_attribute("download")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    link = page.locator("#results .run").first.locator("a.download")
    assert link.get_attribute("href") == url2 and link.get_attribute("download") == f"wisp-{seed1}.png"
    screenshot(page, screenshot_dir, "playground-history.png")

    # History survives a reload: both cards, their images, seeds and requests.
    page.reload()
    playground.expect_state("connected")
    wait_done(page, 2)
    assert page.locator("#results .run").count() == 2
    assert page.locator("#results .seed").all_inner_texts() == [seed1, seed1]
    assert [card_image(page.locator("#results .run").nth(i))[0] for i in (0, 1)] == [url2, url1]
    # Send to form: the newer request's parameters come back (its seed included).
    playground.fill_generate(positivePrompt="something else", steps=3, seed="")
    page.locator("#results .run").first.locator(".use-params").click()
    assert page.input_value("#g-prompt") == "a red circle at the top left on a blue background"
    assert page.input_value("#g-seed") == seed1 and page.input_value("#g-steps") == "20"
    expect(page.locator("#g-model")).to_have_value(SHAPES)
    # A result as the seed image of the next request (img2img by its imageUUID).
    slot = page.locator("#results .run").first.locator(".slot").first
    slot.locator(".use-as-seed").click()
    expect(page.locator("#g-seed-status")).to_contain_text(f"imageUUID {slot.get_attribute('data-image-uuid')}")
    expect(page.locator("#g-mask-field")).to_be_visible()


# ---- the queue: cancel a waiting and a running task, retry ---------------------------------


def test_queue_cancels_waiting_and_running_tasks_and_retry_resends(playground):
    playground.open()
    page = playground.page
    # A slow task (two 512×512 images, 60 steps: tens of seconds on a CPU, cancelled long before) …
    playground.fill_generate(width=512, height=512, steps=60, numberResults=2, seed=1)
    page.click(SUBMIT)
    slow_id = page.locator("#results .run").first.get_attribute("data-task")
    slow = page.locator(f"#results .run[data-task='{slow_id}']")
    expect(slow.locator(".run-status")).to_have_text("running", timeout=60_000)
    # … and a quick one behind it (another size: it cannot share the slow one's batch).
    playground.fill_generate(width=64, height=64, steps=4, numberResults=1, seed=2)
    page.click(SUBMIT)
    expect(page.locator("#results .run")).to_have_count(2)
    quick_id = page.locator("#results .run").first.get_attribute("data-task")
    quick = page.locator(f"#results .run[data-task='{quick_id}']")
    assert quick_id != slow_id
    expect(page.locator("#queue .queue-item")).to_have_count(2)
    expect(page.locator(f"#queue .queue-item[data-task='{quick_id}']")).to_have_attribute("data-state", "waiting")
    expect(page.locator(f"#queue .queue-item[data-task='{slow_id}']")).to_have_attribute("data-state", "running")

    # Cancel the waiting one from the queue view: withdrawn, the card says so, with a retry button.
    page.locator(f"#queue .queue-item[data-task='{quick_id}'] .cancel").click()
    expect(quick.locator(".run-status")).to_have_text("cancelled")
    expect(quick.locator(".run-error")).to_contain_text("taskCancelled")
    expect(quick.locator(".retry")).to_be_visible()
    assert quick.locator("img.result").count() == 0
    expect(slow.locator(".run-status")).to_have_text("running")  # the other one goes on

    # A reload while it runs: the history brings both cards back, and the running one is found again
    # on the server (getResponse), back in the queue, still cancellable from this new session.
    page.reload()
    playground.expect_state("connected")
    expect(quick.locator(".run-status")).to_have_text("cancelled")
    expect(slow.locator(".run-status")).to_have_text("running")
    expect(page.locator(f"#queue .queue-item[data-task='{slow_id}']")).to_have_count(1)

    # Cancel the running one from its card: it stops between two steps.
    slow.locator(".cancel").click()
    expect(slow.locator(".run-status")).to_have_text("cancelled", timeout=60_000)
    expect(slow.locator(".run-error")).to_contain_text("taskCancelled")
    assert slow.locator("img.result").count() == 0
    expect(page.locator("#queue .queue-item")).to_have_count(0)
    expect(page.locator("#queue-count")).to_have_text("0")
    # A cancel is the user's own doing: no error in the form for it.
    assert page.locator("#gen-form .form-message").is_hidden()
    assert page.locator("#gen-form .field-error").count() == 0

    # Retry: the same request again, as a new task, which finishes.
    quick.locator(".retry").click()
    retried = page.locator("#results .run").first
    expect(retried).not_to_have_attribute("data-task", quick_id)
    expect(retried.locator(".run-status")).to_have_text("done", timeout=60_000)
    assert retried.locator(".seed").all_inner_texts() == ["2"]
    assert retried.locator(".run-meta").inner_text().startswith("64×64")


# ---- img2img, inpainting, ControlNet -----------------------------------------------------------


def test_controlnet_guide_with_preprocessor_and_prompt_weighting_runs_through_the_sdk(playground, tmp_path):
    guide_file = tmp_path / "guide.png"
    guide_file.write_bytes(png(6, (64, 64)))
    playground.open()
    page = playground.page
    # On the tiny model (the tiny ControlNet is made from its U-Net): a guide image with a preprocessor,
    # a weight, prompt weighting.
    page.select_option("#g-model", TINY)
    page.click("#g-controlnet summary")
    page.select_option("#g-cn-model", TINY_CONTROLNET)
    page.set_input_files("#g-cn-file", str(guide_file))
    expect(page.locator("#g-cn-preview")).to_be_visible()
    page.select_option("#g-cn-pre", "canny")
    page.fill("#g-cn-weight", "0.8")
    page.select_option("#g-weighting", "compel")
    playground.fill_generate(positivePrompt="a (red)1.2 circle", steps=4, seed=12)
    page.click(SUBMIT)
    wait_done(page, 1)
    card = page.locator("#results .run").first
    expect(card.locator(".run-meta")).to_contain_text("ControlNet")
    request = json.loads(copied(page, card, "json"))[0]
    assert "seedImage" not in request and request["promptWeighting"] == "compel"
    [item] = request["controlNet"]
    assert item["model"] == TINY_CONTROLNET and item["preprocessor"] == "canny" and item["weight"] == 0.8
    assert re.fullmatch(r"[0-9a-f-]{36}", item["guideImage"])
    # The same through the Python SDK (IControlNetCanny, EPromptWeighting): the same picture.
    code = copied(page, card, "python", fill_key=True)
    assert "IControlNetCanny(" in code and "EPreProcessor.canny" in code and "EPromptWeighting.COMPEL" in code
    [url] = IMAGE_URL.findall(run_python(code, tmp_path))
    assert fetch(url) == fetch(card_image(card)[0])


def test_inpainting_with_a_painted_mask_changes_only_the_masked_area(playground, tmp_path, screenshot_dir):
    seed_file = tmp_path / "seed.png"
    seed_file.write_bytes(png(5, (64, 64)))
    seed_pixels = pixels(seed_file.read_bytes())
    playground.open()
    page = playground.page
    page.click("#g-img2img summary")
    page.set_input_files("#g-seed-file", str(seed_file))
    expect(page.locator("#g-seed-status")).to_contain_text("seed image 64×64 (imageUUID")
    expect(page.locator("#g-mask-field")).to_be_visible()
    expect(page.locator("#g-mask-status")).to_contain_text("No mask")
    # Paint a thick vertical stroke over the right part of the image.
    page.evaluate("() => { document.querySelector('#g-brush').value = '20'; }")
    page.locator("#g-mask").scroll_into_view_if_needed()
    box = page.locator("#g-mask").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()
    expect(page.locator("#g-mask-status")).to_contain_text("Inpainting")
    playground.fill_generate(steps=10, seed=11, strength=1)
    page.click(SUBMIT)
    wait_done(page, 1)
    card = page.locator("#results .run").first
    expect(card.locator(".run-meta")).to_contain_text("inpaint")
    result = pixels(fetch(card_image(card)[0]))

    # The mask as it was sent (white: repaint), from the card's request.
    request = json.loads(copied(page, card, "json"))[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", request["seedImage"]) and request["strength"] == 1
    raw_mask = np.asarray(Image.open(io.BytesIO(data_uri_bytes(request["maskImage"]))).convert("L"))
    mask = raw_mask > 127
    assert mask.shape == (64, 64) and 0.1 < mask.mean() < 0.4, mask.mean()
    assert not mask[:, :32].any()  # only the right part was painted
    diff = np.abs(result - seed_pixels).max(axis=2)
    # Inside the mask the picture was repainted.
    assert diff[mask].mean() > 20, diff[mask].mean()
    # Outside the mask (where it is black, not even a grey edge): the seed image's own pixels, exactly.
    untouched = raw_mask == 0
    assert untouched.sum() >= 64 * 32, untouched.sum()
    assert diff[untouched].max() == 0, f"outside the mask: max {diff[untouched].max()} per channel off"
    screenshot(page, screenshot_dir, "playground-inpaint.png")
    # Send to form brings the seed image and the painted mask back.
    page.click("#g-seed-clear")
    expect(page.locator("#g-mask-field")).to_be_hidden()
    card.locator(".use-params").click()
    expect(page.locator("#g-seed-status")).to_contain_text(f"imageUUID {request['seedImage']}")
    expect(page.locator("#g-mask-status")).to_contain_text("Inpainting")
    painted = np.array(page.evaluate("""() => {
      const c = document.querySelector('#g-mask');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return Array.from({ length: c.width * c.height }, (_, i) => d[i * 4 + 3] > 127);
    }""")).reshape(64, 64)
    assert (painted == mask).all()


# ---- models: a refused upload, thumbnails, use, delete; and the layout on a phone ---------------


def test_refused_upload_thumbnails_use_delete_and_phone_layout(
    playground, file_server: FileServer, lora_file, tmp_path, screenshot_dir
):
    page = playground.page
    page.set_viewport_size({"width": 375, "height": 800})
    playground.open()
    playground.tab("models")

    # A pickle renamed .safetensors, from a local file: refused, and said at the (visible) file field
    # and at the phase it stopped in, never under the hidden URL field.
    pickled = tmp_path / "x.safetensors"
    pickled.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    page.check("#upload-form input[name=source][value=file]")
    page.set_input_files("#u-file", str(pickled))
    page.click("#upload-form button[type=submit]")
    error = page.locator("#upload-form [data-param='file'] > .field-error")
    expect(error).to_be_visible(timeout=60_000)
    expect(error).to_contain_text("pickle")
    failed = page.locator("#upload-phases li[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed.locator(".phase-message")).to_contain_text("pickle")
    assert page.locator("#upload-form [data-param='downloadURL'] .field-error").count() == 0

    # A LoRA by URL with a hero image served from loopback: a thumbnail in the library.
    name = "pg" + uuid.uuid4().hex[:10]
    air = f"default:{name}@1"
    served = file_server.root / f"{uuid.uuid4().hex}.safetensors"
    shutil.copy(lora_file, served)
    hero = file_server.root / f"{name}.png"
    hero.write_bytes(png(3, (96, 96)))
    page.check("#upload-form input[name=source][value=url]")
    page.fill("#u-url", file_server.url(served))
    page.fill("#u-air", air)
    page.select_option("#u-category", "lora")
    page.select_option("#u-arch", "sd1x")
    page.fill("#u-name", f"Playground {name}")
    page.fill("#u-hero", file_server.url(hero))
    page.fill("#u-tags", "pgtest")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form .form-message")).to_have_text(f"{air} is ready", timeout=60_000)
    assert page.locator("#upload-form .field-error").count() == 0
    page.fill("#models-search", name)  # the search box narrows the list as one types
    entry = page.locator(f"#model-list li[data-air='{air}']")
    expect(page.locator("#model-list li.model")).to_have_count(1)
    thumb = entry.locator("img.thumb")
    expect(thumb).to_have_attribute("src", file_server.url(hero))
    thumb.evaluate("img => img.decode()")
    assert thumb.evaluate("img => img.naturalWidth") == 96
    # Phases and badges on a phone: no word broken in two.
    broken = page.evaluate(BROKEN_WORDS_JS, page.locator("#tab-models").element_handle())
    assert not broken, broken
    screenshot(page, screenshot_dir, "playground-models-phone.png")
    # Built-ins have no hero image: a placeholder (no broken <img>), and no delete button.
    page.fill("#models-search", "tiny-sd15")
    builtin = page.locator(f"#model-list li[data-air='{TINY}']")
    expect(builtin.locator(".thumb.placeholder")).to_have_count(1)
    assert builtin.locator("img").count() == 0 and builtin.locator(".delete-model").count() == 0
    # Click to use: a checkpoint goes into the model picker …
    builtin.locator(".thumb-button").click()
    expect(page.locator("#tab-generate")).to_be_visible()
    expect(page.locator("#g-model")).to_have_value(TINY)
    # … a LoRA into the LoRA list.
    playground.tab("models")
    page.fill("#models-search", name)
    expect(page.locator("#model-list li.model")).to_have_count(1)
    entry.locator(".use-model").click()
    expect(page.locator("#g-loras .lora-air")).to_have_text([air])

    # Delete (two clicks): gone from the library and from the pickers.
    playground.tab("models")
    entry.locator(".delete-model").click()
    expect(entry.locator(".delete-model")).to_have_text("Delete for good?")
    entry.locator(".delete-model").click()
    expect(entry).to_have_count(0)
    expect(page.locator(f"#g-lora-pick option[value='{air}']")).to_have_count(0)
    expect(page.locator("#g-loras .lora-row")).to_have_count(0)

    # Generate tab on a phone: a field error far up the long form leaves the Generate button in reach,
    # the model picker's text fits, and nothing wraps mid-word.
    playground.tab("generate")
    page.click("#g-img2img summary")
    page.click("#g-controlnet summary")
    playground.fill_generate(positivePrompt="", steps=2)
    page.click(SUBMIT)
    field = page.locator("#gen-form [data-param='positivePrompt'] > .field-error")
    expect(field).to_be_visible()
    expect(field).to_be_in_viewport()
    button = page.locator(SUBMIT)
    expect(button).to_be_in_viewport()
    # Scrolled to the middle of the form, the button is still there.
    page.locator("#g-cn-weight").scroll_into_view_if_needed()
    expect(button).to_be_in_viewport()
    fits = page.evaluate("""() => {
      const select = document.querySelector('#g-model');
      const style = getComputedStyle(select);
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
      return { text: ctx.measureText(select.selectedOptions[0].textContent).width,
               room: select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 20 };
    }""")
    assert fits["text"] <= fits["room"], fits
    broken = page.evaluate(BROKEN_WORDS_JS, page.locator("#tab-generate").element_handle())
    assert not broken, broken
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    screenshot(page, screenshot_dir, "playground-generate-phone.png")
