// Actions from buttons: confirmation where something is destroyed, the outcome as a toast, then a refresh.

import { api } from "./api.js";
import { $, CLEANABLE, enc, fmt, h, toast } from "./ui.js";

/** Run an action from a button: disable it meanwhile, report the outcome, refresh what it changed. */
export async function act(button, label, call) {
  if (button) button.disabled = true;
  try {
    const result = await call();
    toast(label(result));
    document.dispatchEvent(new CustomEvent("b3:changed")); // the app reloads what is on screen
    return result;
  } catch (exc) {
    toast(exc.status === 401 ? "Refused: this needs the token." : "Failed: " + exc.message, true);
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A modal confirmation; resolves to the dialog's form (for extra fields) or null when cancelled. */
export function confirmDialog({ title, text, ok, extra }) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text || "";
  const holder = $("#confirm-extra");
  holder.replaceChildren(...(extra ? [extra] : []));
  $("#confirm-ok").textContent = ok || "Confirm";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? holder : null), { once: true });
  });
}

export async function retryAllFailed(button, name, count) {
  const ok = await confirmDialog({
    title: "Retry every failed " + name + " job?",
    text: fmt(count) + " failed job(s) get a fresh set of attempts and run again.",
    ok: "Retry all",
  });
  if (!ok) return;
  await act(button, (r) => "Retried " + fmt(r.retried) + " " + r.name + " job(s)",
    () => api("POST", "/api/v1/queues/" + enc(name) + "/retry"));
}

export async function cleanQueue(button, name, state) {
  const extra = h("div", {},
    h("label", {}, "Records in state",
      h("select", { name: "state", id: "clean-state" }, CLEANABLE.map((s) => h("option", { value: s, selected: s === state }, s)))),
    h("label", {}, "Older than (minutes, 0 = all)",
      h("input", { type: "number", name: "age", id: "clean-age", min: "0", value: "0" })));
  const form = await confirmDialog({
    title: "Delete records of " + name + "?",
    text: "The records are deleted from the job registry for good. Active jobs are never touched.",
    ok: "Delete",
    extra,
  });
  if (!form) return;
  const chosen = $("#clean-state", form).value;
  const age = Math.max(0, Number($("#clean-age", form).value) || 0) * 60;
  await act(button, (r) => "Deleted " + fmt(r.removed) + " " + r.state + " record(s) of " + r.name,
    () => api("POST", "/api/v1/queues/" + enc(name) + "/clean", { state: chosen, age, limit: 100000 }));
}
