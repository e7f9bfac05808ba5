// The overview: every job name with its counts, throughput, schedule and actions; also the shared counts.

import { act, cleanQueue, retryAllFailed } from "./actions.js";
import { api, throttled } from "./api.js";
import { $, STATES, STATE_LABEL, enc, fmt, h, pct, rel, sparkline, stateBadge, when } from "./ui.js";

// -- the overview (always loaded: the header, the name list and the counts come from it) ----------

export const overview = {
  data: null,
  listeners: new Set(),
  async load() {
    const data = await api("GET", "/api/v1/dashboard/overview");
    overview.data = data;
    overview.byName = new Map(data.jobs.map((j) => [j.name, j]));
    const alive = data.consumers.length;
    const consumers = $("#consumers");
    consumers.textContent = "consumers: " + alive;
    consumers.title = data.consumers.map((c) => c.id + " (seen " + rel(c.seen_at) + ")").join("\n") || "no consumer heartbeat in the last 3 leases";
    consumers.dataset.alive = String(alive);
    for (const listener of overview.listeners) listener(data);
  },
};
overview.reload = throttled(overview.load);


export const timings = {};

export class OverviewView {
  constructor() {
    this.rows = new Map();
    this.onData = (data) => this.render(data);
  }

  start(root) {
    this.cards = h("div", { class: "cards", id: "cards" });
    this.body = h("tbody");
    root.replaceChildren(
      this.cards,
      h("div", { class: "panel" },
        h("table", { id: "overview-table" },
          h("thead", {}, h("tr", {},
            h("th", {}, "Job"), h("th", {}, "Status"),
            STATES.map((s) => h("th", { class: "num" }, STATE_LABEL[s] || s)),
            h("th", { class: "num", title: "completed + failed per minute, last 5 minutes" }, "per min"),
            h("th", {}, "last 15 min"),
            h("th", { class: "num", title: "failed / finished, last 5 minutes" }, "fail rate"),
            h("th", {}, "Schedule"),
            h("th", {}, "Actions"))),
          this.body)),
      h("p", { class: "muted", id: "overview-note" }));
    overview.listeners.add(this.onData);
    if (overview.data) this.render(overview.data);
  }

  stop() {
    overview.listeners.delete(this.onData);
  }

  render(data) {
    if (!timings.overviewShownMs) timings.overviewShownMs = performance.now(); // since navigation started
    const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
    let perMinute = 0, finished = 0, failed = 0;
    for (const job of data.jobs) {
      for (const s of STATES) totals[s] += job.counts[s];
      perMinute += job.throughput.per_minute;
      finished += job.throughput.completed + job.throughput.failed;
      failed += job.throughput.failed;
    }
    const card = (label, value, key) => h("div", { class: "card", dataset: { card: key } },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value));
    this.cards.replaceChildren(
      ...STATES.map((s) => card(STATE_LABEL[s] || s, fmt(totals[s]), s)),
      card("per minute", data.live ? perMinute.toFixed(1) : "–", "per-minute"),
      card("failure rate", data.live ? pct(finished ? failed / finished : null) : "–", "failure-rate"),
      card("consumers", fmt(data.consumers.length), "consumers"),
    );
    const seen = new Set();
    data.jobs.forEach((job, index) => {
      seen.add(job.name);
      const key = JSON.stringify(job) + data.live;
      const old = this.rows.get(job.name);
      if (old && old.key === key) return;
      const row = this.row(job, data.live);
      if (old) old.row.replaceWith(row);
      else this.body.insertBefore(row, this.body.children[index] || null);
      this.rows.set(job.name, { row, key });
    });
    for (const [name, { row }] of this.rows) {
      if (!seen.has(name)) {
        row.remove();
        this.rows.delete(name);
      }
    }
    $("#overview-note").textContent = data.live
      ? "Throughput counts jobs finished since this web process started receiving events (" + new Date(data.activity_since * 1000).toLocaleString() + "). Counts and totals come from the job store."
      : "This web process does not receive the bus, so throughput is not known; counts and totals come from the job store.";
  }

  row(job, live) {
    const list = (state) => "#/jobs?" + new URLSearchParams({ name: job.name, state });
    const status = [];
    if (job.paused) status.push(h("span", { class: "state badge-paused", dataset: { paused: "true" } }, "paused"));
    else status.push(h("span", { class: "muted", dataset: { paused: "false" } }, "running"));
    if (!job.declared) status.push(" ", h("span", { class: "muted", title: "the manifest no longer declares this job" }, "(undeclared)"));
    const t = job.throughput;
    return h("tr", { dataset: { job: job.name, paused: String(job.paused) } },
      h("td", {}, h("a", { href: "#/jobs?" + new URLSearchParams({ name: job.name }), title: job.description || "" }, job.name)),
      h("td", {}, status),
      STATES.map((s) => h("td", { class: "num count" + (job.counts[s] ? "" : " zero"), dataset: { count: s } },
        h("a", { href: list(s) }, fmt(job.counts[s])))),
      h("td", { class: "num", dataset: { throughput: "" } }, live ? t.per_minute.toFixed(1) : "–"),
      h("td", {}, live ? sparkline(t.series) : ""),
      h("td", { class: "num", title: t.completed + " completed, " + t.failed + " failed in the last " + Math.round(t.window_s) + " s" },
        live ? pct(t.failure_rate) : "–"),
      h("td", {}, this.schedule(job.cron)),
      h("td", {}, this.actions(job)));
  }

  schedule(cron) {
    if (!cron) return h("span", { class: "muted" }, "–");
    const last = cron.last_run
      ? [" · last ", when(cron.last_run), cron.last_run_state ? [" ", h("a", { href: "#/job/" + enc(cron.last_run_id) }, stateBadge(cron.last_run_state))] : ""]
      : " · never ran";
    return h("span", { dataset: { cron: cron.expression } },
      h("code", { title: "timezone " + cron.timezone + ", misfire " + cron.misfire }, cron.expression), " ",
      h("span", { class: "muted" }, cron.timezone), h("br"),
      cron.enabled ? ["next ", when(cron.next_run)] : h("span", { class: "muted" }, "disabled"), last);
  }

  actions(job) {
    const pause = h("button", {
      class: "small", type: "button", dataset: { action: job.paused ? "resume" : "pause" },
      onclick: (ev) => act(ev.currentTarget, (r) => r.name + (r.paused ? " paused" : " resumed"),
        () => api("POST", "/api/v1/queues/" + enc(job.name) + "/" + (job.paused ? "resume" : "pause"))),
    }, job.paused ? "Resume" : "Pause");
    const retry = h("button", {
      class: "small", type: "button", dataset: { action: "retry-failed" }, disabled: !job.counts.failed,
      onclick: (ev) => retryAllFailed(ev.currentTarget, job.name, job.counts.failed),
    }, "Retry failed");
    const clean = h("button", {
      class: "small danger", type: "button", dataset: { action: "clean" },
      onclick: (ev) => cleanQueue(ev.currentTarget, job.name, "completed"),
    }, "Clean…");
    return h("div", { class: "actions" }, job.declared ? [pause, retry, clean] : "");
  }
}
