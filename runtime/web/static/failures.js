// Failed jobs grouped by reason, so one bad deploy is one row; each group can be retried at once.

import { act, confirmDialog } from "./actions.js";
import { api, throttled } from "./api.js";
import { enc, fmt, h, when } from "./ui.js";


export class FailuresView {
  constructor(params) {
    this.name = params.get("name") || "";
    this.reload = throttled(() => this.load(), 1000);
  }

  start(root) {
    this.body = h("tbody");
    this.note = h("p", { class: "muted", id: "failures-note" });
    root.replaceChildren(
      h("h1", {}, "Failed jobs by reason", this.name ? " · " + this.name : ""),
      h("p", { class: "muted" }, "One row per job and reason (long numbers and ids masked), the biggest first."),
      h("div", { class: "panel" }, h("table", { id: "failures-table" },
        h("thead", {}, h("tr", {}, ["Job", "Reason", "Count", "Latest", "First", "Jobs", ""].map((t) => h("th", {}, t)))),
        this.body)),
      this.note);
    this.reload.now();
  }

  stop() {
    this.stopped = true;
    this.reload.cancel();
  }

  async load() {
    const query = this.name ? "?" + new URLSearchParams({ name: this.name }) : "";
    const data = await api("GET", "/api/v1/dashboard/failures" + query);
    if (this.stopped) return;
    if (!data.groups.length) {
      this.body.replaceChildren(h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No failed jobs.")));
    } else {
      this.body.replaceChildren(...data.groups.map((g) => h("tr", { dataset: { name: g.name, reason: g.reason } },
        h("td", {}, h("a", { href: "#/jobs?" + new URLSearchParams({ name: g.name, state: "failed" }) }, g.name)),
        h("td", { class: "error-cell", title: g.example }, g.reason),
        h("td", { class: "num", dataset: { cell: "count" } }, fmt(g.count)),
        h("td", {}, when(g.last_at)),
        h("td", {}, when(g.first_at)),
        h("td", { class: "id-cell" }, g.job_ids.slice(0, 3).map((id, i) => [i ? ", " : "", h("a", { href: "#/job/" + enc(id) }, id.slice(0, 12))]),
          g.count > 3 ? " …" : ""),
        h("td", {}, h("button", { type: "button", class: "small", dataset: { action: "retry-group" }, onclick: async (ev) => {
          const ok = await confirmDialog({ title: "Retry " + fmt(g.count) + " failed " + g.name + " job(s)?", text: "Reason: " + g.reason, ok: "Retry" });
          if (ok) {
            await act(ev.currentTarget, (r) => "Retried " + fmt(r.retried) + " job(s)",
              () => api("POST", "/api/v1/dashboard/failures/retry", { name: g.name, reason: g.reason }));
          }
        } }, "Retry")))));
    }
    this.note.textContent = "Examined " + fmt(data.scanned) + " failed record(s)" + (data.truncated ? " (stopped early: more remain)." : ".");
  }

  onEvent(env) {
    if (env.event === "job:failed" || env.event === "job:waiting") this.reload();
  }
}

