// Users of the panel: list, add, disable/enable, reset a password.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  async function load() {
    const [users, meta] = await Promise.all([siaga.api("GET", "/api/users"), siaga.api("GET", "/api/meta")]);
    $("u-agency").innerHTML = `<option value="">—</option>` + meta.agencies.map((a) => `<option value="${siaga.esc(a.id)}">${siaga.esc(a.name)}</option>`).join("");
    $("users").tBodies[0].innerHTML = users.map((u) =>
      `<tr class="user-row" data-id="${siaga.esc(u.id)}"><td>${siaga.esc(u.username)}</td><td>${siaga.esc(u.display_name)}</td><td>${siaga.esc(u.role)}</td><td>${siaga.esc(u.agency || "")}</td><td>${siaga.esc(u.agent_id || "")}</td>
       <td>${u.disabled ? "nonaktif" : "aktif"}</td><td><button type="button" class="toggle" data-disabled="${u.disabled ? 0 : 1}">${u.disabled ? "Aktifkan" : "Nonaktifkan"}</button>
       <button type="button" class="reset">Atur ulang sandi</button></td></tr>`).join("");
  }

  $("users").addEventListener("click", async (e) => {
    const row = e.target.closest("tr");
    if (!row) return;
    try {
      if (e.target.classList.contains("toggle")) {
        await siaga.api("PATCH", "/api/users/" + row.dataset.id, { disabled: e.target.dataset.disabled === "1" });
      } else if (e.target.classList.contains("reset")) {
        const pw = prompt("Kata sandi baru (minimal 10 karakter):");
        if (!pw) return;
        await siaga.api("PATCH", "/api/users/" + row.dataset.id, { password: pw });
      } else return;
      $("user-msg").textContent = "Tersimpan.";
      load();
    } catch (err) {
      $("user-msg").textContent = "Gagal: " + err.message;
    }
  });

  $("user-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await siaga.api("POST", "/api/users", {
        username: $("u-username").value, display_name: $("u-name").value, role: $("u-role").value,
        agency: $("u-agency").value || null, agent_id: $("u-agent").value || null, password: $("u-password").value,
      });
      $("user-msg").textContent = "Pengguna ditambahkan.";
      e.target.reset();
      load();
    } catch (err) {
      $("user-msg").textContent = "Gagal: " + err.message;
    }
  });

  load();
})();
