// The dispatcher's screen: incidents handed to their agency, newest first,
// updated live, with the status their units report.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const agency = $("agency").dataset.agency;
  const steps = [["received", "Diterima"], ["unit_sent", "Unit dikirim"], ["on_scene", "Di lokasi"], ["closed", "Selesai"]];
  let meta = null;
  const nameOf = (list, id) => ((list || []).find((x) => String(x.id) === String(id)) || {}).name || "–";

  async function load() {
    if (!meta) meta = await siaga.api("GET", "/api/meta");
    const q = agency ? "?agency=" + encodeURIComponent(agency) : "";
    const list = await siaga.api("GET", "/api/incidents" + q);
    $("dispatch-list").tBodies[0].innerHTML = list.filter((i) => i.agency).map((i) =>
      `<tr class="incident-row" data-id="${siaga.esc(i.id)}"><td><a href="/incidents/${siaga.esc(i.id)}">${siaga.datetime(i.created_at)}</a></td>
       <td class="category">${siaga.esc(nameOf(meta.categories, i.category))}</td><td>${siaga.esc(nameOf(meta.priorities, i.priority))}</td>
       <td class="address">${siaga.esc(i.address || i.location_text || "")}</td><td class="notes">${siaga.esc(i.notes || "")}</td>
       <td class="status">${siaga.esc(nameOf(meta.statuses, i.status))}</td>
       <td>${steps.map(([s, n]) => `<button type="button" class="status-btn" data-status="${s}" ${i.status === s ? "disabled" : ""}>${n}</button>`).join(" ")}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">Belum ada insiden</td></tr>`;
  }

  $("dispatch-list").addEventListener("click", async (e) => {
    const b = e.target.closest(".status-btn");
    if (!b) return;
    const id = b.closest("tr").dataset.id;
    try {
      await siaga.api("PATCH", "/api/incidents/" + encodeURIComponent(id), { status: b.dataset.status });
    } catch (err) {
      alert("Gagal: " + err.message);
    }
  });

  siaga.live((ev) => {
    if (ev.type === "snapshot" || ev.type === "incident" || ev.type === "incident_left") load().catch(() => {});
  });
})();
