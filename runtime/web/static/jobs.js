// Job lists by state and name, newest first, a page at a time; search by id, payload field or word.

import { act, cleanQueue, retryAllFailed } from "./actions.js";
import { api, throttled } from "./api.js";
import { overview } from "./overview.js";
import { $, CLEANABLE, EVENT_STATE, PAGE, STATES, enc, fmt, go, h, progressBar, stateBadge, when } from "./ui.js";


const searchTrails = new Map(); // "q|name|state" -> offsets of the pages before this one

export class JobsView {
  constructor(params) {
    this.name = params.get("name") || "";
    this.state = params.get("state") || "";
    this.q = (params.get("q") || "").trim();
    this.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    this.rows = new Map();
    this.reload = throttled(() => this.load());
    this.onData = () => this.renderTabs();
  }

  href(changes) {
    const p = { name: this.name, state: this.state, q: this.q, offset: this.offset, ...changes };
    const clean = Object.fromEntries(Object.entries(p).filter(([, v]) => v !== "" && v !== 0 && v !== null && v !== undefined));
    return "#/jobs?" + new URLSearchParams(clean);
  }

  start(root) {
    const names = overview.data ? overview.data.jobs.map((j) => j.name) : [];
    if (this.name && !names.includes(this.name)) names.push(this.name);
    const select = h("select", { id: "name-filter", "aria-label": "job name", onchange: (ev) => go(this.href({ name: ev.target.value, offset: 0 })) },
      h("option", { value: "" }, "all jobs"),
      names.map((n) => h("option", { value: n, selected: n === this.name }, n)));
    const search = h("input", {
      type: "search", id: "search", value: this.q, "aria-label": "search",
      placeholder: "id, field=value (user=42), or a word",
    });
    const form = h("form", { class: "toolbar", id: "search-form", onsubmit: (ev) => {
      ev.preventDefault();
      go(this.href({ q: search.value.trim(), offset: 0 }));
    } }, select, search, h("button", { type: "submit" }, "Search"),
    this.q ? h("a", { href: this.href({ q: "", offset: 0 }) }, "clear search") : "");
    this.tabs = h("div", { class: "tabs", id: "state-tabs" });
    this.bulk = h("div", { class: "actions" });
    this.body = h("tbody");
    this.pager = h("div", { class: "pager" });
    this.note = h("p", { class: "muted", id: "list-note" });
    root.replaceChildren(
      h("h1", {}, this.name ? this.name + " jobs" : "Jobs", this.q ? h("span", { class: "muted" }, " matching “" + this.q + "”") : ""),
      form,
      h("div", { class: "toolbar" }, this.tabs, h("span", { class: "spacer" }), this.bulk),
      h("div", { class: "panel" },
        h("table", { id: "jobs-table" },
          h("thead", {}, h("tr", {},
            ["Id", "Job", "State", "Progress", "Attempts", "Created", "Started", "Finished", "Error"].map((t) => h("th", {}, t)))),
          this.body)),
      this.pager, this.note);
    overview.listeners.add(this.onData);
    this.renderTabs();
    this.reload.now();
  }

  stop() {
    this.stopped = true;
    this.reload.cancel();
    overview.listeners.delete(this.onData);
  }

