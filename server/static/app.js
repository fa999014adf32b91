// The playground page: forms in, tasks out, results and errors back onto the page.
// Everything that talks to the socket lives in client.js.

import { WispClient, newUUID, socketURL } from "/static/client.js";

// The server's scheduler names (engine/schedulers.py; matched case-insensitively there).
const SCHEDULERS = [
  "Default", "Euler", "Euler Karras", "Euler a", "Euler trailing", "Euler a trailing", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE",
  "DPM++ 2M SDE Karras", "DPM++ 1S", "DPM++ 1S Karras", "DPM2", "DPM2 a", "DDIM", "DDPM", "PNDM", "DEIS", "UniPC", "LCM", "TCD",
];
// Architectures modelUpload accepts (protocol/models.py).
const ARCHITECTURES = [
  "sd1x", "sdhyper", "sd1xlcm", "sdxl", "sdxllcm", "sdxldistilled", "sdxlhyper", "sdxllightning", "sdxlturbo",
  "sd3", "pony", "illustrious", "flux1s", "flux1d", "fluxkontextdev", "hidreamdev", "hidreamfull", "qwen_image",
];
const PHASES = ["validated", "downloaded", "optimized", "stored", "ready"];
// Training recipe → the family it trains (protocol/training.py RECIPES) and that family's
// built-in base model (engine/training/runner.py RECIPE_BASES).
const TRAINING_RECIPES = {"wisp:sd1x@lora-training": "sd1x", "wisp:sdxl@lora-training": "sdxl"};
const RECIPE_BASES = {"sd1x": "wisp:tiny-sd15@1", "sdxl": "wisp:tiny-sdxl@1"};
// Declared architecture → the family whose weights it shares (engine/upload/sniff.py); others are their own family.
const ARCHITECTURE_FAMILIES = {
  "sd1x": "sd1x", "sdhyper": "sd1x", "sd1xlcm": "sd1x", "sd2x": "sd2x", "sdxl": "sdxl", "sdxllcm": "sdxl", "sdxldistilled": "sdxl",
  "sdxlhyper": "sdxl", "sdxllightning": "sdxl", "sdxlturbo": "sdxl", "pony": "sdxl", "illustrious": "sdxl",
};
// A training's statuses in order (protocol/training.py TRAINING_STATUSES); "queued" only while waiting for a slot.
const TRAINING_STATUSES = [
  "queued", "deploying_gpu", "training_started", "training_success", "trained_model_compressing",
  "trained_model_uploading", "trained_model_uploaded", "deploying_model", "model_ready",
];
// What each training status means, in plain words (the wire name stays in data-status and the title).
const TRAINING_STATUS_WORDS = {
  "queued": "Waiting for a training slot", "deploying_gpu": "Preparing", "training_started": "Training",
  "training_success": "Trained", "trained_model_compressing": "Packing the LoRA", "trained_model_uploading": "Saving the LoRA",
  "trained_model_uploaded": "Saved", "deploying_model": "Adding it to the library", "model_ready": "Ready to use",
};
// Size presets: [group, [[width, height, name?], …]]; 64 is the built-in models' own size.
const SIZE_PRESETS = [
  ["square", [[64, 64], [128, 128], [256, 256], [512, 512], [768, 768], [1024, 1024]]],
  ["landscape", [[128, 64, "2:1"], [768, 512, "3:2"], [512, 384, "4:3"], [912, 512, "16:9"]]],
  ["portrait", [[64, 128, "1:2"], [512, 768, "2:3"], [384, 512, "3:4"], [512, 912, "9:16"]]],
];
const HISTORY_STORAGE = "wisp.history";  // the Generate tab's requests and results, newest first
const HISTORY_LIMIT = 60;
const MAX_FRAME_BYTES = 16 * 1024 * 1024;  // the server's default WISP_MAX_FRAME_BYTES
const POLL_SILENCE_MS = 5000;  // a running training this quiet is asked for its state (getResponse)
const KEY_STORAGE = "wisp.apiKey";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Build an element: el("p", {class: "x"}, "text", child). Text is never parsed as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---- connection ---------------------------------------------------------------

const testLog = { states: [] };  // read by the browser tests (window.__wispTest)

const client = new WispClient(socketURL(), {
  onState: renderConnection,
  onStray: (error) => showGeneral(describe(error)),
});

function renderConnection(state, detail) {
  testLog.states.push(state);
  const pill = $("#conn-state");
  pill.textContent = state;
  pill.dataset.state = state;
  $("#conn-detail").textContent = detail;
  $("#session-uuid").textContent = client.sessionUUID || "—";
  if (state !== "connected") return;
  // Keep the key only once the server has accepted it: a typo must not be retried on every visit.
  localStorage.setItem(KEY_STORAGE, client.apiKey);
  // Fill the pickers on every (re)connect: another client may have uploaded meanwhile.
  refreshModels();
  loadAccount();
  // Requests that were running when the page was last closed: ask what became of them.
  resumeHistory();
}

// ---- the key's account: its team's default source pre-fills the upload AIR ------------

let account = null;  // GET /v1/account: {team, defaultSource, sources, maxModelBytes, …}

async function loadAccount() {
  try {
    const response = await fetch("/v1/account", { headers: { Authorization: `Bearer ${client.apiKey}` } });
    if (!response.ok) return;
    account = await response.json();
  } catch {
    return;  // the socket still works; the AIR field just stays empty
  }
  $("#u-air").placeholder = `${account.defaultSource}:my-model@1`;
  $("#u-air-hint").textContent = `source:id@version under one of team ${account.team}'s sources (${account.sources.join(", ")}).`;
  suggestAir();
}

/** A file name as the id of an AIR (letters, digits, "-", "_"). */
const modelId = (name) => name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^[-_]+|[-_]+$/g, "").slice(0, 64) || "my-model";

