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
      // People read the code's Indonesian text; the server's English
      // reason is for whoever troubleshoots (the console, the server log).
      const e = new Error(siaga.errorText(data.code, r.status, data.error));
      e.status = r.status;
      e.code = data.code;
      e.detail = data.error;
      if (data.error) console.warn(`${method} ${path}: ${r.status} ${data.code}: ${data.error}`);
      throw e;
    }
    return data;
  },

  // The server's error codes (web::ApiError), in words.
  errors: {
    not_found: "Data tidak ditemukan (mungkin sudah dihapus atau digabung).",
    database_unavailable: "Basis data sedang tidak dapat dihubungi; panggilan tetap diterima. Coba lagi sebentar lagi.",
    login_required: "Silakan masuk lagi.",
    forbidden: "Peran Anda tidak diizinkan melakukan ini.",
    unknown_category: "Kategori tidak dikenal.",
    bad_priority: "Prioritas harus 1 sampai 4.",
    unknown_agency: "Instansi tidak dikenal.",
    status_not_allowed: "Status itu tidak dapat dipilih di sini.",
    too_long: "Isian terlalu panjang.",
    incident_merged: "Insiden ini sudah digabung ke insiden lain; ubah insiden tujuannya.",
    incident_not_open: "Insiden itu sudah selesai atau digabung; pilih insiden yang masih terbuka.",
    bad_state: "Status petugas tidak dikenal.",
    no_phone: "belum ada telepon: nyalakan telepon browser atau daftarkan telepon meja",
    agent_busy: "Petugas sedang dalam panggilan; ubah status setelah panggilan selesai.",
    agent_state_refused: "Status petugas tidak dapat diubah sekarang.",
    callbacks_off: "Telepon balik tidak aktif di pusat ini.",
    callback_refused: "Telepon balik tidak dapat dilakukan sekarang; hubungi admin (alasannya ada di log server).",
    user_exists: "Nama pengguna itu sudah ada.",
    self_disable: "Anda tidak dapat menonaktifkan akun sendiri.",
    bad_user: "Data pengguna tidak valid.",
    bad_password: "Kata sandi tidak memenuhi syarat.",
    calls_off: "Layanan panggilan sedang tidak berjalan.",
    unknown_agent: "Petugas tidak dikenal.",
    agent_other_agency: "Petugas itu bekerja untuk instansi lain.",
    transfer_target_missing: "Pilih instansi atau petugas tujuan.",
    transfer_refused: "Pengalihan tidak dapat dimulai sekarang.",
    transfer_action_refused: "Langkah pengalihan itu tidak dapat dilakukan sekarang.",
  },
  errorText(code, status, detail) {
    if (code && siaga.errors[code]) return siaga.errors[code];
    // Messages the server already writes in Indonesian (login brakes).
    if (code === "too_many_logins" || code === "login_busy") return detail;
    return code ? `Permintaan ditolak server (kode ${code}).` : `Server tidak menjawab dengan benar (HTTP ${status}).`;
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

  // Every moment in the center's zone (the page's data-utc-offset, from
  // the server's config), never the browser's: `03-12-2026 20:14:18 WIB`,
  // as the server's pages write it (web::pages::local_time).
  zoned(ms) {
    const offset = Number(document.body.dataset.utcOffset || 0);
    const d = new Date(ms + offset * 3600000);
    const p = (n) => String(n).padStart(2, "0");
    return {
      date: `${p(d.getUTCDate())}-${p(d.getUTCMonth() + 1)}-${d.getUTCFullYear()}`,
      time: `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`,
      zone: document.body.dataset.zone || "UTC",
    };
  },
  datetime(ms) {
    const z = siaga.zoned(ms);
    return `${z.date} ${z.time} ${z.zone}`;
  },
  time(ms) {
    const z = siaga.zoned(ms);
    return `${z.time} ${z.zone}`;
  },

  // Whether keys pressed in `el` are someone typing (a text field), not
  // a command.
  typing(el) {
    return !!el && (el.tagName === "TEXTAREA"
      || (el.tagName === "INPUT" && !["button", "submit", "checkbox", "radio"].includes(el.type)));
  },

  // An incident's status, as the server's list names it (store::STATUSES).
  statusName(st) {
    return ({
      new: "Baru", received: "Diterima", unit_sent: "Unit dikirim", on_scene: "Di lokasi",
      closed: "Selesai", merged: "Digabung",
    })[st] || st;
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
