// The call-taker's screen: the incident opens by itself when a call is
// bridged to this user's agent (live socket), with a running call timer.
// Every edit saves itself a second after the last keystroke or choice, and
// before the card closes or the incident changes; an edit that could not
// be saved stays on screen, with the reason, and the card stays open.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const agentEl = $("agent-id");
  const me = agentEl ? agentEl.dataset.agent : null;
  let current = null; // { call_id, incident_id, bridged_at, ended_at }

  const setField = (id, v) => { $(id).value = v == null ? "" : String(v); };

  const fields = ["f-category", "f-priority", "f-address", "f-notes", "f-agency"];
  let dirty = false; // edits on screen not yet saved
  let saving = null; // the save in flight
  let saveTimer = null;

  function edited() {
    dirty = true;
    $("saved-msg").textContent = "Belum tersimpan…";
    clearTimeout(saveTimer);
    saveTimer = setTimeout(save, 1000);
  }
  for (const id of fields) {
    $(id).addEventListener("input", edited);
    $(id).addEventListener("change", edited);
  }

  // Saves what is on screen to the incident shown, with `extra` fields
  // (a status); true once saved (or nothing to save).
  async function save(extra) {
    clearTimeout(saveTimer);
    while (saving) await saving.catch(() => {});
    if (!dirty) return true;
    if (!current || !current.incident_id) {
      $("saved-msg").textContent = "Insiden belum dimuat: perubahan disimpan begitu dimuat";
      return false;
    }
    const p = $("f-priority").value;
    const body = {
      category: $("f-category").value,
      priority: p ? Number(p) : undefined,
      address: $("f-address").value,
      notes: $("f-notes").value,
      agency: $("f-agency").value,
      ...(extra || {}),
    };
    dirty = false;
    saving = siaga.api("PATCH", "/api/incidents/" + encodeURIComponent(current.incident_id), body);
    try {
      await saving;
      if (!dirty) $("saved-msg").textContent = "Tersimpan " + siaga.time(Date.now());
      return true;
    } catch (err) {
      dirty = true;
      $("saved-msg").textContent = "Gagal menyimpan: " + err.message + " — perubahan masih di layar";
      return false;
    } finally {
      saving = null;
    }
  }

  async function loadIncident(id) {
    const d = await siaga.api("GET", "/api/incidents/" + encodeURIComponent(id));
    current.incident_id = d.id;
    $("incident-link").textContent = d.id.slice(0, 8);
    $("incident-link").href = "/incidents/" + d.id;
    // What was typed while the incident loaded is kept, and saved to it.
    if (dirty) {
      save();
    } else {
      setField("f-category", d.category);
      setField("f-priority", d.priority);
      setField("f-address", d.address);
      setField("f-notes", d.notes);
      setField("f-agency", d.agency);
    }
    $("repeat").textContent = d.recent_incidents > 0
      ? `${d.recent_incidents} insiden dari nomor ini dalam 24 jam` : "";
    $("history").innerHTML = d.history.length
      ? d.history.map((h) => `<li><a href="/incidents/${siaga.esc(h.id)}">${siaga.datetime(h.created_at)}</a> — ${siaga.esc(categoryName(h.category))} — ${siaga.esc(siaga.statusName(h.status))}</li>`).join("")
      : "<li class=\"muted\">Tidak ada</li>";
    // What this call may be merged into: open incidents of the same
    // service that are not noise, newest first; none chosen until the
    // call-taker chooses, and asked again before merging.
    const open = await siaga.api("GET", "/api/incidents/open");
    const candidates = open
      .filter((o) => o.id !== d.id && o.service === d.service && !noise(o.category))
      .sort((a, b) => b.created_at - a.created_at);
    $("f-link").innerHTML = `<option value="">— pilih insiden —</option>` + candidates.map((o) =>
      `<option value="${siaga.esc(o.id)}">${siaga.esc(incidentLabel(o))}</option>`).join("");
    $("link-confirm").hidden = true;
  }

  // The categories' names, as the form's list has them.
  const categoryName = (c) => {
    const opt = c && [...$("f-category").options].find((o) => o.value === c);
    return opt ? opt.textContent : "tanpa kategori";
  };
  // The kinds of call that are not an emergency (the dispositions but
  // Darurat); all but a silent caller are noise, never merged into.
  const notEmergency = ["information", "prank", "ghost", "silent", "wrong_number", "test"];
  const noise = (c) => c !== "silent" && notEmergency.includes(c);
  const incidentLabel = (o) =>
    `${siaga.time(o.created_at)} — ${categoryName(o.category)} — ${o.address || o.location_text || o.caller_number || "lokasi belum diisi"}`;

  async function openCall(b) {
    if (current && current.call_id === b.call_id) return;
    // The previous call's edits go to its incident before the card is
    // the new call's.
    if (current && dirty) await save();
    dirty = false;
    current = {
      call_id: b.call_id, incident_id: b.incident_id, bridged_at: b.bridged_at, ended_at: null,
      // Since when the caller has said nothing (null while they speak).
      quiet_since: b.speaking ? null : Date.now(),
    };
    $("call-silent").hidden = !b.silent_emergency;
    $("call-prank").hidden = !b.pranks;
    $("call-prank").textContent = b.pranks ? `SERING ISENG: ${b.pranks}× iseng akhir-akhir ini` : "";
    $("idle").hidden = true;
    $("call-card").hidden = false;
    $("call-card").classList.add("flash");
    $("call-service").textContent = b.service;
    $("call-caller").textContent = b.caller_number || "nomor tidak diketahui";
    $("call-location").textContent = b.location
      || (b.latitude != null ? `${b.latitude.toFixed(5)}, ${b.longitude.toFixed(5)}` : "tidak diketahui");
    $("call-status").textContent = "";
    $("saved-msg").textContent = "";
    showTransfer(null);
    document.title = "Panggilan " + (b.caller_number || "") + " · siaga";
    // The call reaches the panel before its records reach the database
    // (calls never wait on it): while the incident is not there yet, ask
    // again, for as long as this call is the one shown.
    for (let tries = 0; ; tries++) {
      try {
        await loadIncident(b.incident_id);
        $("saved-msg").textContent = "";
        return;
      } catch (e) {
        const stillThisCall = current && current.call_id === b.call_id;
        if (e.status !== 404 || tries >= 120 || !stillThisCall) {
          if (stillThisCall) $("saved-msg").textContent = "Insiden belum dapat dimuat: " + e.message;
          return;
        }
        $("saved-msg").textContent = "Memuat insiden…";
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  function tick() {
    if (!current) return;
    const end = current.ended_at || Date.now();
    $("call-timer").textContent = siaga.duration(end - current.bridged_at);
    // "penelepon diam N dtk": a caller quiet for 3 s or more, while the
    // call lasts (a silent caller may be one who cannot speak).
    const quiet = current.quiet_since == null || current.ended_at ? 0 : Date.now() - current.quiet_since;
    $("caller-quiet").hidden = quiet < 3000;
    $("caller-quiet").textContent = `penelepon diam ${Math.floor(quiet / 1000)} dtk`;
  }
  setInterval(tick, 250);

  // The dispatchers of the agency chosen for a transfer, to name one.
  let lastAgents = [];
  function fillDispatchers() {
    const agency = $("t-agency").value;
    const chosen = $("t-agent").value;
    $("t-agent").innerHTML = `<option value="">siapa saja</option>` + lastAgents
      .filter((a) => agency && a.agency === agency)
      .map((a) => `<option value="${siaga.esc(a.id)}"${a.id === chosen ? " selected" : ""}>${siaga.esc(a.id)} — ${siaga.esc(siaga.stateName(a))}</option>`)
      .join("");
  }

  function showAgent(agents) {
    lastAgents = agents || [];
    if (document.activeElement !== $("t-agent")) fillDispatchers();
  }

  siaga.live((ev) => {
    if (ev.type === "snapshot") {
      showAgent(ev.agents);
      if (ev.my_call) openCall(ev.my_call);
    } else if (ev.type === "queues") {
      showAgent(ev.agents);
    } else if (ev.type === "call_bridged" && ev.agent_id === me) {
      openCall(ev);
    } else if (ev.type === "call_ended" && current && ev.call_id === current.call_id) {
      current.ended_at = Date.now();
      $("call-status").textContent = ev.cause === "transferred" ? "— dialihkan" : "— panggilan berakhir";
      showTransfer(null);
      tick();
    } else if (ev.type === "caller_voice" && current && ev.call_id === current.call_id) {
      // The caller has been quiet a second by the time that is said.
      current.quiet_since = ev.speaking ? null : Date.now() - 1000;
      tick();
    } else if (ev.type === "silent_emergency" && current && ev.call_id === current.call_id) {
      $("call-silent").hidden = false;
    } else if (ev.type === "transfer" && current && ev.call_id === current.call_id) {
      showTransfer(ev);
    } else if (ev.type === "incident" && current && ev.incident.id === current.incident_id) {
      // Changed elsewhere (a transfer assigns the agency): show it, unless
      // the call-taker is choosing one right now.
      if (document.activeElement !== $("f-agency") && !dirty) setField("f-agency", ev.incident.agency);
    }
  });

  // Where the transfer stands, and which buttons make sense now.
  const transferText = {
    ringing: "Menghubungi", talking: "Berbicara dengan", conference: "Konferensi dengan",
    completed: "Diserahkan ke", cancelled: "Dibatalkan —", no_answer: "Tidak dijawab —",
    dispatcher_hung_up: "Petugas menutup telepon —", caller_hung_up: "Penelepon menutup telepon —",
  };
  function showTransfer(ev) {
    const state = ev ? ev.state : null;
    $("t-state").dataset.state = state || "";
    $("t-state").textContent = ev
      ? `${transferText[state] || state} ${ev.agency}${ev.dispatcher ? " (" + ev.dispatcher + ")" : ""}`
      : "";
    const active = state === "ringing" || state === "talking" || state === "conference";
    $("t-start").hidden = active || state === "completed";
    $("t-cancel").hidden = !active;
    $("t-complete").hidden = !(state === "talking" || state === "conference");
    $("t-conference").hidden = state !== "talking";
  }

  async function transferAction(path, body) {
    if (!current) return;
    try {
      await siaga.api("POST", "/api/calls/" + encodeURIComponent(current.call_id) + "/transfer" + path, body);
    } catch (err) {
      $("t-state").textContent = "Gagal: " + err.message;
    }
  }
  $("t-agency").addEventListener("change", fillDispatchers);
  // One touch: the agency's button names it on the incident and starts
  // the warm transfer to whichever of its dispatchers is free.
  document.querySelectorAll("#agency-now button").forEach((b) => b.addEventListener("click", async () => {
    if (!current) return;
    const agency = b.dataset.agency;
    $("t-agency").value = agency;
    fillDispatchers();
    if ($("f-agency").value !== agency) {
      setField("f-agency", agency);
      dirty = true;
    }
    await save();
    transferAction("", { agency });
  }));
  $("t-start").addEventListener("click", () => {
    const agency = $("t-agency").value;
    const agent = $("t-agent").value || undefined;
    if (agency) transferAction("", { agency, agent });
  });
  $("t-complete").addEventListener("click", () => transferAction("/complete"));
  $("t-conference").addEventListener("click", () => transferAction("/conference"));
  $("t-cancel").addEventListener("click", () => transferAction("/cancel"));

  $("incident-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!current) return;
    dirty = true;
    save();
  });

  $("link-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const target = $("f-link").value;
    if (!current || !target) return;
    $("link-question").textContent =
      `Gabungkan panggilan ini ke insiden ${target.slice(0, 8)} (${$("f-link").selectedOptions[0].textContent})?`;
    $("link-confirm").hidden = false;
  });
  $("link-no").addEventListener("click", () => { $("link-confirm").hidden = true; });
  $("link-yes").addEventListener("click", async () => {
    const target = $("f-link").value;
    $("link-confirm").hidden = true;
    if (!current || !target) return;
    if (!(await save())) return;
    try {
      await siaga.api("POST", "/api/calls/" + encodeURIComponent(current.call_id) + "/incident", { incident_id: target });
      await loadIncident(target);
      $("saved-msg").textContent = "Digabungkan ke insiden " + target.slice(0, 8);
    } catch (err) {
      $("saved-msg").textContent = "Gagal menggabungkan: " + err.message;
    }
  });

  // A new call rings: the last call's card goes (its edits saved first).
  document.addEventListener("siaga-ringing", async () => {
    if (!current) return;
    if (dirty || saving) await save();
    if (dirty) return; // not saved: kept on screen, with the reason
    closeCard();
  });

  function closeCard() {
    current = null;
    $("call-card").hidden = true;
    $("idle").hidden = false;
    document.title = "Penerima panggilan · siaga";
  }

  $("close-card").addEventListener("click", async () => {
    if (dirty || saving) {
      $("saved-msg").textContent = "Menyimpan…";
      if (!(await save())) return;
    }
    closeCard();
  });

  // What kind of call this is, one key each (shown on the buttons; the
  // digit alone unless typing, Alt and the digit anywhere). Darurat goes
  // to the category; Informasi and Diam are saved as the category; Iseng,
  // Kosong, Salah sambung and Tes save, close the incident, hang up the
  // browser phone's call and clear the card in one action.
  const emergency = (c) => c && !notEmergency.includes(c);
  async function dispose(button) {
    if (!current) return;
    const kind = button.dataset.disposition;
    if (kind === "emergency") {
      if (!emergency($("f-category").value)) setField("f-category", "");
      $("f-category").focus();
      return;
    }
    setField("f-category", kind);
    dirty = true;
    if (!button.hasAttribute("data-closes")) {
      save();
      return;
    }
    $("saved-msg").textContent = "Menutup…";
    if (!(await save({ status: "closed" }))) return;
    // The browser phone's call ends in the tab; a desk phone's by the
    // server (the call may have ended already: nothing to say then).
    if (!(siaga.hangup && siaga.hangup()) && !current.ended_at) {
      await siaga.api("POST", `/api/calls/${encodeURIComponent(current.call_id)}/hangup`, {}).catch(() => {});
    }
    closeCard();
  }
  const dispositionButtons = [...document.querySelectorAll("#dispositions button")];
  dispositionButtons.forEach((b) => b.addEventListener("click", () => dispose(b)));
  document.addEventListener("keydown", (e) => {
    if (!current || $("call-card").hidden || e.ctrlKey || e.metaKey) return;
    // A digit in a list chooses in it, as typing does.
    const typing = siaga.typing(e.target) || e.target.tagName === "SELECT";
    if (typing && !e.altKey) return;
    const digit = e.code && e.code.startsWith("Digit") ? e.code.slice(5) : e.key;
    const button = dispositionButtons.find((b) => b.querySelector("kbd").textContent === digit);
    if (!button) return;
    e.preventDefault();
    dispose(button);
  });
})();