/** Fill the AIR under the team's default source, unless the user typed their own. */
function suggestAir() {
  const air = $("#u-air");
  if (!account || (air.value && air.dataset.auto !== "1")) return;
  const form = $("#upload-form");
  const file = form.elements.file.files[0];
  const url = form.elements.downloadURL.value.trim();
  const name = file ? file.name : (url ? decodeURIComponent(url.split(/[?#]/)[0].split("/").pop() || "") : "");
  air.value = `${account.defaultSource}:${modelId(name)}@${form.elements.version.value.trim() || "1"}`;
  air.dataset.auto = "1";
}

function setupKeyForm() {
  const input = $("#api-key");
  input.value = localStorage.getItem(KEY_STORAGE) || "";
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return showGeneral("enter an API key (wisp keys create prints one)");
    hideGeneral();
    client.connect(key);
  });
  $("#forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    input.value = "";
    client.disconnect();
  });
  if (input.value) client.connect(input.value);
}

// ---- messages and field errors ------------------------------------------------

function describe(error) {
  const where = error.parameter ? ` (${error.parameter})` : "";
  return `${error.code || "error"}${where}: ${error.message || "no message"}`;
}

function showGeneral(text) {
  const box = $("#general-message");
  $(".message-text", box).textContent = text;
  box.hidden = false;
}

function hideGeneral() {
  $("#general-message").hidden = true;
}

/** Whether a field of `form` can be seen: no hidden element between it and the form (a collapsed
 *  <details> is opened by showError, so it counts as shown; so does a form on a tab not in front). */
function shown(node, form) {
  for (let n = node; n && n !== form; n = n.parentElement) if (n.hidden) return false;
  return true;
}

/** The element of `form` that stands for a wire `parameter`, trying shorter paths:
 *  "lora[0].weight" → "lora[0].weight", "lora[0]", "lora". Hidden fields are passed over (a local-file
 *  upload's `downloadURL` error belongs at the file field, not under the hidden URL field). */
function fieldFor(form, parameter) {
  let path = parameter || "";
  while (path) {
    const name = CSS.escape(path);
    // data-also: other names the server uses for the same field (training's `images` is `inputs.dataset`).
    const found = $$(`[data-param="${name}"], [data-also~="${name}"]`, form).find((node) => shown(node, form));
    if (found) return found;
    const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
    path = cut > 0 ? path.slice(0, cut) : "";
  }
  return null;
}

/** Show an error next to the field its `parameter` names, or in the form's message area: always somewhere visible. */
function showError(form, error) {
  const field = fieldFor(form, error.parameter);
  const text = error.message || error.code;
  if (!field) return showFormMessage(form, describe(error));
  for (let box = field.closest("details"); box; box = box.parentElement?.closest("details")) box.open = true;
  field.classList.add("has-error");
  let slot = $(":scope > .field-error", field);
  if (!slot) {
    slot = el("p", { class: "field-error", role: "alert" });
    field.append(slot);
  }
  slot.textContent = text;
  slot.dataset.code = error.code || "";
  field.scrollIntoView({ block: "center", behavior: "smooth" });
}

/** A form's message area: a direct child, or inside its (sticky) actions bar. */
const messageBox = (form) => $(":scope > .form-message, :scope > .form-actions > .form-message", form);

function showFormMessage(form, text, kind = "error") {
  const box = messageBox(form);
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
}

function clearErrors(form) {
  for (const field of $$(".has-error", form)) field.classList.remove("has-error");
  for (const slot of $$(".field-error", form)) slot.remove();
  messageBox(form).hidden = true;
}

// ---- tabs -----------------------------------------------------------------------

function setupTabs() {
  for (const button of $$(".tabs [data-tab]")) {
    button.addEventListener("click", () => {
      for (const other of $$(".tabs [data-tab]")) other.setAttribute("aria-selected", String(other === button));
      for (const tab of $$(".tab")) tab.hidden = tab.id !== `tab-${button.dataset.tab}`;
    });
  }
}

// ---- models: pickers and library ------------------------------------------------

let knownLoras = new Map();       // air -> model info (for default weights)
let knownEmbeddings = new Map();  // air -> model info
let knownCheckpoints = [];        // model infos, for the training form's base-model picker
const knownModels = new Map();    // air -> model info, every category seen (names and defaults in hints)

async function search(fields) {
  let answer = null;
  // A catch-up getResponse may answer status "processing" first; wait for the results.
  const hasResults = (item) => Array.isArray(item.results);
  await client.run({ taskType: "modelSearch", limit: 100, ...fields }, {
    onItem: (item) => { if (hasResults(item)) answer = item; },
    isDone: hasResults,
  });
  for (const m of answer.results) knownModels.set(m.air, m);
  return answer;
}

/** Replace a select's options, keeping the current choice when it still exists.
 *  An option shows the AIR only (what requests carry and errors name, and short enough never to be
 *  cut off); the name is its title and, for the model picker, the hint under it. */
function fillSelect(select, models, emptyLabel, firstOption = null) {
  const previous = select.value;
  select.replaceChildren();
  if (firstOption) select.append(firstOption);
  else if (!models.length && emptyLabel) select.append(el("option", { value: "" }, emptyLabel));
  for (const m of models) select.append(el("option", { value: m.air, title: m.name || m.air }, m.air));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

/** Make sure a select offers `value` (a model the list doesn't have yet) and choose it. */
function chooseOption(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) select.append(el("option", { value }, value));
  select.value = value ?? "";
}

function showModelInfo() {
  const air = $("#g-model").value;
  const m = knownModels.get(air);
  const parts = [];
  if (m) {
    if (m.name && m.name !== air) parts.push(m.name);
    parts.push(m.architecture);
    const defaults = [m.defaultSteps && `${m.defaultSteps} steps`, m.defaultCFG !== undefined && m.defaultCFG !== null && `CFG ${m.defaultCFG}`,
      m.defaultScheduler].filter(Boolean);
    if (defaults.length) parts.push(`defaults: ${defaults.join(", ")}`);
  }
  $("#g-model-info").textContent = parts.join(" · ");
}

async function refreshModels() {
  try {
    const [checkpoints, loras, embeddings, vaes, controlnets] = await Promise.all([
      search({ category: "checkpoint" }), search({ category: "lora" }), search({ category: "embeddings" }),
      search({ category: "vae" }), search({ category: "controlnet" }),
    ]);
    fillSelect($("#g-model"), checkpoints.results, "— no checkpoints —");
    showModelInfo();
    knownCheckpoints = checkpoints.results;
    fillBaseModels();
    knownLoras = new Map(loras.results.map((m) => [m.air, m]));
    fillSelect($("#g-lora-pick"), loras.results, "— none uploaded —");
    knownEmbeddings = new Map(embeddings.results.map((m) => [m.air, m]));
    fillSelect($("#g-emb-pick"), embeddings.results, "— none uploaded —");
    fillSelect($("#g-vae"), vaes.results, null, el("option", { value: "" }, "the model's own"));
    fillSelect($("#g-cn-model"), controlnets.results, null, el("option", { value: "" }, "— none —"));
    await refreshLibrary();
  } catch (error) {
    if (error.code !== "notConnected" && error.code !== "disconnected") showGeneral(describe(error));
  }
}

async function refreshLibrary() {
  const form = $("#models-filter").closest(".panel");
  const fields = {};
  const text = $("#models-search").value.trim();
  const category = $("#models-category").value;
  if (text) fields.search = text;
  if (category) fields.category = category;
  try {
    const answer = await search(fields);
    $(":scope > .form-message", form).hidden = true;
    renderLibrary(answer);
  } catch (error) {
    showFormMessage(form, describe(error));
  }
}

const isBuiltin = (m) => m.air.startsWith("wisp:") || m.tags.includes("builtin");

/** The model's hero image, or a placeholder with its category's initial when it has none (or it fails to load). */
function thumbnail(m) {
  const placeholder = () => el("div", { class: "thumb placeholder", "aria-hidden": "true", dataset: { category: m.category } },
    (m.category || "?").slice(0, 1).toUpperCase());
  if (!m.heroImage) return placeholder();
  const img = el("img", { class: "thumb", src: m.heroImage, alt: `${m.name || m.air} preview`, decoding: "async", referrerpolicy: "no-referrer" });
  img.addEventListener("error", () => img.replaceWith(placeholder()), { once: true });
  return img;
}

function renderLibrary(answer) {
  const list = $("#model-list");
  list.replaceChildren();
  if (!answer.results.length) list.append(el("li", { class: "empty muted" }, "No models match."));
  for (const m of answer.results) {
    const badges = el("div", { class: "badges" },
      el("span", { class: "badge", dataset: { kind: "category" } }, m.category),
      el("span", { class: "badge", dataset: { kind: "architecture" } }, m.architecture),
      el("span", { class: "badge", dataset: { kind: m.private ? "private" : "public" } }, m.private ? "private" : "public"),
      m.type ? el("span", { class: "badge" }, m.type) : null);
    const tags = m.tags.length ? el("div", { class: "tags" }, ...m.tags.map((t) => el("span", { class: "tag" }, t))) : null;
    const use = el("button", { type: "button", class: "secondary use-model", title: "use it in the Generate tab" }, "Use");
    use.addEventListener("click", () => useModel(m));
    const remove = isBuiltin(m) ? null : el("button", { type: "button", class: "ghost delete-model" }, "Delete");
    const item = el("li", { class: "model", dataset: { air: m.air, category: m.category } },
      el("button", { type: "button", class: "thumb-button", title: `use ${m.air}`, "aria-label": `use ${m.air}` }, thumbnail(m)),
      el("div", { class: "model-body" },
        el("div", { class: "model-name" }, m.name || m.air, el("span", { class: "muted" }, ` v${m.version}`)),
        el("code", { class: "air" }, m.air), badges, tags,
        el("div", { class: "model-actions" }, use, remove),
        el("p", { class: "model-error", role: "alert", hidden: true })));
    $(".thumb-button", item).addEventListener("click", () => useModel(m));
    if (remove) remove.addEventListener("click", () => deleteModel(m, item, remove));
    list.append(item);
  }
  if (answer.totalResults > answer.results.length) {
    list.append(el("li", { class: "muted" }, `… and ${answer.totalResults - answer.results.length} more; narrow the search.`));
  }
}

/** Put a model where the Generate form takes it, by category, and go there. */
function useModel(m) {
  const form = $("#gen-form");
  if (m.category === "checkpoint") {
    chooseOption($("#g-model"), m.air);
    showModelInfo();
  } else if (m.category === "lora" || m.category === "lycoris") {
    chooseOption($("#g-lora-pick"), m.air);
    if (!chosenLoras.some((l) => l.air === m.air)) chosenLoras.push({ air: m.air, weight: String(m.defaultWeight ?? 1) });
    renderLoras();
  } else if (m.category === "embeddings") {
    chooseOption($("#g-emb-pick"), m.air);
    if (!chosenEmbeddings.some((e) => e.air === m.air)) chosenEmbeddings.push({ air: m.air, weight: "1" });
    renderEmbeddings();
    $("#g-more").open = true;
  } else if (m.category === "vae") {
    chooseOption($("#g-vae"), m.air);
    $("#g-more").open = true;
  } else if (m.category === "controlnet") {
    chooseOption($("#g-cn-model"), m.air);
    $("#g-controlnet").open = true;
  }
  clearErrors(form);
  $(".tabs [data-tab=generate]").click();
}

/** Two clicks (no confirm(): it blocks the page): "Delete", then "Delete for good" within 5 s. */
async function deleteModel(m, item, button) {
  const error = $(".model-error", item);
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = "Delete for good?";
    button.classList.add("danger");
    setTimeout(() => {
      if (button.isConnected && button.dataset.armed === "1" && !button.disabled) {
        button.dataset.armed = "0";
        button.textContent = "Delete";
        button.classList.remove("danger");
      }
    }, 5000);
    return;
  }
  button.disabled = true;
  error.hidden = true;
  try {
    await client.run({ taskType: "modelDelete", air: m.air }, { isDone: (answer) => answer.status === "deleted" });
    item.remove();
    chosenLoras = chosenLoras.filter((l) => l.air !== m.air);
    chosenEmbeddings = chosenEmbeddings.filter((e) => e.air !== m.air);
    renderLoras();
    renderEmbeddings();
    knownModels.delete(m.air);
    await refreshModels();
  } catch (failure) {
    button.disabled = false;
    button.dataset.armed = "0";
    button.textContent = "Delete";
    button.classList.remove("danger");
    error.textContent = describe(failure);
    error.hidden = false;
  }
}