  renderTabs() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    const job = this.name && overview.byName ? overview.byName.get(this.name) : null;
    for (const j of overview.data ? overview.data.jobs : []) {
      if (this.name && j.name !== this.name) continue;
      for (const s of STATES) counts[s] += j.counts[s];
    }
    const all = STATES.reduce((n, s) => n + counts[s], 0);
    const tab = (state, label, n) => h("a", {
      href: this.href({ state, offset: 0 }), class: state === this.state ? "current" : "", dataset: { tab: state || "all" },
    }, label, h("span", { class: "n" }, fmt(n)));
    this.tabs.replaceChildren(tab("", "all", all), ...STATES.map((s) => tab(s, s, counts[s])));
    const buttons = [];
    if (job && job.declared) {
      buttons.push(h("button", {
        type: "button", dataset: { action: job.paused ? "resume" : "pause" },
        onclick: (ev) => act(ev.currentTarget, (r) => r.name + (r.paused ? " paused" : " resumed"),
          () => api("POST", "/api/v1/queues/" + enc(job.name) + "/" + (job.paused ? "resume" : "pause"))),
      }, job.paused ? "Resume " + job.name : "Pause " + job.name));
      if (job.paused) buttons.unshift(h("span", { class: "state badge-paused" }, "paused"));
      if (this.state === "failed" || !this.state) {
        buttons.push(h("button", {
          type: "button", dataset: { action: "retry-failed" }, disabled: !job.counts.failed,
          onclick: (ev) => retryAllFailed(ev.currentTarget, job.name, job.counts.failed),
        }, "Retry all failed (" + fmt(job.counts.failed) + ")"));
      }
      buttons.push(h("button", {
        type: "button", class: "danger", dataset: { action: "clean" },
        onclick: (ev) => cleanQueue(ev.currentTarget, job.name, CLEANABLE.includes(this.state) ? this.state : "completed"),
      }, "Clean…"));
    }
    this.bulk.replaceChildren(...buttons);
  }

  async load() {
    let jobs, next = null;
    if (this.q) {
      const params = { q: this.q, offset: this.offset, limit: PAGE };
      if (this.name) params.name = this.name;
      if (this.state) params.state = this.state;
      const data = await api("GET", "/api/v1/dashboard/search?" + new URLSearchParams(params));
      if (this.stopped) return;
      jobs = data.jobs;
      next = data.next_offset;
      this.note.textContent = "Examined " + fmt(data.scanned) + " record(s) from position " + fmt(data.offset)
        + (next === null ? "; that was all of them." : "; more remain.");
    } else {
      const params = { offset: this.offset, limit: PAGE };
      if (this.name) params.name = this.name;
      if (this.state) params.state = this.state;
      const data = await api("GET", "/api/v1/jobs?" + new URLSearchParams(params));
      if (this.stopped) return;
      jobs = data.jobs;
      next = jobs.length === PAGE ? this.offset + PAGE : null;
      this.note.textContent = "Newest first (by when each job entered its state); " + PAGE + " per page.";
    }
    this.renderRows(jobs);
    this.renderPager(jobs.length, next);
  }

  renderRows(jobs) {
    const rows = new Map();
    const fresh = jobs.map((job) => {
      const old = this.rows.get(job.id);
      const row = jobRow(job);
      if (old && old.dataset.state !== job.state) row.classList.add("flash");
      rows.set(job.id, row);
      return row;
    });
    this.rows = rows;
    if (!fresh.length) {
      this.body.replaceChildren(h("tr", {}, h("td", { colspan: "9", class: "muted", id: "no-jobs" },
        this.q ? "No match in the records examined." : "No jobs here.")));
    } else {
      this.body.replaceChildren(...fresh);
    }
  }

  renderPager(count, next) {
    const key = [this.q, this.name, this.state].join("|");
    const first = this.offset === 0;
    let back = null;
    if (!first) {
      if (this.q) {
        const trail = searchTrails.get(key) || [];
        back = this.href({ offset: trail.length ? trail[trail.length - 1] : 0 });
      } else {
        back = this.href({ offset: Math.max(0, this.offset - PAGE) });
      }
    }
    const newer = h("button", { type: "button", id: "page-newer", disabled: first, onclick: () => {
      if (this.q) {
        const trail = searchTrails.get(key) || [];
        trail.pop();
        searchTrails.set(key, trail);
      }
      go(back);
    } }, "← Newer");
    const older = h("button", { type: "button", id: "page-older", disabled: next === null, onclick: () => {
      if (this.q) searchTrails.set(key, [...(searchTrails.get(key) || []), this.offset]);
      go(this.href({ offset: next }));
    } }, this.q ? "More matches →" : "Older →");
    const label = this.q ? count + " match(es)" : count ? "jobs " + fmt(this.offset + 1) + "–" + fmt(this.offset + count) : "";
    this.pager.replaceChildren(newer, older, h("span", { class: "muted", id: "page-label" }, label));
  }

  matches(state, name) {
    return (!this.name || this.name === name) && (!this.state || this.state === state);
  }

  onEvent(env) {
    const row = env.job && this.rows.get(env.job.id);
    const state = EVENT_STATE[env.event];
    if (row) {
      patchRow(row, env, state);
      if (state && !this.matches(state, env.job.name)) row.classList.add("gone");
    }
    if (env.event === "job:progress" || this.q) return; // search pages change only when asked
    // On the first page a job entering a matching state moves to the top; later pages hold still.
    if (state && env.job && this.offset === 0 && (row || this.matches(state, env.job.name))) this.reload();
    else if (row && state && !this.matches(state, env.job.name)) this.reload();
  }
}

export function jobRow(job) {
  return h("tr", { dataset: { id: job.id, state: job.state, name: job.name } },
    h("td", { class: "id-cell" }, h("a", { href: "#/job/" + enc(job.id), title: job.id }, job.id)),
    h("td", {}, job.name),
    h("td", { dataset: { cell: "state" } }, stateBadge(job.state)),
    h("td", { dataset: { cell: "progress" } }, progressBar(job.progress)),
    h("td", { class: "num", dataset: { cell: "attempts" } }, job.attempts + "/" + job.max_attempts),
    h("td", {}, when(job.created_at)),
    h("td", { dataset: { cell: "started" } }, when(job.started_at)),
    h("td", { dataset: { cell: "finished" } }, when(job.finished_at)),
    h("td", { class: "error-cell", title: job.error || "" }, job.error ? job.error.split("\n")[0] : ""));
}

/** Apply one event to a row on screen, before (and whether or not) the reload comes. */
export function patchRow(row, env, state) {
  if (env.event === "job:progress") {
    $("[data-cell=progress]", row).replaceChildren(progressBar(env.data.progress));
    return;
  }
  if (!state) return;
  if (row.dataset.state !== state) {
    row.dataset.state = state;
    $("[data-cell=state]", row).replaceChildren(stateBadge(state));
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }
  if (state === "active") {
    $("[data-cell=started]", row).replaceChildren(when(env.ts));
    if (env.data.attempt) $("[data-cell=attempts]", row).textContent = env.data.attempt + "/" + row.querySelector("[data-cell=attempts]").textContent.split("/")[1];
  }
  if (state === "completed" || state === "failed") {
    $("[data-cell=finished]", row).replaceChildren(when(env.ts));
  }
}

