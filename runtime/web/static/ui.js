// Constants and DOM helpers shared by every view: elements built from data, never from HTML strings.

export const STATES = ["waiting", "delayed", "active", "waiting-children", "completed", "failed"];
export const STATE_LABEL = { "waiting-children": "children" };
export const EVENT_STATE = {
  "job:waiting": "waiting",
  "job:active": "active",
  "job:completed": "completed",
  "job:failed": "failed",
  "job:delayed": "delayed",
  "job:stalled": "waiting",
};
export const CLEANABLE = ["completed", "failed", "waiting", "delayed"];
export const PAGE = 50;

/** h("a", {href, class, dataset: {...}, onclick}, child, ...): text children are never parsed as HTML. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the page's CSP, unlike a style attribute
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root) => (root || document).querySelector(selector);
export const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
export const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.1 && x > 0 ? 1 : 0) + "%");

export function rel(ts) {
  if (!ts) return "–";
  const s = Date.now() / 1000 - ts;
  const abs = Math.abs(s);
  const text = abs < 1 ? "now" : abs < 60 ? Math.round(abs) + "s" : abs < 3600 ? Math.round(abs / 60) + "m"
    : abs < 86400 ? (abs / 3600).toFixed(1) + "h" : (abs / 86400).toFixed(1) + "d";
  if (text === "now") return text;
  return s >= 0 ? text + " ago" : "in " + text;
}

/** A relative time that keeps itself current (app.js refreshes every `time[data-ts]` each second). */
export function when(ts) {
  return h("time", { dataset: { ts: ts || "" }, title: ts ? new Date(ts * 1000).toISOString() : "" }, rel(ts));
}

export function stateBadge(state) {
  return h("span", { class: "state state-" + state, dataset: { stateBadge: state } }, state);
}

function progressValue(progress) {
  if (typeof progress === "number") return progress;
  if (progress && typeof progress === "object") {
    for (const key of ["percent", "progress", "pct"]) if (typeof progress[key] === "number") return progress[key];
  }
  return null;
}

export function progressBar(progress) {
  const value = progressValue(progress);
  if (value === null) {
    return progress === null || progress === undefined ? h("span", { class: "muted" }, "–")
      : h("span", { class: "progress-text mono" }, JSON.stringify(progress).slice(0, 60));
  }
  const width = Math.max(0, Math.min(100, value));
  return h("span", { class: "progress-wrap", dataset: { progress: String(value) } },
    h("span", { class: "progress", role: "progressbar", "aria-valuenow": String(width), "aria-valuemin": "0", "aria-valuemax": "100" },
      h("span", { style: "width:" + width + "%" })),
    h("span", { class: "progress-text" }, Math.round(value) + "%"));
}

export function sparkline(series) {
  const w = 4, gap = 1, height = 18;
  const max = Math.max(1, ...series.map(([c, f]) => c + f));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", String(series.length * (w + gap)));
  svg.setAttribute("height", String(height));
  series.forEach(([ok, bad], i) => {
    const okH = Math.round((ok / max) * height), badH = Math.round((bad / max) * height);
    for (const [cls, hh, y] of [["ok", okH, height - okH], ["bad", badH, height - okH - badH]]) {
      if (!hh) continue;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("class", cls);
      r.setAttribute("x", String(i * (w + gap)));
      r.setAttribute("y", String(y));
      r.setAttribute("width", String(w));
      r.setAttribute("height", String(hh));
      svg.append(r);
    }
  });
  const title = document.createElementNS(ns, "title");
  title.textContent = "completed / failed per minute, last " + series.length + " minutes";
  svg.append(title);
  return svg;
}

export function toast(message, isError) {
  const el = h("div", { class: "toast" + (isError ? " error" : ""), role: isError ? "alert" : "status" }, message);
  $("#toasts").append(el);
  setTimeout(() => el.remove(), isError ? 7000 : 3500);
}

export function banner(message, kind) {
  const el = $("#banner");
  if (!message) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.hidden = false;
  el.className = "banner" + (kind ? " " + kind : "");
  el.textContent = message;
}

export const enc = encodeURIComponent;

/** Navigate to a hash; the same hash again re-renders the view. */
export function go(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}