function setupLibrary() {
  $("#models-refresh").addEventListener("click", refreshModels);
  $("#models-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshLibrary();
  });
  let typing = null;
  $("#models-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(refreshLibrary, 250);
  });
  $("#models-category").addEventListener("change", refreshLibrary);
}

// ---- generate: the form ------------------------------------------------------------

let chosenLoras = [];       // [{air, weight}] in request order: lora[i] in errors is this index
let chosenEmbeddings = [];  // [{air, weight}]: embeddings[i]

/** Rows of {air, weight} with a weight box and a remove button; `param` is the wire list's name. */
function renderWeightedList(list, rows, param, rerender) {
  list.replaceChildren();
  rows.forEach((row, index) => {
    const weight = el("input", { type: "number", step: "0.05", min: "-4", max: "4", value: row.weight, inputmode: "decimal",
                                 "aria-label": `weight of ${row.air}` });
    weight.addEventListener("input", () => (row.weight = weight.value));
    const remove = el("button", { type: "button", class: "ghost", "aria-label": `remove ${row.air}` }, "×");
    remove.addEventListener("click", () => {
      rows.splice(index, 1);
      rerender();
    });
    list.append(el("li", { class: "lora-row", dataset: { param: `${param}[${index}]` } },
      el("code", { class: "lora-air", title: row.air, dataset: { param: `${param}[${index}].model` } }, row.air),
      el("span", { class: "lora-weight", dataset: { param: `${param}[${index}].weight` } }, weight), remove));
  });
}

function renderLoras() {
  renderWeightedList($("#g-loras"), chosenLoras, "lora", renderLoras);
}

function renderEmbeddings() {
  renderWeightedList($("#g-embeddings"), chosenEmbeddings, "embeddings", renderEmbeddings);
}

function setupLoraPicker() {
  $("#g-lora-add").addEventListener("click", () => {
    const air = $("#g-lora-pick").value;
    if (!air || chosenLoras.some((l) => l.air === air)) return;
    const info = knownLoras.get(air);
    chosenLoras.push({ air, weight: String(info?.defaultWeight ?? 1) });
    renderLoras();
  });
  $("#g-emb-add").addEventListener("click", () => {
    const air = $("#g-emb-pick").value;
    if (!air || chosenEmbeddings.some((e) => e.air === air)) return;
    chosenEmbeddings.push({ air, weight: "1" });
    renderEmbeddings();
  });
}

function setupSizes() {
  const select = $("#g-size");
  select.append(el("option", { value: "" }, "custom"));
  for (const [label, group] of SIZE_PRESETS) {
    const optgroup = el("optgroup", { label });
    for (const [w, h, name] of group) optgroup.append(el("option", { value: `${w}x${h}` }, name ? `${name} · ${w}×${h}` : `${w}×${h}`));
    select.append(optgroup);
  }
  const width = $("#g-width");
  const height = $("#g-height");
  const sync = () => {
    const value = `${width.value.trim()}x${height.value.trim()}`;
    select.value = [...select.options].some((o) => o.value === value) ? value : "";
  };
  select.addEventListener("change", () => {
    if (!select.value) return;
    const [w, h] = select.value.split("x");
    width.value = w;
    height.value = h;
  });
  width.addEventListener("input", sync);
  height.addEventListener("input", sync);
  sync();
  return sync;
}
let syncSize = () => {};

/** A number from an input, or undefined when blank (the server then applies its default).
 *  Values are sent as typed: range and multiple-of-8 checks are the server's, and its
 *  errors come back next to the field. */
function numberOf(form, name) {
  const raw = form.elements[name].value.trim();
  return raw === "" ? undefined : Number(raw);
}

const inputNumber = (input) => (input.value.trim() === "" ? undefined : Number(input.value.trim()));

/** Read an image file as a data URI and store it on the server (imageUpload): {imageUUID, imageURL}. */
async function uploadImage(file, parameter) {
  if (!file.type.startsWith("image/")) throw { code: "invalidImage", message: `${file.name} is not an image`, parameter };
  let image;
  try {
    image = await readAsDataURL(file);
  } catch {
    throw { code: "fileUnreadable", message: `${file.name} could not be read`, parameter };
  }
  let stored = null;
  try {
    await client.run({ taskType: "imageUpload", image }, {
      onItem: (item) => { if (item.imageUUID) stored = item; },
      isDone: (item) => Boolean(item.imageUUID),
    });
  } catch (error) {
    throw { ...error, parameter };  // the server names `image`; here it is this field
  }
  return { imageUUID: stored.imageUUID, imageURL: stored.imageURL };
}

// Seed image and mask: the mask is a canvas laid over the seed image, as large as the image itself;
// painted pixels are white (repaint), the rest transparent, sent as black.
const img2img = { seed: null, loading: null };

function maskCanvas() {
  return $("#g-mask");
}

function maskIsEmpty() {
  const canvas = maskCanvas();
  if (!canvas.width || !canvas.height) return true;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 127) return false;
  return true;
}

function maskDataURI() {
  const canvas = maskCanvas();
  const out = el("canvas", { width: canvas.width, height: canvas.height });
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(canvas, 0, 0);
  return out.toDataURL("image/png");
}

function updateMaskStatus() {
  $("#g-mask-status").textContent = maskIsEmpty()
    ? "No mask: the whole image is reworked (img2img)."
    : "Inpainting: only the painted area is repainted (sent as maskImage).";
}

function clearMask() {
  const canvas = maskCanvas();
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  updateMaskStatus();
}

/** Load a mask (data URI or URL) into the canvas: white pixels become painted ones. */
function loadMask(source) {
  const image = new Image();
  image.onload = () => {
    const canvas = maskCanvas();
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const scratch = el("canvas", { width: canvas.width, height: canvas.height });
    const sctx = scratch.getContext("2d");
    sctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    const pixels = sctx.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const v = pixels.data[i];
      pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 255;
      pixels.data[i + 3] = v;
    }
    ctx.putImageData(pixels, 0, 0);
    updateMaskStatus();
  };
  image.src = source;
}

/** Use an image (by imageUUID, shown from its URL) as the seed image; resolves once it is shown. */
function setSeedImage(ref, mask = null) {
  img2img.seed = ref;
  const preview = $("#g-seed-preview");
  const status = $("#g-seed-status");
  $("#g-seed-clear").hidden = false;
  $("#g-img2img").open = true;
  status.textContent = "loading the seed image…";
  img2img.loading = new Promise((resolve) => {
    preview.onload = () => {
      const canvas = maskCanvas();
      canvas.width = preview.naturalWidth;
      canvas.height = preview.naturalHeight;
      $("#g-mask-field").hidden = false;
      status.textContent = `seed image ${preview.naturalWidth}×${preview.naturalHeight} (imageUUID ${ref.imageUUID})`;
      // Generate at the image's size (the server resizes a seed image to width × height).
      const fit = (n) => Math.min(2048, Math.max(64, Math.round(n / 8) * 8));
      $("#g-width").value = fit(preview.naturalWidth);
      $("#g-height").value = fit(preview.naturalHeight);
      syncSize();
      clearMask();
      if (mask) loadMask(mask);
      resolve();
    };
    preview.onerror = () => {
      status.textContent = "the seed image could not be shown (expired?); it is still sent by its imageUUID";
      resolve();
    };
  });
  preview.src = ref.imageURL;
  return img2img.loading;
}

function clearSeedImage() {
  img2img.seed = null;
  $("#g-seed-file").value = "";
  $("#g-seed-clear").hidden = true;
  $("#g-mask-field").hidden = true;
  $("#g-seed-preview").removeAttribute("src");
  $("#g-seed-status").textContent = "A local image (uploaded with imageUpload), or “Use as seed image” on a result.";
}

