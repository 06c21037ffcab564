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
  // Only a path of our own origin, as the browser itself reads it (a
  // backslash or a tab can make "/..." another host): never an open redirect.
  const next = new URLSearchParams(location.search).get("next");
  let to = data.home;
  if (next && next.startsWith("/")) {
    const u = new URL(next, location.origin);
    if (u.origin === location.origin) to = u.pathname + u.search + u.hash;
  }
  location.href = to;
});
