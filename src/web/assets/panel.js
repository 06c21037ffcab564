// Shared by every panel page: the API, the live socket, small helpers.
"use strict";

const siaga = {
  async api(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
      throw new Error("not logged in");
    }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error(data.error || ("HTTP " + r.status));
      e.status = r.status;
      throw e;
    }
    return data;
  },

  // Opens the live socket and hands every event to `onEvent` (and to
  // whoever called `siaga.listen`); reconnects after a drop, and the
  // server starts each connection with a snapshot.
  live(onEvent) {
    let delay = 500;
    const connect = () => {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(proto + "//" + location.host + "/api/live");
      ws.onopen = () => {
        delay = 500;
        siaga.socket = ws;
        document.body.dataset.live = "on";
        siaga.openHooks.forEach((f) => f());
      };
      ws.onmessage = (m) => {
        const ev = JSON.parse(m.data);
        if (ev.type === "logged_out") { location.href = "/login"; return; }
        onEvent(ev);
        siaga.listeners.forEach((f) => f(ev));
      };
      ws.onclose = () => {
        if (siaga.socket === ws) siaga.socket = null;
        document.body.dataset.live = "off";
        siaga.closeHooks.forEach((f) => f());
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    };
    connect();
  },

  socket: null,
  listeners: [],
  openHooks: [],
  closeHooks: [],
  // Another part of the page hears the live events too.
  listen(f) { siaga.listeners.push(f); },
  // Sends on the live socket; false when it is down.
  send(msg) {
    if (!siaga.socket || siaga.socket.readyState !== WebSocket.OPEN) return false;
    siaga.socket.send(JSON.stringify(msg));
    return true;
  },

  esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  },

  // m:ss or h:mm:ss
  duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
  },

  time(ms) {
    return new Date(ms).toLocaleTimeString("id-ID", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  },

  // Why an agent is not ready, in words (the codes the server uses).
  reasonName(r) {
    return ({ no_answer: "tidak menjawab", "break": "istirahat", istirahat: "istirahat" })[r] || r;
  },

  stateName(a) {
    return ({
      logged_out: "Keluar", ready: "Siap", ringing: "Berdering", on_call: "Bicara",
      wrap_up: "Menyelesaikan", not_ready: "Istirahat",
    })[a.state] || a.state;
  },
};

document.addEventListener("DOMContentLoaded", () => {
  const out = document.getElementById("logout");
  // During a call (the browser phone's), a second click within 5 s logs
  // out: the first says what it would cut.
  let armed = null;
  if (out) out.addEventListener("click", async () => {
    if (siaga.busy && siaga.busy() && !armed) {
      out.textContent = "Keluar? Panggilan akan terputus — klik lagi";
      armed = setTimeout(() => { armed = null; out.textContent = "Keluar"; }, 5000);
      return;
    }
    await siaga.api("POST", "/api/logout", {}).catch(() => {});
    location.href = "/login";
  });
});