function setupMaskEditor() {
  const canvas = maskCanvas();
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  };
  const stroke = (from, to) => {
    const ctx = canvas.getContext("2d");
    ctx.globalCompositeOperation = $("#g-erase").checked ? "destination-out" : "source-over";
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    // The brush is a share of the image's width (1–64 %), so it feels the same at 64 px and at 1024.
    ctx.lineWidth = Math.max(1, (Number($("#g-brush").value) / 100) * canvas.width);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
    ctx.globalCompositeOperation = "source-over";
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  const end = () => {
    if (!last) return;
    last = null;
    updateMaskStatus();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("#g-mask-clear").addEventListener("click", clearMask);

  const form = $("#gen-form");
  $("#g-seed-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    clearErrors(form);
    $("#g-seed-status").textContent = `uploading ${file.name}…`;
    try {
      await setSeedImage(await uploadImage(file, "seedImage"));
    } catch (error) {
      clearSeedImage();
      showError(form, error);
    }
  });
  $("#g-seed-clear").addEventListener("click", clearSeedImage);
}

// ControlNet: one item (the form's); its guide image is stored with imageUpload like the seed image.
const control = { guide: null };

function setGuideImage(ref) {
  control.guide = ref;
  const preview = $("#g-cn-preview");
  if (ref) preview.src = ref.imageURL;
  else preview.removeAttribute("src");
  preview.hidden = !ref;
  $("#g-cn-clear").hidden = !ref;
  if (!ref) $("#g-cn-file").value = "";
}

function setupControlNet() {
  const form = $("#gen-form");
  $("#g-cn-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    clearErrors(form);
    try {
      setGuideImage(await uploadImage(file, "controlNet[0].guideImage"));
    } catch (error) {
      setGuideImage(null);
      showError(form, error);
    }
  });
  $("#g-cn-clear").addEventListener("click", () => setGuideImage(null));
}

/** The request the form describes (no taskUUID, no progress flags: those belong to one sending),
 *  and what the page needs to show it again (`meta`: the seed and guide images' URLs). */
function inferenceRequest(form) {
  const request = {
    taskType: "imageInference",
    model: form.elements.model.value,
    positivePrompt: form.elements.positivePrompt.value,
    width: numberOf(form, "width"),
    height: numberOf(form, "height"),
    steps: numberOf(form, "steps"),
    CFGScale: numberOf(form, "CFGScale"),
    seed: numberOf(form, "seed"),
    numberResults: numberOf(form, "numberResults") ?? 1,
    scheduler: form.elements.scheduler.value || undefined,
    outputType: "URL",
    outputFormat: "PNG",
    deliveryMethod: "sync",
    includeCost: true,
  };
  const meta = {};
  const negative = form.elements.negativePrompt.value.trim();
  if (negative) request.negativePrompt = negative;
  if (chosenLoras.length) request.lora = chosenLoras.map((l) => ({ model: l.air, weight: l.weight === "" ? undefined : Number(l.weight) }));
  if (chosenEmbeddings.length) {
    request.embeddings = chosenEmbeddings.map((e) => ({ model: e.air, weight: e.weight === "" ? undefined : Number(e.weight) }));
  }
  if (form.elements.vae.value) request.vae = form.elements.vae.value;
  if (form.elements.promptWeighting.value) request.promptWeighting = form.elements.promptWeighting.value;
  if (img2img.seed) {
    request.seedImage = img2img.seed.imageUUID;
    meta.seedImageURL = img2img.seed.imageURL;
    request.strength = numberOf(form, "strength");
    if (!$("#g-mask-field").hidden && !maskIsEmpty()) request.maskImage = maskDataURI();
  }
  const cnModel = $("#g-cn-model").value;
  if (control.guide || cnModel) {
    if (!control.guide) throw { code: "missingParameter", message: "choose a guide image for the ControlNet", parameter: "controlNet[0].guideImage" };
    if (!cnModel) throw { code: "missingParameter", message: "choose a ControlNet model", parameter: "controlNet[0].model" };
    const item = { model: cnModel, guideImage: control.guide.imageUUID, weight: inputNumber($("#g-cn-weight")),
                   startStep: inputNumber($("#g-cn-start")), endStep: inputNumber($("#g-cn-end")) };
    if ($("#g-cn-pre").value) item.preprocessor = $("#g-cn-pre").value;
    request.controlNet = [dropUndefined(item)];
    meta.guideImageURL = control.guide.imageURL;
  }
  return { request: dropUndefined(request), meta };
}

function dropUndefined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

/** Put a request back into the form ("send parameters to the form"). */
async function applyRequest(request, meta = {}) {
  const form = $("#gen-form");
  clearErrors(form);
  const set = (name, value) => { form.elements[name].value = value === undefined || value === null ? "" : String(value); };
  set("positivePrompt", request.positivePrompt);
  set("negativePrompt", request.negativePrompt);
  chooseOption($("#g-model"), request.model);
  showModelInfo();
  set("width", request.width);
  set("height", request.height);
  set("steps", request.steps);
  set("CFGScale", request.CFGScale);
  chooseOption($("#g-scheduler"), request.scheduler || "");
  set("seed", request.seed);
  set("numberResults", request.numberResults ?? 1);
  chooseOption($("#g-weighting"), request.promptWeighting || "");
  chooseOption($("#g-vae"), request.vae || "");
  chosenLoras = (request.lora || []).map((l) => ({ air: l.model, weight: l.weight === undefined ? "" : String(l.weight) }));
  renderLoras();
  chosenEmbeddings = (request.embeddings || []).map((e) => ({ air: e.model, weight: e.weight === undefined ? "" : String(e.weight) }));
  renderEmbeddings();
  if (request.vae || chosenEmbeddings.length) $("#g-more").open = true;
  const cn = (request.controlNet || [])[0];
  if (cn) {
    chooseOption($("#g-cn-model"), cn.model);
    chooseOption($("#g-cn-pre"), cn.preprocessor || "");
    $("#g-cn-weight").value = cn.weight ?? "1";
    $("#g-cn-start").value = cn.startStep ?? "";
    $("#g-cn-end").value = cn.endStep ?? "";
    setGuideImage({ imageUUID: cn.guideImage, imageURL: meta.guideImageURL || `/images/${cn.guideImage}.png` });
    $("#g-controlnet").open = true;
  } else {
    $("#g-cn-model").value = "";
    setGuideImage(null);
  }
  set("strength", request.strength);
  if (request.seedImage) {
    await setSeedImage({ imageUUID: request.seedImage, imageURL: meta.seedImageURL || `/images/${request.seedImage}.png` }, request.maskImage || null);
  } else {
    clearSeedImage();
  }
  syncSize();  // after the seed image: it sets the size to its own, the request's wins
  set("width", request.width);
  set("height", request.height);
  syncSize();
}

// ---- generate: history, cards, queue ---------------------------------------------------

/** Every request of this browser, newest first, kept in localStorage (results by URL, not bytes). */
let runs = [];
const cards = new Map();   // taskUUID -> the card element
const active = new Map();  // taskUUID -> {entry, state: "waiting"|"running", step, steps}: the queue view

function loadHistory() {
  try {
    const stored = JSON.parse(localStorage.getItem(HISTORY_STORAGE) || "[]");
    runs = Array.isArray(stored) ? stored.filter((e) => e && e.id && e.request) : [];
  } catch {
    runs = [];
  }
  // A request still running when the page went away: its result may be on the server (getResponse on connect).
  for (const entry of runs) if (entry.status === "pending" || entry.status === "waiting" || entry.status === "running") {
    entry.status = "interrupted";
    entry.reattach = true;
  }
}

function saveHistory() {
  let kept = runs.slice(0, HISTORY_LIMIT);
  for (;;) {
    try {
      localStorage.setItem(HISTORY_STORAGE, JSON.stringify(kept.map(({ reattach, cancelling, ...entry }) => entry)));
      return;
    } catch {
      if (kept.length <= 1) return;  // storage full even for one entry: keep it in the page only
      kept = kept.slice(0, Math.ceil(kept.length / 2));
    }
  }
}

const STATUS_WORDS = { waiting: "waiting", running: "running", done: "done", failed: "failed", cancelled: "cancelled",
                       interrupted: "interrupted" };

