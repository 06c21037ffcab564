"use strict";
document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  const r = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      username: document.getElementById("username").value,
      password: document.getElementById("password").value,
    }),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    err.textContent = r.status === 401 ? "Nama pengguna atau kata sandi salah." : (data.error || "Gagal masuk.");
    return;
  }
  const next = new URLSearchParams(location.search).get("next");
  // Only our own paths: never an open redirect.
  location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : data.home;
});
