// One job: payload, state, attempts, stalls, times, progress, result, failure with traceback, parent, children.

import { act, confirmDialog } from "./actions.js";
import { api, throttled } from "./api.js";
import { patchRow } from "./jobs.js";
import { $, EVENT_STATE, enc, fmt, go, h, progressBar, stateBadge, when } from "./ui.js";


export class JobView {
  constructor(id) {
    this.id = id;
    this.job = null;
    this.reload = throttled(() => this.load());
  }

  start(root) {
    this.root = root;
    root.replaceChildren(h("p", { class: "muted" }, "Loading " + this.id + "…"));
    this.reload.now();
  }

  stop() {
    this.stopped = true;
    this.reload.cancel();
  }

  async load() {
    try {
      this.job = await api("GET", "/api/v1/dashboard/jobs/" + enc(this.id));
    } catch (exc) {
      if (this.stopped) return;
      if (exc.status === 404) {
        this.job = null;
        this.root.replaceChildren(h("h1", {}, "Job not found"),
          h("p", { class: "muted", id: "job-missing" }, this.id + " is not in the registry: removed, or trimmed by retention (keep_completed / keep_failed)."),
          h("a", { href: "#/jobs" }, "All jobs"));
        return;
      }
      throw exc;
    }
    if (!this.stopped) this.render(this.job);
  }

  render(job) {
    const fact = (label, ...value) => h("div", {}, h("span", { class: "label" }, label), ...value);
    const duration = job.started_at && job.finished_at ? (job.finished_at - job.started_at).toFixed(3) + " s" : "–";
    const buttons = [];
    if (job.state === "failed") {
      buttons.push(h("button", { type: "button", class: "primary", id: "job-retry", onclick: (ev) =>
        act(ev.currentTarget, () => "Retrying " + job.id, () => api("POST", "/api/v1/jobs/" + enc(job.id) + "/retry")) }, "Retry"));
    }
    if (job.state === "delayed") {
      buttons.push(h("button", { type: "button", id: "job-promote", onclick: (ev) =>
        act(ev.currentTarget, () => "Promoted " + job.id, () => api("POST", "/api/v1/jobs/" + enc(job.id) + "/promote")) }, "Run now"));
    }
    if (job.state !== "active") {
      buttons.push(h("button", { type: "button", class: "danger", id: "job-remove", onclick: async (ev) => {
        const ok = await confirmDialog({ title: "Remove job " + job.id + "?", text: "Its record is deleted for good; a waiting or delayed job will not run.", ok: "Remove" });
        if (!ok) return;
        const done = await act(ev.currentTarget, () => "Removed " + job.id, () => api("DELETE", "/api/v1/jobs/" + enc(job.id)));
        if (done) go("#/jobs?" + new URLSearchParams({ name: job.name }));
      } }, "Remove"));
    }
    const sections = [
      h("div", { class: "detail-head" },
        h("h1", { id: "job-id" }, job.id),
        h("span", { id: "job-state" }, stateBadge(job.state)),
        h("a", { href: "#/jobs?" + new URLSearchParams({ name: job.name }) }, job.name),
        h("span", { class: "spacer" }),
        h("div", { class: "actions" }, buttons)),
      h("div", { id: "job-progress" }, "Progress ", progressBar(job.progress)),
      h("div", { class: "facts" },
        fact("attempts", h("span", { id: "job-attempts" }, job.attempts + " of " + job.max_attempts)),
        fact("stalls", job.stalls + " of at most " + job.max_stalls),
        fact("priority", job.priority === null ? "–" : String(job.priority)),
        fact("worker", job.worker || "–"),
        fact("created", when(job.created_at)),
        fact("started", when(job.started_at)),
        fact("finished", when(job.finished_at)),
        fact("run time", duration),
        job.run_at ? fact("due", when(job.run_at)) : null),
      h("h2", {}, "Payload"), h("pre", { id: "job-payload" }, JSON.stringify(job.payload, null, 2)),
    ];
    if (job.result !== null && job.result !== undefined) {
      sections.push(h("h2", {}, "Return value"), h("pre", { id: "job-result" }, JSON.stringify(job.result, null, 2)));
    }
    if (job.error) {
      sections.push(h("h2", {}, job.state === "failed" ? "Failure" : "Last failure"),
        h("pre", { id: "job-error", class: "traceback" }, job.error));
      if (job.traceback) sections.push(h("h2", {}, "Traceback"), h("pre", { id: "job-traceback", class: "traceback" }, job.traceback));
    }
    if (job.parent) {
      sections.push(h("h2", {}, "Parent"), h("p", { id: "job-parent" },
        h("a", { href: "#/job/" + enc(job.parent.id) }, job.parent.id), " ", job.parent.name, " ", stateBadge(job.parent.state)));
    } else if (job.parent_id) {
      sections.push(h("h2", {}, "Parent"), h("p", { id: "job-parent" }, job.parent_id, h("span", { class: "muted" }, " (no longer in the registry)")));
    }
    if (job.children_total) {
      const counts = {};
      for (const c of job.children_shown) counts[c.state] = (counts[c.state] || 0) + 1;
      sections.push(
        h("h2", {}, "Children (" + fmt(job.children_total) + ")"),
        h("p", { class: "muted" }, Object.entries(counts).map(([s, n]) => n + " " + s).join(" · ")
          + (job.children_total > job.children_shown.length ? " (of the first " + job.children_shown.length + ")" : "")),
        h("div", { class: "panel" }, h("table", { id: "job-children" },
          h("thead", {}, h("tr", {}, ["Id", "Job", "State", "Progress", "Error"].map((t) => h("th", {}, t)))),
          h("tbody", {}, job.children_shown.map((c) => h("tr", { dataset: { id: c.id, state: c.state } },
            h("td", { class: "id-cell" }, h("a", { href: "#/job/" + enc(c.id) }, c.id)),
            h("td", {}, c.name),
            h("td", { dataset: { cell: "state" } }, stateBadge(c.state)),
            h("td", { dataset: { cell: "progress" } }, progressBar(c.progress)),
            h("td", { class: "error-cell", title: c.error || "" }, c.error || "")))))));
    }
    this.root.replaceChildren(...sections);
  }

  onEvent(env) {
    if (!env.job) return;
    if (!this.job) {
      if (env.job.id === this.id) this.reload(); // opened before the job existed
      return;
    }
    const state = EVENT_STATE[env.event];
    if (env.job.id === this.id) {
      if (env.event === "job:progress") {
        $("#job-progress").replaceChildren("Progress ", progressBar(env.data.progress));
        return;
      }
      if (state) $("#job-state").replaceChildren(stateBadge(state));
      this.reload(); // the result, the error and the buttons come with the record
    } else if (this.job.children.includes(env.job.id) || env.job.id === this.job.parent_id) {
      const row = $('#job-children tr[data-id="' + CSS.escape(env.job.id) + '"]');
      if (row) patchRow(row, env, state);
      if (env.event !== "job:progress") this.reload();
    }
  }
}

