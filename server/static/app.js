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

/** The element of `form` that stands for a wire `parameter`, trying shorter paths:
 *  "lora[0].weight" → "lora[0].weight", "lora[0]", "lora". */
function fieldFor(form, parameter) {
  let path = parameter || "";
  while (path) {
    const name = CSS.escape(path);
    // data-also: other names the server uses for the same field (training's `images` is `inputs.dataset`).
    const found = form.querySelector(`[data-param="${name}"], [data-also~="${name}"]`);
    if (found) return found;
    const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
    path = cut > 0 ? path.slice(0, cut) : "";
  }
  return null;
}

/** Show a server error next to the field its `parameter` names, or in the form's message area. */
function showError(form, error) {
  const field = fieldFor(form, error.parameter);
  const text = error.message || error.code;
  if (!field) return showFormMessage(form, describe(error));
  field.classList.add("has-error");
  let slot = $(":scope > .field-error", field);
  if (!slot) {
    slot = el("p", { class: "field-error", role: "alert" });
    field.append(slot);
  }
  slot.textContent = text;
  slot.dataset.code = error.code || "";
  field.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function showFormMessage(form, text, kind = "error") {
  const box = $(":scope > .form-message", form);
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
}

function clearErrors(form) {
  for (const field of $$(".has-error", form)) field.classList.remove("has-error");
  for (const slot of $$(".field-error", form)) slot.remove();
  $(":scope > .form-message", form).hidden = true;
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

let knownLoras = new Map();  // air -> model info (for default weights)
let knownCheckpoints = [];   // model infos, for the training form's base-model picker

async function search(fields) {
  let answer = null;
  // A catch-up getResponse may answer status "processing" first; wait for the results.
  const hasResults = (item) => Array.isArray(item.results);
  await client.run({ taskType: "modelSearch", limit: 100, ...fields }, {
    onItem: (item) => { if (hasResults(item)) answer = item; },
    isDone: hasResults,
  });
  return answer;
}

/** Replace a select's options, keeping the current choice when it still exists. */
function fillSelect(select, models, emptyLabel) {
  const previous = select.value;
  select.replaceChildren();
  if (!models.length && emptyLabel) select.append(el("option", { value: "" }, emptyLabel));
  // The AIR first: it is what requests carry and what errors name.
  for (const m of models) select.append(el("option", { value: m.air, title: m.name }, m.name && m.name !== m.air ? `${m.air} · ${m.name}` : m.air));
  if (models.some((m) => m.air === previous)) select.value = previous;
}

async function refreshModels() {
  try {
    const [checkpoints, loras] = await Promise.all([search({ category: "checkpoint" }), search({ category: "lora" })]);
    fillSelect($("#g-model"), checkpoints.results, "— no checkpoints —");
    knownCheckpoints = checkpoints.results;
    fillBaseModels();
    knownLoras = new Map(loras.results.map((m) => [m.air, m]));
    fillSelect($("#g-lora-pick"), loras.results, "— none uploaded —");
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
    list.append(el("li", { class: "model", dataset: { air: m.air } },
      el("div", { class: "model-name" }, m.name || m.air, el("span", { class: "muted" }, ` v${m.version}`)),
      el("code", { class: "air" }, m.air), badges, tags));
  }
  if (answer.totalResults > answer.results.length) {
    list.append(el("li", { class: "muted" }, `… and ${answer.totalResults - answer.results.length} more; narrow the search.`));
  }
}

function setupLibrary() {
  $("#models-refresh").addEventListener("click", refreshModels);
  $("#models-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshLibrary();
  });
  $("#models-category").addEventListener("change", refreshLibrary);
}

// ---- generate --------------------------------------------------------------------

let chosenLoras = [];  // [{air, weight}] in request order: lora[i] in errors is this index

function renderLoras() {
  const list = $("#g-loras");
  list.replaceChildren();
  chosenLoras.forEach((lora, index) => {
    const weight = el("input", { type: "number", step: "0.05", min: "-4", max: "4", value: lora.weight, inputmode: "decimal",
                                 "aria-label": `weight of ${lora.air}` });
    weight.addEventListener("input", () => (lora.weight = weight.value));
    const remove = el("button", { type: "button", class: "ghost", "aria-label": `remove ${lora.air}` }, "×");
    remove.addEventListener("click", () => {
      chosenLoras.splice(index, 1);
      renderLoras();
    });
    list.append(el("li", { class: "lora-row", dataset: { param: `lora[${index}]` } },
      el("code", { class: "lora-air", dataset: { param: `lora[${index}].model` } }, lora.air),
      el("span", { class: "lora-weight", dataset: { param: `lora[${index}].weight` } }, weight), remove));
  });
}

function setupLoraPicker() {
  $("#g-lora-add").addEventListener("click", () => {
    const air = $("#g-lora-pick").value;
    if (!air || chosenLoras.some((l) => l.air === air)) return;
    const info = knownLoras.get(air);
    chosenLoras.push({ air, weight: String(info?.defaultWeight ?? 1) });
    renderLoras();
  });
}

/** A number from an input, or undefined when blank (the server then applies its default).
 *  Values are sent as typed: range and multiple-of-8 checks are the server's, and its
 *  errors come back next to the field. */
function numberOf(form, name) {
  const raw = form.elements[name].value.trim();
  return raw === "" ? undefined : Number(raw);
}

function inferenceTask(form) {
  const task = {
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
  const negative = form.elements.negativePrompt.value.trim();
  if (negative) task.negativePrompt = negative;
  if (chosenLoras.length) task.lora = chosenLoras.map((l) => ({ model: l.air, weight: l.weight === "" ? undefined : Number(l.weight) }));
  return task;
}

/** One card per request; image slots fill in as items arrive. */
function runCard(task) {
  $("#results .empty")?.remove();
  const slots = Array.from({ length: Math.max(1, Math.min(task.numberResults, 20)) || 1 }, () =>
    el("figure", { class: "slot pending" }, el("div", { class: "placeholder" }, "generating…")));
  const card = el("article", { class: "run", dataset: { task: task.taskUUID } },
    el("header", {},
      el("span", { class: "run-status" }, "queued"),
      el("span", { class: "run-meta muted" }, `${task.width ?? 512}×${task.height ?? 512} · ${task.model}`)),
    el("p", { class: "run-prompt" }, task.positivePrompt),
    el("div", { class: "progress", hidden: true }, el("div", { class: "bar" })),
    el("div", { class: "images" }, ...slots),
    el("p", { class: "run-error", hidden: true }));
  $("#results").prepend(card);
  // On a phone the results sit below the form: bring the new card into view.
  if (window.matchMedia("(max-width: 859px)").matches) card.scrollIntoView({ block: "start", behavior: "smooth" });
  return card;
}

function showImage(card, item, index) {
  const slot = $$(".slot", card)[index] || $(".images", card).appendChild(el("figure", { class: "slot" }));
  const img = el("img", { src: item.imageURL, alt: `generated image, seed ${item.seed}`, loading: "lazy", decoding: "async" });
  const caption = el("figcaption", {},
    el("span", {}, "seed ", el("code", { class: "seed" }, String(item.seed))),
    item.cost !== undefined ? el("span", {}, "cost $", el("span", { class: "cost" }, String(item.cost))) : null,
    el("a", { href: item.imageURL, target: "_blank", rel: "noopener" }, "open"));
  slot.className = "slot";
  slot.dataset.imageUuid = item.imageUUID;
  slot.replaceChildren(img, caption);
}

/**
 * Progress hook. The engine does not stream progress yet, and the playground does
 * not ask for it; but a getResponse answer (sent after a resume) already carries
 * `status:"processing"` for running tasks, and a later engine may add a `progress`
 * fraction (0..1) to such items. This is where both land: the card says "running",
 * and the bar moves when a number is there.
 */
function onProgress(card, item) {
  $(".run-status", card).textContent = "running";
  if (typeof item.progress !== "number") return;
  const bar = $(".progress", card);
  bar.hidden = false;
  $(".bar", bar).style.width = `${Math.round(Math.max(0, Math.min(1, item.progress)) * 100)}%`;
}

async function generate(form) {
  clearErrors(form);
  const task = inferenceTask(form);
  task.taskUUID = newUUID();
  const card = runCard(task);
  const seen = new Set();  // imageUUIDs: a resume can deliver the same image twice
  const expected = task.numberResults;
  const status = $(".run-status", card);
  status.textContent = `generating 0/${expected}`;
  try {
    await client.run(task, {
      onItem: (item) => {
        if (item.status === "processing") return onProgress(card, item);
        if (!item.imageUUID || seen.has(item.imageUUID)) return;
        showImage(card, item, seen.size);
        seen.add(item.imageUUID);
        status.textContent = seen.size < expected ? `generating ${seen.size}/${expected}` : "done";
      },
      isDone: () => seen.size >= expected,
    });
    card.classList.add("done");
    $(".progress", card).hidden = true;
  } catch (error) {
    showError(form, error);
    card.classList.add("failed");
    status.textContent = "failed";
    for (const slot of $$(".slot.pending", card)) slot.remove();
    const line = $(".run-error", card);
    line.textContent = describe(error);
    line.hidden = false;
  }
}

function setupGenerate() {
  const scheduler = $("#g-scheduler");
  for (const name of SCHEDULERS) scheduler.append(el("option", { value: name === "Default" ? "" : name }, name));
  const form = $("#gen-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate(form);
  });
  $("#clear-results").addEventListener("click", () =>
    $("#results").replaceChildren(el("p", { class: "empty muted" }, "Images appear here as they arrive.")));
  setupLoraPicker();
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

function renderPhases(list, reached = {}) {
  list.replaceChildren(...PHASES.map((phase) =>
    el("li", { dataset: { phase, state: reached[phase] ? "done" : "waiting" } },
      el("span", { class: "phase-name" }, phase), el("span", { class: "phase-message muted" }, reached[phase] || ""))));
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
    showError(form, error);
  } finally {
    button.disabled = false;
  }
}

function setupUpload() {
  const form = $("#upload-form");
  const arch = $("#u-arch");
  for (const name of ARCHITECTURES) arch.append(el("option", {}, name));
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
      el("span", { class: "run-status" }, "sending"),
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

/** Statuses in their order, each with its latest message; the furthest one reached is "current". */
function renderStatuses(card, seen, reached, finished) {
  const names = TRAINING_STATUSES.filter((s) => s !== "queued" || seen.has("queued"));
  $(".train-statuses", card).replaceChildren(...names.map((name) => {
    const index = TRAINING_STATUSES.indexOf(name);
    const state = index < reached || (index === reached && finished) ? "done" : index === reached ? "current" : "waiting";
    return el("li", { dataset: { status: name, state } },
      el("span", { class: "phase-name" }, name), el("span", { class: "phase-message muted" }, seen.get(name) || ""));
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
          if (reached < 0) status.textContent = item.status ? "running" : "accepted";
          return;
        }
        const index = TRAINING_STATUSES.indexOf(item.trainingStatus);
        if (index < reached) return;  // an older status repeated by a resume or a poll
        reached = index;
        seen.set(item.trainingStatus, item.message || "");
        status.textContent = item.trainingStatus;
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
    status.textContent = error.code === "taskCancelled" ? "cancelled" : "failed";
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