function runCard(entry) {
  $("#results .empty")?.remove();
  const r = entry.request;
  const count = Math.max(1, Math.min(Number(r.numberResults) || 1, 20));
  const slots = Array.from({ length: count }, () =>
    el("figure", { class: "slot pending" }, el("div", { class: "placeholder" }, el("span", {}, "waiting…"))));
  const kind = r.maskImage ? "inpaint" : r.seedImage ? "img2img" : null;
  const when = new Date(entry.createdAt || Date.now());
  const button = (cls, text, title) => el("button", { type: "button", class: `secondary ${cls}`, title }, text);
  const card = el("article", { class: "run", dataset: { task: entry.id, status: entry.status } },
    el("header", {},
      el("span", { class: "run-status" }, STATUS_WORDS[entry.status] || entry.status),
      el("span", { class: "run-meta muted" },
        [`${r.width ?? 512}×${r.height ?? 512}`, r.steps ? `${r.steps} steps` : null, r.model, kind,
         r.controlNet ? "ControlNet" : null, when.toLocaleTimeString()].filter(Boolean).join(" · "))),
    el("p", { class: "run-prompt" }, r.positivePrompt),
    el("div", { class: "progress", hidden: true }, el("div", { class: "bar" })),
    el("p", { class: "run-step muted", hidden: true }),
    el("div", { class: "images" }, ...slots),
    el("p", { class: "run-error", role: "alert", hidden: true }),
    el("footer", { class: "run-actions" },
      button("cancel", "Cancel", "taskCancel: withdraw it from the queue, or stop it after the current step"),
      button("retry", "Retry", "send the same request again"),
      button("use-params", "Send to form", "put this request's parameters back into the form"),
      button("copy-request", "Copy request", "as JSON, curl, Python or JavaScript"),
      el("code", { class: "task-uuid muted", title: "taskUUID" }, entry.id)));
  $(".cancel", card).addEventListener("click", () => cancelTask(entry.id));
  $(".retry", card).addEventListener("click", () => submitRequest(structuredClone(entry.request), structuredClone(entry.meta || {})));
  $(".use-params", card).addEventListener("click", () => applyRequest(entry.request, entry.meta || {}));
  $(".copy-request", card).addEventListener("click", () => openCode(entry));
  cards.set(entry.id, card);
  return card;
}

function updateCard(entry) {
  const card = cards.get(entry.id);
  if (!card) return;
  card.dataset.status = entry.status;
  $(".run-status", card).textContent = STATUS_WORDS[entry.status] || entry.status;
  card.classList.toggle("done", entry.status === "done");
  card.classList.toggle("failed", ["failed", "cancelled", "interrupted"].includes(entry.status));
  const live = entry.status === "waiting" || entry.status === "running";
  $(".cancel", card).hidden = !live;
  $(".retry", card).hidden = !["failed", "cancelled", "interrupted"].includes(entry.status);
  if (!live) {
    $(".progress", card).hidden = true;
    $(".run-step", card).hidden = true;
  }
  const line = $(".run-error", card);
  if (entry.error) {
    line.textContent = entry.status === "interrupted" && entry.error.code === "pageReloaded"
      ? "interrupted: the page was reloaded while it ran, and the server no longer has it"
      : describe(entry.error);
    line.hidden = false;
  } else {
    line.hidden = true;
  }
  if (entry.status !== "waiting" && entry.status !== "running") {
    // Slots no image will fill (failed, cancelled): gone.
    for (const slot of $$(".slot.pending", card)) slot.remove();
  }
}

function showProgress(entry, item) {
  const card = cards.get(entry.id);
  const state = active.get(entry.id);
  if (state) {
    state.state = "running";
    if (typeof item.progress === "number") Object.assign(state, { progress: item.progress, step: item.step, steps: item.steps });
  }
  entry.status = "running";
  renderQueue();
  if (!card) return;
  updateCard(entry);
  if (typeof item.progress !== "number") return;
  const bar = $(".progress", card);
  bar.hidden = false;
  $(".bar", bar).style.width = `${Math.round(Math.max(0, Math.min(1, item.progress)) * 100)}%`;
  if (item.steps) {
    const line = $(".run-step", card);
    line.hidden = false;
    line.textContent = `step ${item.step ?? 0}/${item.steps}`;
  }
  // The latest preview of each image, in its slot until the image itself arrives.
  const pending = $$(".slot.pending", card);
  (item.previewImages || []).forEach((uri, index) => {
    const slot = pending[index];
    if (!slot) return;
    let preview = $("img.preview", slot);
    if (!preview) {
      preview = el("img", { class: "preview", alt: "preview of the image being made" });
      $(".placeholder", slot).replaceChildren(preview, el("span", { class: "preview-label" }, "preview"));
    }
    preview.src = uri;
  });
}

function showImage(entry, image, index) {
  const card = cards.get(entry.id);
  if (!card) return;
  const slot = $$(".slot", card)[index] || $(".images", card).appendChild(el("figure", { class: "slot" }));
  const img = el("img", { class: "result", src: image.imageURL, alt: `generated image, seed ${image.seed}`, decoding: "async",
                          title: "click: full size" });
  img.addEventListener("click", () => openViewer(image));
  img.addEventListener("error", () => {
    img.replaceWith(el("div", { class: "placeholder expired" }, "image expired or deleted"));
  }, { once: true });
  const reuse = el("button", { type: "button", class: "linkish reuse-seed", title: "put this seed into the form" }, "reuse seed");
  reuse.addEventListener("click", () => {
    const seed = $("#g-seed");
    seed.value = String(image.seed);
    seed.dispatchEvent(new Event("input"));
    seed.focus();
  });
  const asSeed = el("button", { type: "button", class: "linkish use-as-seed", title: "img2img or inpaint from this image" }, "use as seed image");
  asSeed.addEventListener("click", () => setSeedImage({ imageUUID: image.imageUUID, imageURL: image.imageURL }));
  const caption = el("figcaption", {},
    el("span", {}, "seed ", el("code", { class: "seed" }, String(image.seed))),
    image.cost !== undefined && image.cost !== null ? el("span", {}, "cost $", el("span", { class: "cost" }, String(image.cost))) : null,
    el("span", { class: "slot-actions" }, reuse, asSeed,
      el("a", { class: "download", href: image.imageURL, download: `wisp-${image.seed}.png` }, "download")));
  slot.className = "slot";
  slot.dataset.imageUuid = image.imageUUID;
  slot.replaceChildren(img, caption);
}

function renderQueue() {
  const list = $("#queue");
  $("#queue-count").textContent = String(active.size);
  if (!active.size) {
    list.replaceChildren(el("li", { class: "empty muted" }, "Nothing running."));
    return;
  }
  list.replaceChildren(...[...active.values()].map(({ entry, state, step, steps }) => {
    const cancel = el("button", { type: "button", class: "secondary cancel" }, "Cancel");
    cancel.disabled = Boolean(entry.cancelling);
    cancel.addEventListener("click", () => cancelTask(entry.id));
    const where = state === "running" && steps ? `running · step ${step}/${steps}` : state;
    return el("li", { class: "queue-item", dataset: { task: entry.id, state } },
      el("span", { class: "queue-prompt", title: entry.request.positivePrompt }, entry.request.positivePrompt),
      el("span", { class: "queue-state muted" }, where), cancel);
  }));
}

async function cancelTask(taskUUID) {
  const state = active.get(taskUUID);
  if (!state || state.entry.cancelling) return;
  state.entry.cancelling = true;
  renderQueue();
  const card = cards.get(taskUUID);
  if (card) $(".cancel", card).disabled = true;
  try {
    const answer = await client.cancel(taskUUID);
    // Not cancelled: it had just finished; its result arrives on its own.
    if (!answer.cancelled && card) $(".cancel", card).textContent = "already finished";
  } catch (error) {
    state.entry.cancelling = false;
    renderQueue();
    if (card) {
      $(".cancel", card).disabled = false;
      const line = $(".run-error", card);
      line.textContent = `the cancel failed: ${describe(error)}`;
      line.hidden = false;
    }
  }
}

function addEntry(request, meta) {
  const entry = { id: newUUID(), request, meta, createdAt: Date.now(), status: "waiting", images: [], error: null };
  runs.unshift(entry);
  const card = runCard(entry);
  $("#results").prepend(card);
  updateCard(entry);
  saveHistory();
  // On a phone the results sit below the form: bring the new card into view.
  if (window.matchMedia("(max-width: 859px)").matches) card.scrollIntoView({ block: "start", behavior: "smooth" });
  return entry;
}

/** Send a request as a new task and follow it to its end; form errors land at their fields. */
async function submitRequest(request, meta = {}) {
  const form = $("#gen-form");
  clearErrors(form);
  const entry = addEntry(request, meta);
  await follow(entry, { ...request, taskUUID: entry.id, includeProgress: true, includePreviews: true }, form);
}

function endEntry(entry, error) {
  active.delete(entry.id);
  delete entry.cancelling;
  if (error) {
    entry.status = error.code === "taskCancelled" ? "cancelled"
      : ["taskInterrupted", "disconnected"].includes(error.code) ? "interrupted" : "failed";
    entry.error = { code: error.code, message: error.message, parameter: error.parameter };
  } else {
    entry.status = "done";
    entry.error = null;
  }
  renderQueue();
  updateCard(entry);
  saveHistory();
}

const expectedImages = (entry) => Math.max(1, Number(entry.request.numberResults) || 1);

function takeItem(entry, item) {
  if (item.status === "processing") return showProgress(entry, item);
  if (!item.imageUUID || entry.images.some((i) => i.imageUUID === item.imageUUID)) return;  // a resume may repeat one
  const image = { imageUUID: item.imageUUID, imageURL: item.imageURL, seed: item.seed, cost: item.cost };
  showImage(entry, image, entry.images.length);
  entry.images.push(image);
  saveHistory();
}

