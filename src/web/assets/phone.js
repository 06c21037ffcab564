// The browser softphone: this tab takes the agent's calls (WebRTC). The
// server offers each call over the live socket; we answer with the
// microphone. Closing or reloading the tab turns the phone off (the server
// sets the agent not ready); after a reload it has to be turned on again.
// So nothing inside the panel takes this tab away: every link on a page
// with the phone opens in a new tab, leaving the tab while a call is up
// asks first, and so do turning the phone off and logging out.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  if (!$("phone-card")) return;
  const me = $("agent-id").dataset.agent;

  // The agent's state, and ready / not ready, whatever their phone. A
  // ring left unanswered puts the agent on a break: said plainly, until
  // they change their state.
  function showAgent(agents) {
    const a = (agents || []).find((x) => x.id === me);
    if (!a) return;
    $("agent-state").textContent = siaga.stateName(a) + (a.reason ? ` (${siaga.reasonName(a.reason)})` : "");
    $("agent-card").dataset.state = a.state;
    const missed = a.state === "not_ready" && a.reason === "no_answer";
    $("agent-note").hidden = !missed;
    $("agent-note").textContent = missed
      ? "Panggilan berdering tanpa dijawab, jadi status Anda kini Istirahat (tidak menjawab) dan penelepon dialihkan ke petugas lain. Tekan «Siap» untuk menerima panggilan lagi."
      : "";
  }
  // Callers waiting in all queues, from the last live figures.
  let waitingNow = 0;
  function countWaiting(queues) {
    waitingNow = (queues || []).reduce((n, q) => n + (q.waiting ? q.waiting.length : 0), 0);
  }
  const setState = async (state) => {
    try {
      await siaga.api("POST", `/api/agents/${encodeURIComponent(me)}/state`,
        { state, reason: state === "not_ready" ? "istirahat" : undefined });
    } catch (err) {
      $("agent-state").textContent = err.message;
    }
  };
  $("btn-ready").addEventListener("click", () => setState("ready"));
  $("btn-notready").addEventListener("click", () => setState("not_ready"));

  let wanted = false; // the agent turned the phone on
  let mic = null; // the microphone's stream, kept while the phone is on
  let call = null; // { leg, offer, pc, held }
  const phoneLog = (window.siagaPhoneLog = []);

  const show = (id, yes) => { $(id).hidden = !yes; };
  function status(text) { $("phone-state").textContent = text; }
  function problem(text) { $("phone-error").textContent = text || ""; }

  function micProblem(e) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return "Browser tidak mengizinkan mikrofon di halaman ini (butuh HTTPS atau localhost).";
    }
    const name = e && e.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return "Akses mikrofon ditolak. Izinkan mikrofon untuk situs ini di pengaturan browser, lalu nyalakan telepon lagi.";
    }
    if (name === "NotFoundError") return "Tidak ada mikrofon yang terpasang.";
    if (name === "NotReadableError") return "Mikrofon sedang dipakai aplikasi lain.";
    return "Mikrofon tidak dapat dipakai: " + ((e && e.message) || e);
  }

  async function microphone() {
    if (mic && mic.getAudioTracks().some((t) => t.readyState === "live")) return mic;
    mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    return mic;
  }

  function releaseMic() {
    if (mic) mic.getTracks().forEach((t) => t.stop());
    mic = null;
  }

  // Ringing you cannot miss: a banner across the page (service, number,
  // location, time waited, callers waiting), a ringtone, the tab's title
  // flashing; Space or Enter answers.
  const banner = document.createElement("div");
  banner.id = "ring-banner";
  banner.hidden = true;
  banner.setAttribute("role", "alert");
  banner.innerHTML = `<span class="ring-service" id="ring-service"></span>
    <span id="ring-silent" class="silent-flag" hidden>DARURAT DIAM: penelepon menekan 55</span>
    <span id="ring-prank" class="prank-flag" hidden></span>
    <strong id="ring-number"></strong> <span id="ring-location"></span>
    <span>menunggu <span id="ring-waited" class="timer">0:00</span></span>
    <span id="ring-queue"></span>
    <button id="ring-answer" type="button">Jawab (Spasi / Enter)</button>`;
  document.body.prepend(banner);
  $("ring-answer").addEventListener("click", () => answer());

  // Sound needs an AudioContext made after a click of the agent's: the
  // one that turns the phone on.
  let audio = null;
  function audioContext() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!audio && Ctx) audio = new Ctx();
    if (audio && audio.state === "suspended") audio.resume();
    return audio;
  }
  const ringtone = (window.siagaRingtone = { playing: false, bursts: 0, context: () => audio });
  // One burst: two tones, twice, under a second.
  function ringBurst() {
    const ctx = audioContext();
    if (!ctx) return;
    const gain = ctx.createGain();
    gain.gain.value = 0.25;
    gain.connect(ctx.destination);
    const t = ctx.currentTime;
    [[880, 0], [660, 0.2], [880, 0.4], [660, 0.6]].forEach(([hz, at]) => {
      const o = ctx.createOscillator();
      o.frequency.value = hz;
      o.connect(gain);
      o.start(t + at);
      o.stop(t + at + 0.18);
    });
    ringtone.bursts++;
  }
  let ringing = null; // { timers, title }
  function startRinging(ev) {
    stopRinging();
    $("ring-service").textContent = ev.service || "?";
    $("ring-number").textContent = ev.caller_number || "nomor tidak diketahui";
    $("ring-silent").hidden = !ev.silent_emergency;
    $("ring-prank").hidden = !ev.pranks;
    $("ring-prank").textContent = ev.pranks ? `SERING ISENG (${ev.pranks}×)` : "";
    $("ring-location").textContent = ev.location ? "Lokasi: " + ev.location : "Lokasi tidak diketahui";
    $("ring-queue").textContent = `${waitingNow} penelepon dalam antrean`;
    const since = Date.now() - (ev.waited_ms || 0);
    const tick = () => {
      $("ring-waited").textContent = siaga.duration(Date.now() - since);
      $("ring-queue").textContent = `${waitingNow} penelepon dalam antrean`;
    };
    tick();
    banner.hidden = false;
    const title = document.title;
    const flash = `☎ ${ev.service || ""} ${ev.caller_number || ""} — PANGGILAN MASUK`;
    ringing = {
      title,
      timers: [
        setInterval(tick, 250),
        setInterval(ringBurst, 2000),
        setInterval(() => { document.title = document.title === flash ? title : flash; }, 700),
      ],
    };
    document.title = flash;
    ringBurst();
    ringtone.playing = true;
    // Whatever had the keyboard (the last call's notes) lets go of it.
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    document.dispatchEvent(new CustomEvent("siaga-ringing", { detail: ev }));
  }
  function stopRinging() {
    if (!ringing) return;
    ringing.timers.forEach(clearInterval);
    document.title = ringing.title;
    ringing = null;
    banner.hidden = true;
    ringtone.playing = false;
  }
  document.addEventListener("keydown", (e) => {
    if (!ringing || (e.key !== " " && e.key !== "Enter")) return;
    if (siaga.typing(e.target)) return;
    e.preventDefault();
    answer();
  }, true);

  function idle(text) {
    stopRinging();
    if (call && call.pc) call.pc.close();
    call = null;
    $("phone-audio").srcObject = null;
    show("phone-ringing", false);
    show("phone-call", false);
    show("phone-off-confirm", false);
    $("phone-card").dataset.call = "";
    if (text !== undefined) status(text);
  }

  function showOn(on) {
    $("phone-card").dataset.on = on ? "on" : "off";
    show("phone-on", !on);
    show("phone-off", on);
    if (!call) status(on ? "menyala — menunggu panggilan" : "mati");
  }

  $("phone-on").addEventListener("click", async () => {
    problem("");
    try {
      await microphone();
    } catch (e) {
      problem(micProblem(e));
      $("phone-card").dataset.mic = "refused";
      return;
    }
    $("phone-card").dataset.mic = "ok";
    audioContext();
    wanted = true;
    if (!siaga.send({ type: "phone_on" })) status("menunggu sambungan ke server…");
  });

  function phoneOff() {
    show("phone-off-confirm", false);
    wanted = false;
    siaga.send({ type: "phone_off" });
    idle();
    releaseMic();
    showOn(false);
  }
  // During a call, turning the phone off cuts it: asked first.
  $("phone-off").addEventListener("click", () => {
    if (call) show("phone-off-confirm", true);
    else phoneOff();
  });
  $("phone-off-yes").addEventListener("click", phoneOff);
  $("phone-off-no").addEventListener("click", () => show("phone-off-confirm", false));

  // A link never takes this tab (and its phone) away: it opens a new tab.
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[href]");
    const href = a && a.getAttribute("href");
    if (!href || href.startsWith("#") || href.startsWith("javascript:")) return;
    e.preventDefault();
    window.open(a.href, "_blank", "noopener");
  }, true);
  // The browser asks before the tab is closed or reloaded during a call.
  window.addEventListener("beforeunload", (e) => {
    if (!call) return;
    e.preventDefault();
    e.returnValue = "";
  });
  // Whether leaving (logging out) would cut a call.
  siaga.busy = () => !!call;
  // Hangs up the call this tab's phone has up (a disposition that ends
  // the call); false when it has none.
  siaga.hangup = () => {
    if (!call || !call.pc) return false;
    siaga.send({ type: "hangup", leg: call.leg });
    idle("menyala — menunggu panggilan");
    return true;
  };

  // The socket came back after a drop: the server turned the phone off
  // with the old socket, so ask again.
  siaga.openHooks.push(() => { if (wanted) siaga.send({ type: "phone_on" }); });
  siaga.closeHooks.push(() => {
    if (call) idle("sambungan ke server terputus");
    if (wanted) status("sambungan ke server terputus — menyambung lagi…");
  });

  function incoming(ev) {
    if (call) {
      siaga.send({ type: "decline", leg: ev.leg, reason: "busy" });
      return;
    }
    call = { leg: ev.leg, offer: ev.sdp, iceServers: ev.ice_servers || [], pc: null, held: false };
    $("phone-caller").textContent = ev.caller_number || "nomor tidak diketahui";
    $("phone-card").dataset.call = "ringing";
    show("phone-ringing", true);
    status("panggilan masuk");
    startRinging(ev);
  }

  // Waits until our candidates are in the description (no trickle).
  function gathered(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ms);
    });
  }

  async function answer() {
    const c = call;
    if (!c || c.pc) return;
    stopRinging();
    show("phone-ringing", false);
    let stream;
    try {
      stream = await microphone();
    } catch (e) {
      problem(micProblem(e));
      $("phone-card").dataset.mic = "refused";
      siaga.send({ type: "decline", leg: c.leg, reason: "microphone refused" });
      idle("mikrofon ditolak — panggilan dialihkan ke agen lain");
      return;
    }
    try {
      const pc = new RTCPeerConnection({
        iceServers: c.iceServers.length ? [{ urls: c.iceServers }] : [],
      });
      c.pc = pc;
      pc.ontrack = (e) => { $("phone-audio").srcObject = new MediaStream([e.track]); };
      pc.onconnectionstatechange = () => {
        if (call !== c) return;
        if (pc.connectionState === "connected") {
          status("tersambung");
          $("phone-card").dataset.call = "talking";
        } else if (pc.connectionState === "failed") {
          status("sambungan audio gagal");
        }
      };
      await pc.setRemoteDescription({ type: "offer", sdp: c.offer });
      const t = pc.getTransceivers().find((x) => x.receiver.track.kind === "audio");
      t.direction = "sendrecv";
      await t.sender.replaceTrack(stream.getAudioTracks()[0]);
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc, 3000);
      if (call !== c) return;
      siaga.send({ type: "answer", leg: c.leg, sdp: pc.localDescription.sdp });
      $("phone-card").dataset.call = "connecting";
      status("menyambung…");
      show("phone-call", true);
    } catch (e) {
      problem("Panggilan tidak dapat dijawab: " + e.message);
      siaga.send({ type: "decline", leg: c.leg, reason: "webrtc error" });
      idle();
    }
  }

  $("phone-answer").addEventListener("click", answer);
  $("phone-decline").addEventListener("click", () => {
    if (!call) return;
    siaga.send({ type: "decline", leg: call.leg, reason: "declined" });
    idle("menyala — menunggu panggilan");
  });
  $("phone-hangup").addEventListener("click", () => {
    if (!call) return;
    siaga.send({ type: "hangup", leg: call.leg });
    idle("menyala — menunggu panggilan");
  });
  $("phone-hold").addEventListener("click", () => {
    if (!call) return;
    call.held = !call.held;
    siaga.send({ type: "hold", leg: call.leg, on: call.held });
    $("phone-hold").textContent = call.held ? "Lanjutkan" : "Tahan";
    status(call.held ? "penelepon ditahan" : "tersambung");
  });

  const endedText = {
    not_answered: "tidak dijawab — panggilan dialihkan",
    hangup: "panggilan berakhir",
    media_failed: "sambungan audio gagal",
    bad_answer: "jawaban browser ditolak server",
    error: "telepon browser gagal",
    gone: "telepon pindah ke tab lain",
  };

  siaga.listen((ev) => {
    if (["phone", "phone_error", "incoming", "ended"].includes(ev.type)) {
      // The last signalling, for whoever troubleshoots this tab.
      phoneLog.push(`${new Date().toISOString()} ${ev.type} ${ev.leg ?? ""} ${ev.reason ?? ev.message ?? ""} (call ${call ? call.leg : "-"})`);
      if (phoneLog.length > 50) phoneLog.shift();
    }
    if (ev.type === "snapshot" || ev.type === "queues") {
      showAgent(ev.agents);
      countWaiting(ev.queues);
    } else if (ev.type === "phone") {
      if (!ev.on && ev.reason && ev.reason !== "off") {
        wanted = false;
        problem(ev.reason);
      }
      showOn(ev.on);
    } else if (ev.type === "phone_error") {
      problem(ev.message);
    } else if (ev.type === "incoming") {
      incoming(ev);
    } else if (ev.type === "ended" && call && ev.leg === call.leg) {
      idle(endedText[ev.reason] || "panggilan berakhir");
      $("phone-hold").textContent = "Tahan";
    }
  });
  showOn(false);
})();
