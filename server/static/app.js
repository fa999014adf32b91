// The playground page: forms in, tasks out, results and errors back onto the page.
// Everything that talks to the socket lives in client.js.

import { WispClient, newUUID, socketURL } from "/static/client.js";

// The server's scheduler names (engine/schedulers.py; matched case-insensitively there).
const SCHEDULERS = [
  "Default", "Euler", "Euler Karras", "Euler a", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE",
  "DPM++ 2M SDE Karras", "DPM++ 1S", "DPM2", "DPM2 a", "DDIM", "DDPM", "PNDM", "DEIS", "UniPC", "LCM", "TCD",
];
// Architectures modelUpload accepts (protocol/models.py).
const ARCHITECTURES = [
  "sd1x", "sdhyper", "sd1xlcm", "sdxl", "sdxllcm", "sdxldistilled", "sdxlhyper", "sdxllightning", "sdxlturbo",
  "sd3", "pony", "illustrious", "flux1s", "flux1d", "fluxkontextdev", "hidreamdev", "hidreamfull", "qwen_image",
];
const PHASES = ["validated", "downloaded", "optimized", "stored", "ready"];
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
    const found = form.querySelector(`[data-param="${CSS.escape(path)}"]`);
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
    name: value("name") || undefined,
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
  renderPhases($("#upload-phases"));
}

// ---- start ---------------------------------------------------------------------

function start() {
  $("#general-message .close").addEventListener("click", hideGeneral);
  setupTabs();
  setupGenerate();
  setupLibrary();
  setupUpload();
  setupKeyForm();
  // Hooks for the browser tests: drop the socket as a network failure would, read state.
  window.__wispTest = {
    dropSocket: (offlineMs = 0) => client.drop(offlineMs),
    get states() { return [...testLog.states]; },
    get state() { return client.state; },
    get sessionUUID() { return client.sessionUUID; },
    get resumes() { return client.resumes; },
    get pongs() { return client.pongs; },
  };
}

start();
