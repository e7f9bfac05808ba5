// b3-jobs dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// Data comes from the HTTP API (/api/v1/...); changes come from /ws events. An event patches what
// is on screen at once (a row's state, a progress bar) and schedules a reload of the affected
// data, throttled, so a burst of a thousand events costs a few requests, and nothing is polled.

import { config, token } from "./api.js";
import { FailuresView } from "./failures.js";
import { JobView } from "./job.js";
import { JobsView } from "./jobs.js";
import { live } from "./live.js";
import { OverviewView, overview, timings } from "./overview.js";
import { $, rel } from "./ui.js";

let current = null;

function wireTokenDialog() {
  $("#token-button").addEventListener("click", () => token.ask("The API token (B3JOBS_TOKEN). It stays in this tab (sessionStorage)."));
  $("#token-form").addEventListener("submit", () => {
    token.set($("#token-input").value.trim());
    reloadEverything();
    live.restart();
  });
  $("#token-clear").addEventListener("click", () => {
    token.set("");
    $("#token-input").value = "";
    $("#token-dialog").close();
    live.restart();
  });
}

// -- routing -------------------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  const params = new URLSearchParams(query || "");
  if (current && current.stop) current.stop();
  let section = "overview";
  if (path.startsWith("/job/")) {
    current = new JobView(decodeURIComponent(path.slice(5)));
    section = "jobs";
  } else if (path === "/jobs") {
    current = new JobsView(params);
    section = "jobs";
  } else if (path === "/failures") {
    current = new FailuresView(params);
    section = "failures";
  } else {
    current = new OverviewView();
  }
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("current", a.dataset.nav === section);
  document.body.dataset.view = section;
  current.start($("#view"));
}

function reloadEverything() {
  overview.reload.now();
  if (current && current.reload) current.reload.now();
}

// -- start ---------------------------------------------------------------------------------------

function onEvent(env) {
  if (env.event !== "job:progress") overview.reload(); // progress changes no count
  if (current && current.onEvent) current.onEvent(env);
}

function start() {
  wireTokenDialog();
  window.addEventListener("hashchange", route);
  document.addEventListener("b3:changed", () => {
    overview.reload();
    if (current && current.reload) current.reload();
  });
  live.handlers = { event: onEvent, resync: reloadEverything };
  overview.reload.now().then(route, route);
  live.connect();
  // Relative times ("3s ago") count on by themselves; this touches no server.
  setInterval(() => {
    for (const el of document.querySelectorAll("time[data-ts]")) {
      const ts = Number(el.dataset.ts);
      if (ts) el.textContent = rel(ts);
    }
  }, 1000);
}

window.b3dash = { live, overview, config, token, timings, get view() { return current; } };
document.addEventListener("DOMContentLoaded", start);
