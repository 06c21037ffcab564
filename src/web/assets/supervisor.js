// The supervisor's screen: live queues, agents, today's figures and the
// abandoned calls, each with a call-back button.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let queuesAt = Date.now(), queues = [], agents = [];

  const pct = (v) => v == null ? "–" : v.toFixed(1) + " %";
  function showFigures(f) {
    if (!f) return;
    $("fig-calls").textContent = f.calls;
    $("fig-answered").textContent = f.answered;
    $("fig-10s").textContent = pct(f.answered_10s_pct);
    $("fig-20s").textContent = pct(f.answered_20s_pct);
    $("fig-avg").textContent = f.avg_answer_s == null ? "–" : f.avg_answer_s.toFixed(1) + " dtk";
    $("fig-abandon").textContent = pct(f.abandoned_pct);
    $("fig-prank").textContent = pct(f.prank_pct);
    $("fig-ghost").textContent = pct(f.ghost_pct);
    loadAbandoned();
  }

  function render() {
    const since = Date.now() - queuesAt;
    const rows = [];
    for (const q of queues) {
      for (const w of q.waiting) {
        rows.push(`<tr class="waiting-row" data-call="${siaga.esc(w.call_id)}"><td>${siaga.esc(q.name)}</td><td class="position">${w.position}${w.urgent ? ' <span class="silent-flag">DARURAT DIAM (55)</span>' : ""}${w.low ? ' <span class="prank-flag">sering iseng</span>' : ""}</td><td class="wait">${siaga.duration(w.wait_ms + since)}</td><td>${siaga.esc(w.ringing_agent || "")}</td></tr>`);
      }
    }
    $("queues").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="4" class="muted">Tidak ada penelepon menunggu</td></tr>`;
    $("agents").tBodies[0].innerHTML = agents.map((a) =>
      `<tr class="agent-row" data-agent="${siaga.esc(a.id)}"><td>${siaga.esc(a.id)}</td><td>${siaga.esc(a.agency)}</td><td class="state">${siaga.esc(siaga.stateName(a))}${a.reason ? " (" + siaga.esc(siaga.reasonName(a.reason)) + ")" : ""}</td><td>${siaga.duration(a.in_state_ms + since)}</td><td>${a.browser ? "browser" : a.registered ? "terdaftar" : "—"}</td></tr>`).join("");
  }
  setInterval(render, 1000);

  // One row per number (the newest of its calls first): how often it
  // hung up, its service, the longest wait, and whether it got through
  // since; "Telepon balik" only where a trunk can place call-backs.
  let canCallBack = null;
  async function loadAbandoned() {
    if (canCallBack === null) {
      canCallBack = await siaga.api("GET", "/api/meta").then((m) => !!m.callbacks).catch(() => null);
    }
    const list = await siaga.api("GET", "/api/abandoned?limit=200").catch(() => []);
    const groups = new Map();
    for (const c of list) {
      const key = c.caller_number || "id:" + c.id;
      const g = groups.get(key);
      if (g) {
        g.count++;
        g.wait = Math.max(g.wait, c.wait_ms || 0);
      } else {
        groups.set(key, { last: c, count: 1, wait: c.wait_ms || 0 });
      }
    }
    $("abandoned").tBodies[0].innerHTML = [...groups.values()].slice(0, 50).map(({ last: c, count, wait }) => {
      const through = c.got_through_at != null;
      const act = through
        ? `<span class="muted">sudah tersambung ${siaga.datetime(c.got_through_at)}</span>`
        : c.caller_number && canCallBack
          ? `<button type="button" class="callback-btn" data-call="${siaga.esc(c.id)}">Telepon balik</button>`
          : "";
      return `<tr class="abandoned-row${through ? " got-through" : ""}" data-call="${siaga.esc(c.id)}"><td>${siaga.datetime(c.arrived_at)}</td><td>${siaga.esc(c.caller_number || "tidak diketahui")}${count > 1 ? ` <span class="count">(${count}×)</span>` : ""}</td><td>${siaga.esc(c.service)}</td><td>${siaga.duration(wait)}</td><td>${act}</td></tr>`;
    }).join("") || `<tr><td colspan="5" class="muted">Tidak ada</td></tr>`;
  }

  async function loadPranks() {
    const list = await siaga.api("GET", "/api/pranks").catch(() => []);
    $("pranks").tBodies[0].innerHTML = list.map((p) =>
      `<tr class="prank-row" data-number="${siaga.esc(p.number)}"><td>${siaga.esc(p.number)}</td><td>${p.pranks}×</td><td><button type="button" class="clear-prank-btn" data-number="${siaga.esc(p.number)}">Hapus tanda</button></td></tr>`).join("")
      || `<tr><td colspan="3" class="muted">Tidak ada</td></tr>`;
  }
  loadPranks();
  setInterval(loadPranks, 30000);
  $("pranks").addEventListener("click", async (e) => {
    const b = e.target.closest(".clear-prank-btn");
    if (!b) return;
    b.disabled = true;
    try {
      await siaga.api("POST", "/api/pranks/clear", { number: b.dataset.number });
      $("prank-msg").textContent = `Tanda sering iseng untuk ${b.dataset.number} dihapus.`;
      loadPranks();
    } catch (err) {
      $("prank-msg").textContent = "Gagal menghapus tanda: " + err.message;
      b.disabled = false;
    }
  });

  $("abandoned").addEventListener("click", async (e) => {
    const b = e.target.closest(".callback-btn");
    if (!b) return;
    b.disabled = true;
    try {
      await siaga.api("POST", `/api/calls/${encodeURIComponent(b.dataset.call)}/callback`, {});
      $("callback-msg").textContent = "Panggilan balik sedang dilakukan.";
    } catch (err) {
      $("callback-msg").textContent = "Gagal menelepon balik: " + err.message;
      b.disabled = false;
    }
  });

  siaga.live((ev) => {
    if (ev.type === "snapshot" || ev.type === "queues") {
      queues = ev.queues; agents = ev.agents; queuesAt = Date.now();
      render();
      if (ev.type === "snapshot") {
        if (ev.figures) showFigures(ev.figures);
        else siaga.api("GET", "/api/stats/today").then(showFigures).catch(() => {});
      }
    } else if (ev.type === "figures") {
      showFigures(ev);
    }
  });
})();