async function follow(entry, task, form) {
  active.set(entry.id, { entry, state: "waiting" });
  renderQueue();
  try {
    await client.run(task, {
      onItem: (item) => takeItem(entry, item),
      isDone: () => entry.images.length >= expectedImages(entry),
    });
    endEntry(entry, null);
  } catch (error) {
    endEntry(entry, error);
    // Refused fields are shown at the field too (a cancel is the user's own doing: the card says it).
    if (form && entry.status === "failed") showError(form, error);
  }
}

/** After a reload: ask the server (getResponse) for what became of the requests that were running. */
async function reattach(entry) {
  delete entry.reattach;
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  let first = true;
  for (let tries = 0; tries < 600 && client.state === "connected"; tries += 1) {
    let processing = false;
    try {
      await client.run({ taskType: "getResponse", taskUUID: entry.id }, {
        onItem: (item) => {
          if (item.status === "processing") processing = true;
          if (first && processing) {
            first = false;
            entry.status = "running";
            entry.error = null;
            active.set(entry.id, { entry, state: "running" });
            updateCard(entry);
            renderQueue();
          }
          takeItem(entry, item);
        },
        isDone: (item) => item.status === "processing" || entry.images.length >= expectedImages(entry),
      });
    } catch (error) {
      if (error.code === "taskNotFound") {
        active.delete(entry.id);
        entry.status = "interrupted";
        entry.error = { code: "pageReloaded", message: "the page was reloaded while it ran" };
        renderQueue();
        updateCard(entry);
        saveHistory();
      } else {
        endEntry(entry, error);
      }
      return;
    }
    if (entry.images.length >= expectedImages(entry)) return endEntry(entry, null);
    if (!processing) break;
    await wait(1000);
  }
  active.delete(entry.id);
  renderQueue();
}

function renderHistory() {
  const results = $("#results");
  if (!runs.length) return;
  results.replaceChildren();
  for (const entry of runs) {
    const card = runCard(entry);
    results.append(card);
    entry.images.forEach((image, index) => showImage(entry, image, index));
    updateCard(entry);
  }
}

function resumeHistory() {
  for (const entry of runs) if (entry.reattach) reattach(entry);
}

// ---- full-size view and "copy request" ---------------------------------------------------

function openViewer(image) {
  const dialog = $("#viewer");
  $("#viewer-image").src = image.imageURL;
  $("#viewer-caption").textContent = `seed ${image.seed}`;
  const link = $("#viewer-download");
  link.href = image.imageURL;
  link.download = `wisp-${image.seed}.png`;
  dialog.showModal();
}

let codeEntry = null;
let codeLang = "json";

/** The request as it is worth copying: progress flags off (they are the page's), a random seed pinned
 *  to the one the server chose (so the copy makes the same image). */
function copyableRequest(entry) {
  const request = structuredClone(entry.request);
  if (request.seed === undefined && entry.images.length) request.seed = entry.images[0].seed;
  return request;
}

const pyString = (s) => JSON.stringify(s);  // JSON string escapes are valid Python

