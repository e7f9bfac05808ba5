// The HTTP API with the operator's token, and the throttle that turns bursts of events into few reloads.

import { $ } from "./ui.js";

const TOKEN_KEY = "b3jobs.token";
export const config = Object.assign(
  { reconnectDelaysMs: [500, 1000, 2000, 4000, 5000], minReloadGapMs: 250 },
  window.B3DASH_CONFIG || {},
);

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  ask(reason) {
    const dialog = $("#token-dialog");
    $("#token-reason").textContent = reason;
    $("#token-input").value = token.get();
    if (!dialog.open) dialog.showModal();
    $("#token-input").focus();
  },
};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const secret = token.get();
  if (secret) headers.Authorization = "Bearer " + secret;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, "b3-jobs is unreachable (" + exc.message + ")", "unreachable");
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (exc) {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || resp.status + " " + resp.statusText;
    const code = data && data.error && data.error.code;
    if (resp.status === 401 && secret === token.get()) { // not a late answer to a token since replaced
      token.ask(secret ? "The token was refused. Enter the right one (B3JOBS_TOKEN)." : "This b3-jobs needs its token (B3JOBS_TOKEN) for this.");
    }
    throw new ApiError(resp.status, message, code);
  }
  return data;
}

/** A reload that runs at most once per gap (grown when it is slow), never twice at a time, and
 *  always once more after the last request for it: the screen ends up current. */
export function throttled(fn, baseGapMs) {
  let timer = null, running = false, again = false, last = 0, gap = baseGapMs || config.minReloadGapMs;
  let cancelled = false;
  async function run() {
    timer = null;
    if (cancelled) return;
    running = true;
    again = false;
    const started = performance.now();
    last = started;
    try {
      await fn();
    } catch (exc) {
      if (!(exc instanceof ApiError)) console.error(exc);
    } finally {
      running = false;
      gap = Math.max(baseGapMs || config.minReloadGapMs, 3 * (performance.now() - started));
      if (again) schedule();
    }
  }
  function schedule() {
    if (cancelled) return;
    if (running) {
      again = true;
      return;
    }
    if (timer) return;
    timer = setTimeout(run, Math.max(0, last + gap - performance.now()));
  }
  schedule.now = () => {
    clearTimeout(timer);
    timer = null;
    if (running) {
      again = true;
      return Promise.resolve();
    }
    return run();
  };
  schedule.cancel = () => { // the view left the screen: nothing more to load
    cancelled = true;
    clearTimeout(timer);
    timer = null;
  };
  return schedule;
}
