// The socket side of the playground: connect, authenticate, keep alive,
// reconnect with resume, and route every item or error to the task that asked
// for it (by taskUUID). No DOM here; app.js owns the page.

const PING_EVERY_MS = 5000;      // what the Runware SDKs do
const PONG_DEADLINE_MS = 20000;  // no pong for this long: the socket is dead even if the browser hasn't noticed
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

/** A v4 UUID. crypto.randomUUID exists only in secure contexts (https, localhost);
 *  a playground opened over plain http on a LAN address still needs taskUUIDs. */
export function newUUID() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** ws:// or wss:// to /v1 on the host that served the page. */
export function socketURL(loc = window.location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/v1`;
}

export class WispClient {
  /**
   * @param {object} hooks
   *   onState(state, detail): "connecting" | "connected" | "reconnecting" | "auth failed" | "disconnected"
   *   onStray(error): an error no pending task claims (shown in the general message area)
   */
  constructor(url, hooks = {}) {
    this.url = url;
    this.hooks = hooks;
    this.apiKey = "";
    this.sessionUUID = null;   // kept across reconnects: it is what makes resume work
    this.ws = null;
    this.state = "disconnected";
    this.pending = new Map();  // taskUUID -> {task, onItem, onError, isDone, resolve, reject}
    this.finished = new Set(); // recently settled taskUUIDs: late duplicates are ignored, not "stray"
    this.cancels = new Map();  // taskUUID -> {resolve, reject}: taskCancel answers, routed apart from the task they name
    this.attempt = 0;
    this.pingTimer = null;
    this.retryTimer = null;
    this.lastPong = 0;
    this.pongs = 0;            // pongs received (read by tests)
    this.resumes = 0;          // how many re-authentications happened (read by tests)
    this.offlineUntil = 0;     // set by drop(): no reconnect before this time
  }

  // ---- connection lifecycle ------------------------------------------------

  /** Start (or restart with a new key) the connection. */
  connect(apiKey) {
    this._closeSocket();
    this._abandonPending("the connection was restarted with another key");
    this.apiKey = apiKey;
    this.sessionUUID = null;   // a different key is a different team: never resume across it
    this.attempt = 0;
    this._open("connecting");
  }

  /** Close for good (no reconnect). */
  disconnect() {
    this._stopTimers();
    this._closeSocket();
    this._abandonPending("disconnected from the server");
    this._setState("disconnected");
  }

  /** Close the current socket without triggering a reconnect (onClose ignores non-current sockets). */
  _closeSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "bye");
  }

  /** Fail every task still waiting: their session is gone, so no answer will come. */
  _abandonPending(message) {
    this._failCancels(message);
    for (const [taskUUID, entry] of [...this.pending]) {
      const error = { code: "disconnected", message, taskType: entry.task.taskType, taskUUID };
      entry.onError?.(error);
      this._settle(taskUUID, error);
    }
  }

  /** Simulate a network drop: the socket goes away and the normal reconnect path runs,
   *  not before `offlineMs` (an outage of that length). */
  drop(offlineMs = 0) {
    this.offlineUntil = Date.now() + offlineMs;
    if (this.ws) this.ws.close(4000, "dropped by the page");
  }

  _setState(state, detail = "") {
    this.state = state;
    this.hooks.onState?.(state, detail);
  }

  _open(state) {
    this._stopTimers();
    this._setState(state);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => this._authenticate(ws);
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onclose = () => this._onClose(ws);
    // onerror is always followed by onclose, which does the work.
  }

  _authenticate(ws) {
    const auth = { taskType: "authentication", apiKey: this.apiKey };
    if (this.sessionUUID) auth.connectionSessionUUID = this.sessionUUID;
    ws.send(JSON.stringify([auth]));
  }

  _onAuthenticated(item) {
    const resumed = this.sessionUUID !== null;
    const sameSession = resumed && item.connectionSessionUUID === this.sessionUUID;
    this.sessionUUID = item.connectionSessionUUID;
    this.attempt = 0;
    if (resumed) this.resumes += 1;
    // The server flushes what it kept for this session right after the auth reply.
    // A result sent while our old socket was closing can still be lost in flight
    // (the browser drops messages once a socket is closing), so ask once for every
    // task we were waiting on before the drop; duplicates are filtered by the handlers.
    // (Listed before the state hook runs: tasks it sends are not the drop's.)
    const waiting = resumed ? [...this.pending.keys()] : [];
    this._startPing();
    this._setState("connected", resumed ? (sameSession ? "resumed" : "new session") : "");
    this._catchUp(waiting);
  }

  _catchUp(taskUUIDs) {
    const tasks = taskUUIDs.map((taskUUID) => ({ taskType: "getResponse", taskUUID }));
    if (tasks.length) this._send(tasks);
  }

  _onClose(ws) {
    if (ws !== this.ws) return;  // an old socket we already replaced or closed on purpose
    this.ws = null;
    this._stopTimers();
    // A cancel's answer can be lost with the socket; the task it named still ends
    // (with taskCancelled) through resume or getResponse.
    this._failCancels("the connection dropped before the cancel was answered");
    if (this.state === "auth failed") return;  // retrying a wrong key would only repeat the failure
    const backoff = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.max(backoff, this.offlineUntil - Date.now());
    this.attempt += 1;
    this._setState("reconnecting", `retry in ${(delay / 1000).toFixed(1)} s`);
    this.retryTimer = setTimeout(() => this._open("reconnecting"), delay);
  }

  _startPing() {
    this.lastPong = Date.now();
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastPong > PONG_DEADLINE_MS) {
        this.ws?.close(4001, "no pong");
        return;
      }
      this._send([{ taskType: "ping", ping: true }]);
    }, PING_EVERY_MS);
  }

  _stopTimers() {
    clearInterval(this.pingTimer);
    clearTimeout(this.retryTimer);
    this.pingTimer = this.retryTimer = null;
  }

  // ---- frames --------------------------------------------------------------

  _send(tasks) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(tasks));
    return true;
  }

  _onFrame(ws, text) {
    if (ws !== this.ws) return;  // a socket we already left (e.g. before a key change)
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.hooks.onStray?.({ code: "badFrame", message: "the server sent a frame that is not JSON" });
      return;
    }
    for (const item of frame.data || []) this._onItem(item);
    for (const error of frame.errors || []) this._onError(ws, error);
  }

  _onItem(item) {
    if (item.taskType === "authentication" && !item.taskUUID) return this._onAuthenticated(item);
    if (item.taskType === "taskCancel") {
      this.cancels.get(item.taskUUID)?.resolve(item);
      this.cancels.delete(item.taskUUID);
      return;
    }
    if (item.taskType === "ping") {
      this.lastPong = Date.now();
      this.pongs += 1;
      return;
    }
    const entry = this.pending.get(item.taskUUID);
    if (!entry) return;  // a duplicate of something already settled (resume + catch-up)
    entry.onItem?.(item);
    if (entry.isDone(item)) this._settle(item.taskUUID, null);
  }

  _onError(ws, error) {
    if (error.taskType === "authentication") {
      this._setState("auth failed", error.message || error.code);
      ws.close(1000, "auth failed");
      this._abandonPending(`authentication failed: ${error.message || error.code}`);
      return;
    }
    if (error.taskType === "taskCancel") {
      // About the cancel, not the task it names (taskNotFound, …): that task goes on.
      const waiter = this.cancels.get(error.taskUUID);
      this.cancels.delete(error.taskUUID);
      if (waiter) waiter.reject(error);
      else this.hooks.onStray?.(error);
      return;
    }
    const entry = error.taskUUID && this.pending.get(error.taskUUID);
    if (entry) {
      entry.onError?.(error);
      this._settle(error.taskUUID, error);
    } else if (!this.finished.has(error.taskUUID)) {
      this.hooks.onStray?.(error);  // never swallow an error nobody asked for
    }
  }

  _settle(taskUUID, error) {
    const entry = this.pending.get(taskUUID);
    this.pending.delete(taskUUID);
    this.finished.add(taskUUID);
    if (this.finished.size > 500) this.finished.delete(this.finished.values().next().value);
    if (error) entry.reject(error);
    else entry.resolve();
  }

  _failCancels(message) {
    for (const [taskUUID, waiter] of [...this.cancels]) waiter.reject({ code: "disconnected", message, taskType: "taskCancel", taskUUID });
    this.cancels.clear();
  }

  // ---- tasks ---------------------------------------------------------------

  /**
   * Ask the server to cancel a task (imageInference, queued or running; training): `taskCancel` carries the
   * task's own taskUUID, so its answer is routed here, not to the task, which
   * ends by itself (error `taskCancelled`) through its own handlers.
   * @returns {Promise<object>} the `{taskType:"taskCancel", taskUUID, cancelled}` item; rejects with the wire error
   */
  cancel(taskUUID) {
    return new Promise((resolve, reject) => {
      if (this.cancels.has(taskUUID)) return reject({ code: "alreadyAsked", message: "a cancel for this task is already on its way", taskType: "taskCancel", taskUUID });
      if (!this._send([{ taskType: "taskCancel", taskUUID }])) {
        return reject({ code: "notConnected", message: "not connected to the server", taskType: "taskCancel", taskUUID });
      }
      this.cancels.set(taskUUID, { resolve, reject });
    });
  }

  /** Ask for the latest state of a task we are still waiting on (getResponse); the answer goes to its handlers.
   *  For long tasks whose pushed items may have gone to a session we could not resume. */
  poll(taskUUID) {
    return this.pending.has(taskUUID) && this._send([{ taskType: "getResponse", taskUUID }]);
  }


  /**
   * Send one task and route what comes back for its taskUUID.
   * @param {object} task        the task (taskUUID is added)
   * @param {object} handlers    onItem(item), onError(error), isDone(item) -> bool
   * @returns {Promise<void>}    resolves when isDone says so, rejects with the wire error
   */
  run(task, { onItem, onError, isDone = () => true } = {}) {
    const full = { ...task, taskUUID: task.taskUUID || newUUID() };
    return new Promise((resolve, reject) => {
      if (this.state !== "connected") {
        const error = { code: "notConnected", message: "not connected to the server", taskType: full.taskType, taskUUID: full.taskUUID };
        onError?.(error);
        reject(error);
        return;
      }
      this.pending.set(full.taskUUID, { task: full, onItem, onError, isDone, resolve, reject });
      if (!this._send([full])) {
        // The socket died between the state change and now: say so rather than wait forever.
        this.pending.delete(full.taskUUID);
        const error = { code: "notConnected", message: "the connection dropped; try again once connected", taskType: full.taskType, taskUUID: full.taskUUID };
        onError?.(error);
        reject(error);
      }
    });
  }
}