function pyValue(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return pyString(value);
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) return `[${value.map(pyValue).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyValue(v)}`).join(", ")}}`;
}

const pyCall = (name, fields) =>
  `${name}(${Object.entries(fields).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${typeof v === "object" && v && v.raw ? v.raw : pyValue(v)}`).join(", ")})`;

/** runware (PyPI, 0.5.x): IImageInference with the SDK's own item classes. */
function pythonCode(request, url, key) {
  const imports = new Set(["IImageInference", "Runware"]);
  const lines = [];
  for (const [name, value] of Object.entries(request)) {
    if (name === "taskType" || name === "taskUUID" || value === undefined) continue;
    if (name === "lora") {
      imports.add("ILora");
      lines.push(`lora=[${value.map((l) => pyCall("ILora", { model: l.model, weight: l.weight ?? null })).join(", ")}]`);
    } else if (name === "embeddings") {
      imports.add("IEmbedding");
      lines.push(`embeddings=[${value.map((e) => pyCall("IEmbedding", { model: e.model, weight: e.weight })).join(", ")}]`);
    } else if (name === "controlNet") {
      lines.push(`controlNet=[${value.map((c) => {
        const { preprocessor, ...fields } = c;
        if (!preprocessor) {
          imports.add("IControlNetGeneral");
          return pyCall("IControlNetGeneral", fields);
        }
        // The SDK's only ControlNet item with a preprocessor is IControlNetCanny; its enum has no plain
        // "tile": tile_gaussian is the same computation in wisp.
        imports.add("IControlNetCanny");
        imports.add("EPreProcessor");
        const member = preprocessor === "tile" ? "tile_gaussian" : preprocessor;
        return pyCall("IControlNetCanny", { ...fields, preprocessor: { raw: `EPreProcessor.${member}` } });
      }).join(", ")}]`);
    } else if (name === "promptWeighting") {
      imports.add("EPromptWeighting");
      lines.push(`promptWeighting=EPromptWeighting.${value.toLowerCase() === "compel" ? "COMPEL" : "SDEMBEDS"}`);
    } else {
      lines.push(`${name}=${pyValue(value)}`);
    }
  }
  const apiKey = key ? pyString(key) : `os.environ["WISP_API_KEY"]`;
  return `import asyncio
import os

from runware import ${[...imports].sort().join(", ")}


async def main():
    runware = Runware(api_key=${apiKey}, url=${pyString(url)})
    await runware.connect()
    try:
        images = await runware.imageInference(requestImage=IImageInference(
${lines.map((l) => `            ${l},`).join("\n")}
        ))
        for image in images:
            print(image.imageURL, image.seed)
    finally:
        await runware.disconnect()


asyncio.run(main())
`;
}

function jsCode(request, url, key) {
  const { taskType, ...fields } = request;
  const body = JSON.stringify(fields, null, 2);
  const apiKey = key ? JSON.stringify(key) : "process.env.WISP_API_KEY";
  return `// npm install @runware/sdk-js; save as generate.mjs; node generate.mjs
import { RunwareServer } from "@runware/sdk-js";

const runware = new RunwareServer({ apiKey: ${apiKey}, url: ${JSON.stringify(url)} });
const images = await runware.imageInference(${body});
for (const image of images) console.log(image.imageURL, image.seed);
await runware.disconnect();
`;
}

const shellQuote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

function curlCode(request, httpURL, key) {
  // Every run needs a taskUUID of its own: the shell makes one (Linux: /proc; macOS: uuidgen).
  const marker = "@@TASK_UUID@@";
  const json = JSON.stringify([{ taskType: request.taskType, taskUUID: marker, ...request }]);
  const [before, after] = shellQuote(json).split(marker);
  const auth = key ? `"Authorization: Bearer ${key}"` : `"Authorization: Bearer $WISP_API_KEY"`;
  return `curl -sS ${httpURL}/v1 \\
  -H ${auth} \\
  -H "Content-Type: application/json" \\
  -d ${before}'"$(cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen)"'${after}
`;
}

function jsonCode(request) {
  return `${JSON.stringify([{ taskType: request.taskType, taskUUID: newUUID(), ...request }], null, 2)}\n`;
}

const CODE_NOTES = {
  json: "The task array as the WebSocket (or POST /v1) takes it; a taskUUID may be used once.",
  curl: "POST /v1 answers with the results when they are done. Set WISP_API_KEY first (or tick the box).",
  python: "pip install runware (0.5.x). Set WISP_API_KEY first (or tick the box), then run it with python.",
  js: "Node 18+: npm install @runware/sdk-js. Set WISP_API_KEY first (or tick the box).",
};

function renderCode() {
  if (!codeEntry) return;
  const request = copyableRequest(codeEntry);
  const key = $("#code-key").checked ? client.apiKey : "";
  const http = `${location.protocol}//${location.host}`;
  const text = codeLang === "python" ? pythonCode(request, socketURL(), key)
    : codeLang === "js" ? jsCode(request, socketURL(), key)
    : codeLang === "curl" ? curlCode(request, http, key)
    : jsonCode(request);
  $("#code-text").textContent = text;
  $("#code-text").dataset.lang = codeLang;
  $("#code-note").textContent = CODE_NOTES[codeLang];
  $("#code-copied").textContent = "";
  for (const tab of $$("#code-dialog .code-tabs [data-lang]")) tab.setAttribute("aria-selected", String(tab.dataset.lang === codeLang));
}

function openCode(entry) {
  codeEntry = entry;
  renderCode();
  $("#code-dialog").showModal();
}

async function copyCode() {
  const text = $("#code-text").textContent;
  const said = $("#code-copied");
  try {
    await navigator.clipboard.writeText(text);
    said.textContent = "copied";
  } catch {
    // No clipboard permission (plain http on a LAN address): select it for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents($("#code-text"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    said.textContent = document.execCommand?.("copy") ? "copied" : "selected: press Ctrl+C";
  }
}

function setupDialogs() {
  for (const tab of $$("#code-dialog .code-tabs [data-lang]")) {
    tab.addEventListener("click", () => {
      codeLang = tab.dataset.lang;
      renderCode();
    });
  }
  $("#code-key").addEventListener("change", renderCode);
  $("#code-copy").addEventListener("click", copyCode);
  // A click on the backdrop (outside the dialog's box) closes it.
  for (const dialog of $$("dialog")) {
    dialog.addEventListener("click", (event) => {
      if (event.target !== dialog) return;
      const box = dialog.getBoundingClientRect();
      const inside = event.clientX >= box.left && event.clientX <= box.right && event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) dialog.close();
    });
  }
}

async function generate(form) {
  clearErrors(form);
  let built;
  try {
    built = inferenceRequest(form);
  } catch (error) {
    return showError(form, error);
  }
  await submitRequest(built.request, built.meta);
}

function setupGenerate() {
  const scheduler = $("#g-scheduler");
  for (const name of SCHEDULERS) scheduler.append(el("option", { value: name === "Default" ? "" : name }, name));
  const form = $("#gen-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate(form);
  });
  $("#g-model").addEventListener("change", showModelInfo);
  $("#g-seed-random").addEventListener("click", () => { $("#g-seed").value = ""; });
  $("#clear-results").addEventListener("click", () => {
    // Finished requests go (from the page and the history); running ones stay.
    runs = runs.filter((entry) => active.has(entry.id));
    for (const [id, card] of cards) {
      if (!active.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    saveHistory();
    if (!$("#results .run")) $("#results").replaceChildren(el("p", { class: "empty muted" }, "Images appear here as they arrive."));
  });
  syncSize = setupSizes();
  setupLoraPicker();
  setupMaskEditor();
  setupControlNet();
  setupDialogs();
  loadHistory();
  renderHistory();
}

// ---- upload ------------------------------------------------------------------------

/** PUT a local file to /v1/files (XHR, for an upload progress bar); resolves to its URL. */
function putFile(file, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${client.apiKey}`);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) progress.value = event.loaded / event.total;
    };
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch { /* a non-JSON answer is reported below with its status */ }
      if (xhr.status >= 200 && xhr.status < 300 && body.url) return resolve(body.url);
      const wire = body.errors?.[0] || {};
      reject({ code: wire.code || `http${xhr.status}`, message: wire.message || `the file upload failed (HTTP ${xhr.status})`, parameter: "file" });
    };
    xhr.onerror = () => reject({ code: "networkError", message: "the file upload failed (network)", parameter: "file" });
    xhr.send(file);
  });
}

/** The five phases; `failure` (an error) marks the first phase not reached as the one that failed, with its message. */
function renderPhases(list, reached = {}, failure = null) {
  const failedAt = failure ? PHASES.find((phase) => !reached[phase]) : null;
  list.replaceChildren(...PHASES.map((phase) => {
    const state = reached[phase] ? "done" : phase === failedAt ? "failed" : "waiting";
    const message = state === "failed" ? describe(failure) : reached[phase] || "";
    return el("li", { dataset: { phase, state } },
      el("span", { class: "phase-name" }, phase), el("span", { class: "phase-message muted" }, message));
  }));
}

function uploadTask(form, downloadURL) {
  const value = (name) => form.elements[name].value.trim();
  const task = {
    taskType: "modelUpload",
    air: value("air"),
    category: value("category"),
    architecture: value("architecture"),
    // Runware requires a name; blank means the AIR's id (as `wisp upload` names a model after its file).
    name: value("name") || (value("air").split(":")[1] || "").split("@")[0] || undefined,
    version: value("version") || undefined,
    downloadURL,
    format: "safetensors",
    // Same AIR + same uniqueIdentifier skips the download; a fresh one always fetches.
    uniqueIdentifier: value("uniqueIdentifier") || newUUID(),
    private: form.elements.private.checked,
  };
  if (value("type")) task.type = value("type");
  if (value("heroImageURL")) task.heroImageURL = value("heroImageURL");
  if (value("defaultWeight")) task.defaultWeight = Number(value("defaultWeight"));
  const tags = value("tags").split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) task.tags = tags;
  return task;
}

async function upload(form) {
  clearErrors(form);
  const phases = $("#upload-phases");
  const reached = {};
  renderPhases(phases, reached);
  const button = $("button[type=submit]", form);
  button.disabled = true;
  try {
    let url = form.elements.downloadURL.value.trim();
    if (form.elements.source.value === "file") {
      const file = form.elements.file.files[0];
      if (!file) throw { code: "missingParameter", message: "choose a file", parameter: "file" };
      const progress = $("#u-file-progress");
      progress.hidden = false;
      url = await putFile(file, progress);
    }
    const task = uploadTask(form, url);
    await client.run(task, {
      onItem: (item) => {
        if (!PHASES.includes(item.status)) return;  // e.g. "processing" from a catch-up getResponse
        reached[item.status] = item.message || item.status;
        renderPhases(phases, reached);
      },
      isDone: (item) => item.status === "ready",
    });
    showFormMessage(form, `${task.air} is ready`, "ok");
    refreshModels();
  } catch (error) {
    // At its field (the file field for a local file's errors) and at the phase it stopped in.
    showError(form, error);
    renderPhases(phases, reached, error);
  } finally {
    button.disabled = false;
  }
}

function setupUpload() {
  const form = $("#upload-form");
  const arch = $("#u-arch");
  for (const name of ARCHITECTURES) arch.append(el("option", {}, name));
  // An upscaler's only architecture is "upscaler" (its network is detected from the file), and only an upscaler's.
  arch.append(el("option", { hidden: true }, "upscaler"));
  // URL or file: only the chosen source's field is shown.
  for (const radio of $$("input[name=source]", form)) {
    radio.addEventListener("change", () => {
      for (const field of $$("[data-source]", form)) field.hidden = field.dataset.source !== form.elements.source.value;
    });
  }
  // Checkpoints need a type and LoRAs must not have one; pick the usual value.
  $("#u-category").addEventListener("change", (event) => {
    const type = $("#u-type");
    if (event.target.value === "checkpoint" && !type.value) type.value = "base";
    if (event.target.value !== "checkpoint" && event.target.value !== "embeddings") type.value = "";
    if (event.target.value === "upscaler") arch.value = "upscaler";
    else if (arch.value === "upscaler") arch.value = ARCHITECTURES[0];
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    upload(form);
  });
  $("#u-air").addEventListener("input", (event) => { event.target.dataset.auto = event.target.value ? "0" : "1"; });
  // "input", not "change": a change fires on blur, i.e. just as the user moves into the AIR field to type their own.
  form.elements.file.addEventListener("change", suggestAir);
  for (const input of [form.elements.downloadURL, form.elements.version]) input.addEventListener("input", suggestAir);
  renderPhases($("#upload-phases"));
}

// ---- training ----------------------------------------------------------------------

const familyOf = (architecture) => ARCHITECTURE_FAMILIES[architecture] ?? architecture;

/** The base-model picker: the recipe's built-in model by default, or any checkpoint of its family. */
function fillBaseModels() {
  const select = $("#t-base");
  const family = TRAINING_RECIPES[$("#t-recipe").value];
  const previous = select.value;
  fillSelect(select, knownCheckpoints.filter((m) => familyOf(m.architecture) === family && m.air !== RECIPE_BASES[family]));
  select.prepend(el("option", { value: "" }, `${RECIPE_BASES[family]} (built-in)`));
  select.value = [...select.options].some((o) => o.value === previous) ? previous : "";
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject({ code: "fileUnreadable", message: `${file.name} could not be read`, parameter: "inputs.dataset" });
    reader.readAsDataURL(file);
  });
}

/** The dataset as the server takes it: chosen files as data URIs, then one URL or imageUUID per line. */
async function datasetOf(form) {
  const files = await Promise.all([...form.elements.files.files].map(readAsDataURL));
  const lines = form.elements.refs.value.split("\n").map((l) => l.trim()).filter(Boolean);
  return [...files, ...lines];
}

async function trainingTask(form) {
  const value = (name) => form.elements[name].value.trim();
  const dataset = await datasetOf(form);
  if (!dataset.length) {
    throw { code: "missingParameter", message: "choose image or .zip files, or give URLs / imageUUIDs", parameter: "inputs.dataset" };
  }
  const task = {
    taskType: "training",
    taskUUID: newUUID(),
    deliveryMethod: "async",
    model: value("model"),
    inputs: { dataset },
    baseModel: value("baseModel") || undefined,
    trainingSteps: numberOf(form, "trainingSteps"),
    learningRate: numberOf(form, "learningRate"),
    rank: numberOf(form, "rank"),
    seed: numberOf(form, "seed"),
    triggerWord: value("triggerWord") || undefined,
    class_prompt: value("class_prompt") || undefined,
    lora_type: value("lora_type"),
    includeCost: true,
  };
  const air = value("importAir");
  if (air) {
    // Without importModel the server registers it under the team's default source.
    task.importModel = { air, name: value("importName") || air, version: air.split("@")[1] || "1", uniqueIdentifier: task.taskUUID, private: true };
  }
  return task;
}

function trainingCard(task) {
  $("#trainings .empty")?.remove();
  const images = task.inputs.dataset.length;
  const cancel = el("button", { type: "button", class: "secondary cancel" }, "Cancel");
  const card = el("article", { class: "run training-run", dataset: { task: task.taskUUID } },
    el("header", {},
      el("span", { class: "run-status", dataset: { status: "sending" } }, "Sending"),
      el("span", { class: "run-meta muted" }, `${task.model} · ${task.baseModel || RECIPE_BASES[TRAINING_RECIPES[task.model]] || "?"} · ${images} dataset ${images === 1 ? "entry" : "entries"}`)),
    el("div", { class: "progress", hidden: true }, el("div", { class: "bar" })),
    el("p", { class: "train-step muted", hidden: true }),
    el("ol", { class: "phases train-statuses", "aria-live": "polite" }),
    el("div", { class: "train-result", hidden: true }),
    el("p", { class: "run-error", hidden: true }),
    el("footer", { class: "run-actions" }, cancel, el("code", { class: "task-uuid muted", title: "taskUUID" }, task.taskUUID)));
  $("#trainings").prepend(card);
  if (window.matchMedia("(max-width: 859px)").matches) card.scrollIntoView({ block: "start", behavior: "smooth" });
  return card;
}

const TRAINING_CARD_WORDS = { sending: "Sending", accepted: "Accepted", running: "Running", cancelled: "Cancelled", failed: "Failed" };

/** A training card's status: plain words shown, the wire name in data-status and the title. */
function setTrainingStatus(node, name) {
  node.dataset.status = name;
  node.title = name;
  node.textContent = TRAINING_STATUS_WORDS[name] || TRAINING_CARD_WORDS[name] || name;
}

/** Statuses in their order, each with its latest message; the furthest one reached is "current". */
function renderStatuses(card, seen, reached, finished) {
  const names = TRAINING_STATUSES.filter((s) => s !== "queued" || seen.has("queued"));
  $(".train-statuses", card).replaceChildren(...names.map((name) => {
    const index = TRAINING_STATUSES.indexOf(name);
    const state = index < reached || (index === reached && finished) ? "done" : index === reached ? "current" : "waiting";
    return el("li", { dataset: { status: name, state } },
      el("span", { class: "phase-name", title: name }, TRAINING_STATUS_WORDS[name] || name),
      el("span", { class: "phase-message muted" }, seen.get(name) || ""));
  }));
}

function showTrainingProgress(card, item) {
  const fraction = typeof item.progress === "number" ? item.progress : item.steps ? (item.step || 0) / item.steps : null;
  if (fraction === null) return;
  const bar = $(".progress", card);
  bar.hidden = false;
  $(".bar", bar).style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  if (!item.steps) return;
  const line = $(".train-step", card);
  line.hidden = false;
  const loss = typeof item.loss === "number" ? ` · loss ${item.loss.toFixed(4)}` : "";
  line.textContent = `step ${item.step ?? 0}/${item.steps}${loss}`;
}

/** The finished LoRA: its AIR and a button that puts it in the Generate panel's LoRA list. */
function showTrainedLora(card, item, task) {
  const box = $(".train-result", card);
  const use = el("button", { type: "button", class: "secondary use-lora" }, "Use in Generate");
  use.addEventListener("click", () => useLora(item.air, task.baseModel || RECIPE_BASES[TRAINING_RECIPES[task.model]]));
  const cost = item.cost !== undefined ? el("span", { class: "muted" }, ` · cost $${item.cost}`) : null;
  box.replaceChildren(el("p", {}, "LoRA ", el("code", { class: "air" }, item.air), cost), use);
  box.hidden = false;
}

async function useLora(air, baseModel) {
  await refreshModels();
  const pick = $("#g-lora-pick");
  if (![...pick.options].some((o) => o.value === air)) pick.append(el("option", { value: air }, air));
  pick.value = air;
  // A LoRA only runs on its own family: generate on the model it was trained on.
  if ([...$("#g-model").options].some((o) => o.value === baseModel)) $("#g-model").value = baseModel;
  if (!chosenLoras.some((l) => l.air === air)) chosenLoras.push({ air, weight: String(knownLoras.get(air)?.defaultWeight ?? 1) });
  renderLoras();
  $(".tabs [data-tab=generate]").click();
}

async function train(form) {
  clearErrors(form);
  const button = $("button[type=submit]", form);
  button.disabled = true;
  let task;
  try {
    task = await trainingTask(form);
    const size = JSON.stringify([task]).length;
    if (size > MAX_FRAME_BYTES) {
      throw { code: "frameTooLarge", parameter: "inputs.dataset",
              message: `the dataset is ${(size / 1048576).toFixed(1)} MiB inline; a frame holds at most 16 MiB: give large datasets by URL` };
    }
  } catch (error) {
    button.disabled = false;
    return showError(form, error);
  }
  button.disabled = false;
  const card = trainingCard(task);
  const status = $(".run-status", card);
  const cancel = $(".cancel", card);
  const seen = new Map();  // trainingStatus -> latest message
  let reached = -1;
  let lastHeard = Date.now();
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const answer = await client.cancel(task.taskUUID);
      // Not cancelled: it had already finished; its final item or error arrives on its own.
      if (!answer.cancelled) cancel.textContent = "already finished";
    } catch (error) {
      cancel.disabled = false;
      showFormMessage(form, describe(error));
    }
  });
  // Statuses pushed while the socket was away arrive on resume; if the session could not be
  // resumed they went to the old one, so a quiet job is asked for its latest state.
  const poll = setInterval(() => {
    if (client.state === "connected" && Date.now() - lastHeard > POLL_SILENCE_MS && client.poll(task.taskUUID)) lastHeard = Date.now();
  }, 1000);
  const isFinal = (item) => item.status === "success" && item.trainingStatus === "model_ready";
  try {
    await client.run(task, {
      onItem: (item) => {
        lastHeard = Date.now();
        if (!item.trainingStatus) {
          // The ack ({taskType, taskUUID}), or a getResponse answer from before the first status.
          if (reached < 0) setTrainingStatus(status, item.status ? "running" : "accepted");
          return;
        }
        const index = TRAINING_STATUSES.indexOf(item.trainingStatus);
        if (index < reached) return;  // an older status repeated by a resume or a poll
        reached = index;
        seen.set(item.trainingStatus, item.message || "");
        setTrainingStatus(status, item.trainingStatus);
        if (item.trainingStatus === "training_started" || isFinal(item)) showTrainingProgress(card, item);
        renderStatuses(card, seen, reached, isFinal(item));
        if (isFinal(item)) showTrainedLora(card, item, task);
      },
      isDone: isFinal,
    });
    card.classList.add("done");
    refreshModels();
  } catch (error) {
    showError(form, error);
    card.classList.add("failed");
    setTrainingStatus(status, error.code === "taskCancelled" ? "cancelled" : "failed");
    const line = $(".run-error", card);
    line.textContent = describe(error);
    line.hidden = false;
  } finally {
    clearInterval(poll);
    cancel.hidden = true;
  }
}

function setupTraining() {
  const form = $("#train-form");
  const recipe = $("#t-recipe");
  for (const name of Object.keys(TRAINING_RECIPES)) recipe.append(el("option", { value: name }, name));
  recipe.addEventListener("change", fillBaseModels);
  fillBaseModels();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    train(form);
  });
  $("#clear-trainings").addEventListener("click", () => {
    for (const card of $$("#trainings .run.done, #trainings .run.failed")) card.remove();
    if (!$("#trainings .run")) $("#trainings").replaceChildren(el("p", { class: "empty muted" }, "Jobs appear here with their statuses."));
  });
}

// ---- start ---------------------------------------------------------------------

function start() {
  $("#general-message .close").addEventListener("click", hideGeneral);
  setupTabs();
  setupGenerate();
  setupLibrary();
  setupUpload();
  setupTraining();
  setupKeyForm();
  // Hooks for the browser tests: drop the socket as a network failure would, read state.
  window.__wispTest = {
    dropSocket: (offlineMs = 0) => client.drop(offlineMs),
    // As dropSocket, but the server won't know the session on return (it expired):
    // what it pushed meanwhile is lost, and only getResponse can tell.
    dropSession: (offlineMs = 0) => { client.sessionUUID = newUUID(); client.drop(offlineMs); },
    get states() { return [...testLog.states]; },
    get state() { return client.state; },
    get sessionUUID() { return client.sessionUUID; },
    get resumes() { return client.resumes; },
    get pongs() { return client.pongs; },
  };
}

start();
