// Live updates over /ws: auth by first message, subscribe, resume by the last event id after a drop (on
// this web node or another behind a load balancer), each event handled once, reload on a gap.

import { config, token } from "./api.js";
import { $, banner } from "./ui.js";


export const live = {
  // Set by the app: what to do with each event, and how to reload everything after a gap.
  handlers: { event: () => {}, resync: () => {} },
  ws: null,
  lastSeq: null,
  lastId: null, // the resume point: ids are the same on every web node, seq is not
  recent: [], // ids handled last (newest last): sent as `seen`, and events already handled are dropped
  recentIds: new Set(),
  replayLeft: 0,
  replayEndId: null,
  attempt: 0,
  timer: null,
  lostAt: null,
  subscriptions: 0,
  lastSubscribe: null,
  lastSubscribed: null,

  status(name, text) {
    const el = $("#conn");
    el.dataset.status = name;
    el.textContent = text;
  },

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    const ws = new WebSocket(url);
    this.ws = ws;
    this.status(this.lostAt ? "reconnecting" : "connecting", this.lostAt ? "reconnecting…" : "connecting…");
    ws.onopen = () => {
      const secret = token.get();
      ws.sentToken = secret;
      if (secret) ws.send(JSON.stringify({ op: "auth", token: secret })); // browsers cannot set headers on a websocket
      const message = { op: "subscribe", events: ["job:*", "queue:*"] };
      if (this.lastId !== null) {
        message.after = this.lastId;
        message.seen = this.recent.slice(-1000);
      }
      this.lastSubscribe = message;
      ws.send(JSON.stringify(message));
    };
    ws.onmessage = (msg) => {
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch (exc) {
        return;
      }
      if (Array.isArray(data)) data.forEach((env) => this.onEnvelope(env));
      else if ("op" in data) this.onControl(data);
      else this.onEnvelope(data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return; // replaced on purpose
      this.ws = null;
      if (ev.code === 4401) {
        if (ws.sentToken !== token.get()) return this.restart(); // the token changed meanwhile
        this.status("unauthorized", "live: needs token");
        banner("Live updates were refused: this b3-jobs needs its token.");
        token.ask(token.get() ? "The token was refused for live updates. Enter the right one (B3JOBS_TOKEN)."
          : "Live updates need the token (B3JOBS_TOKEN).");
        return;
      }
      this.lost(ev.code === 4408 ? "the connection was too slow" : "the connection was lost");
    };
  },

  lost(why) {
    if (!this.lostAt) this.lostAt = Date.now();
    const delays = config.reconnectDelaysMs;
    const delay = delays[Math.min(this.attempt, delays.length - 1)];
    this.attempt += 1;
    this.status("offline", "offline");
    banner("Live updates stopped at " + new Date(this.lostAt).toLocaleTimeString() + ": " + why
      + ". Reconnecting in " + (delay / 1000).toFixed(1) + " s (attempt " + this.attempt + "); what you see may be out of date.");
    this.timer = setTimeout(() => this.connect(), delay);
  },

  restart() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close(1000, "token changed");
    this.attempt = 0;
    this.connect();
  },

  onControl(msg) {
    if (msg.op === "subscribed") {
      this.subscriptions += 1;
      this.lastSubscribed = msg;
      this.lastSeq = msg.seq;
      this.replayLeft = msg.replay || 0;
      this.replayEndId = msg.last_id;
      if (!this.replayLeft && msg.last_id) this.lastId = msg.last_id;
      this.status("live", "live");
      if (this.lostAt) {
        const away = ((Date.now() - this.lostAt) / 1000).toFixed(1);
        banner("Live again after " + away + " s; " + msg.replay + " missed event(s) replayed.", "info");
        setTimeout(() => { if (this.ws && !this.lostAt) banner(null); }, 4000);
        this.lostAt = null;
        this.attempt = 0;
        this.handlers.resync();
      }
    } else if (msg.op === "gap") {
      // The relay no longer holds what we missed (it restarted, or moved on): reload from the API.
      this.lastSeq = msg.latest; // lastId is already the `subscribed` position
      banner("Some events were missed while disconnected; the page was reloaded from the registry.", "info");
      setTimeout(() => banner(null), 5000);
      this.handlers.resync();
    } else if (msg.op === "error") {
      console.warn("relay:", msg.code, msg.message);
    }
  },

  onEnvelope(env) {
    if (this.replayLeft > 0) {
      // Replayed events may include a short overlap older than lastId; the position moves on once
      // the replay is complete, to the node's `subscribed` position.
      this.replayLeft -= 1;
      if (!this.replayLeft && this.replayEndId) this.lastId = this.replayEndId;
    } else if (typeof env.seq === "number" && env.seq > (this.lastSeq || 0)) {
      this.lastSeq = env.seq;
      this.lastId = env.id;
    }
    if (this.recentIds.has(env.id)) return; // handled already (a resume's overlap)
    this.recent.push(env.id);
    this.recentIds.add(env.id);
    if (this.recent.length > 5000) this.recentIds.delete(this.recent.shift());
    this.handlers.event(env);
  },
};

