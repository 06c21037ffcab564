//! The panel's pages: server-rendered HTML; the live screens add a little
//! JavaScript (`assets/`) that talks to the JSON API and the live socket.
//! Text is in Bahasa Indonesia, as the room speaks it.

use super::api::incident_detail;
use super::auth::{self, Role, User};
use super::{ApiError, AppState};
use crate::store::{IncidentFilter, IncidentRow, CATEGORIES, PRIORITIES, STATUSES};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;
use std::fmt::Write;

/// Escapes text for HTML content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn nav(user: &User) -> String {
    let mut links = Vec::new();
    let mut link = |href: &str, text: &str, roles: &[Role]| {
        if user.is(roles) {
            links.push(format!("<a href=\"{href}\">{text}</a>"));
        }
    };
    use Role::*;
    link(
        "/calltaker",
        "Penerima panggilan",
        &[CallTaker, Supervisor, Admin],
    );
    link(
        "/dispatcher",
        "Dispatcher",
        &[Dispatcher, Supervisor, Admin],
    );
    link("/supervisor", "Supervisor", &[Supervisor, Admin]);
    link("/incidents", "Insiden", &Role::ALL);
    link("/admin", "Pengguna", &[Admin]);
    format!(
        "<nav><strong>siaga</strong> {} <span class=\"who\">{} ({})</span> <button id=\"logout\" type=\"button\">Keluar</button></nav>",
        links.join(" "),
        esc(&user.display_name),
        user.role.label()
    )
}

/// A panel page. `offset`: the center's hours from UTC, which the page's
/// scripts write every time in (never the browser's own zone).
fn page(
    title: &str,
    user: Option<&User>,
    body: &str,
    script: Option<&str>,
    offset: i8,
) -> Html<String> {
    let nav = user.map(nav).unwrap_or_default();
    let script = script
        .map(|s| format!("<script src=\"/assets/{s}\" defer></script>"))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"id\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · siaga</title><link rel=\"stylesheet\" href=\"/assets/panel.css\">\
         <script src=\"/assets/panel.js\" defer></script>{script}</head>\
         <body data-utc-offset=\"{offset}\" data-zone=\"{}\">{nav}<main>{body}</main></body></html>",
        esc(title),
        zone_name(offset)
    ))
}

fn forbidden(user: &User) -> Response {
    (
        StatusCode::FORBIDDEN,
        page(
            "Tidak diizinkan",
            Some(user),
            "<h1>Tidak diizinkan</h1><p>Peran Anda tidak boleh membuka halaman ini.</p>",
            None,
            0,
        ),
    )
        .into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, mime) = match file.as_str() {
        "panel.css" => (include_str!("assets/panel.css"), "text/css"),
        "panel.js" => (include_str!("assets/panel.js"), "text/javascript"),
        "login.js" => (include_str!("assets/login.js"), "text/javascript"),
        "calltaker.js" => (include_str!("assets/calltaker.js"), "text/javascript"),
        "phone.js" => (include_str!("assets/phone.js"), "text/javascript"),
        "supervisor.js" => (include_str!("assets/supervisor.js"), "text/javascript"),
        "dispatcher.js" => (include_str!("assets/dispatcher.js"), "text/javascript"),
        "admin.js" => (include_str!("assets/admin.js"), "text/javascript"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn login(State(s): State<AppState>, headers: HeaderMap) -> Response {
    // Already logged in: straight to work.
    if let Ok(Some(user)) = auth::session_user(&s, &headers).await {
        return Redirect::to(user.role.home()).into_response();
    }
    page(
        "Masuk",
        None,
        "<h1>siaga — masuk</h1>\
         <form id=\"login-form\" class=\"card narrow\">\
         <label>Nama pengguna <input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <label>Kata sandi <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button id=\"login\" type=\"submit\">Masuk</button>\
         <p id=\"login-error\" class=\"error\" role=\"alert\"></p></form>",
        Some("login.js"),
        s.config.server.http.utc_offset_hours,
    )
    .into_response()
}

pub async fn home(Extension(user): Extension<User>) -> Redirect {
    Redirect::to(user.role.home())
}

/// The agencies as (id, name), for a <select>.
fn agency_choices(config: &crate::config::Config) -> Vec<(&str, &str)> {
    config
        .agencies
        .iter()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect()
}

fn options(list: &[(&str, &str)], selected: Option<&str>, blank: &str) -> String {
    let mut out = format!("<option value=\"\">{}</option>", esc(blank));
    for (id, name) in list {
        let sel = if Some(*id) == selected {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option value=\"{id}\"{sel}>{}</option>", esc(name));
    }
    out
}

pub async fn calltaker(State(s): State<AppState>, Extension(user): Extension<User>) -> Response {
    if !user.is(&[Role::CallTaker, Role::Supervisor, Role::Admin]) {
        return forbidden(&user);
    }
    let agencies = agency_choices(&s.config);
    // Only agencies with a dispatcher queue take transfers.
    let transferable: Vec<(&str, &str)> = s
        .config
        .agencies
        .iter()
        .filter(|a| a.queue.is_some())
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    let priorities: Vec<(String, &str)> = PRIORITIES
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
    let priorities: Vec<(&str, &str)> = priorities.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let agent = agent_card(&user);
    let body = format!(
        "<h1>Penerima panggilan</h1>{agent}\
         <p id=\"idle\" class=\"muted\">Menunggu panggilan…</p>\
         <section id=\"call-card\" class=\"card\" hidden>\
         <h2>Panggilan <span id=\"call-service\"></span> — <span id=\"call-caller\"></span> \
         <span id=\"call-timer\" class=\"timer\">0:00</span> <span id=\"call-status\"></span> \
         <span id=\"call-silent\" class=\"silent-flag\" hidden>DARURAT DIAM: penelepon menekan 55</span> \
         <span id=\"call-prank\" class=\"prank-flag\" hidden></span> \
         <span id=\"caller-quiet\" class=\"quiet-badge\" hidden></span></h2>\
         <p>Lokasi dari jaringan: <span id=\"call-location\">tidak diketahui</span></p>\
         <p>Insiden <a id=\"incident-link\" href=\"#\"></a> · <span id=\"repeat\"></span></p>\
         <div id=\"dispositions\" role=\"group\" aria-label=\"Jenis panggilan\">Jenis panggilan: \
         <button type=\"button\" data-disposition=\"emergency\"><kbd>1</kbd> Darurat</button> \
         <button type=\"button\" data-disposition=\"information\"><kbd>2</kbd> Informasi</button> \
         <button type=\"button\" data-disposition=\"prank\" data-closes><kbd>3</kbd> Iseng</button> \
         <button type=\"button\" data-disposition=\"ghost\" data-closes><kbd>4</kbd> Kosong</button> \
         <button type=\"button\" data-disposition=\"silent\"><kbd>5</kbd> Diam</button> \
         <button type=\"button\" data-disposition=\"wrong_number\" data-closes><kbd>6</kbd> Salah sambung</button> \
         <button type=\"button\" data-disposition=\"test\" data-closes><kbd>7</kbd> Tes</button> \
         <span class=\"muted\">Iseng, Kosong, Salah sambung dan Tes menyimpan, menutup insiden dan menutup telepon.</span></div>\
         <form id=\"incident-form\">\
         <label>Kategori <select id=\"f-category\">{}</select></label>\
         <label>Prioritas <select id=\"f-priority\">{}</select></label>\
         <label>Alamat / lokasi <input id=\"f-address\" maxlength=\"500\"></label>\
         <label>Instansi penanganan <select id=\"f-agency\">{}</select></label>\
         <label class=\"wide\">Catatan <textarea id=\"f-notes\" rows=\"4\" maxlength=\"8000\"></textarea></label>\
         <button id=\"save\" type=\"submit\">Simpan</button> <span id=\"saved-msg\" role=\"status\"></span>\
         </form>\
         <form id=\"link-form\"><label>Gabungkan ke insiden terbuka <select id=\"f-link\"></select></label>\
         <button id=\"link\" type=\"submit\">Gabungkan</button> \
         <span id=\"link-confirm\" role=\"alert\" hidden><span id=\"link-question\"></span> \
         <button id=\"link-yes\" type=\"button\">Ya, gabungkan</button> \
         <button id=\"link-no\" type=\"button\">Batal</button></span></form>\
         <h3>Insiden sebelumnya dari nomor ini</h3><ul id=\"history\"></ul>\
         <section id=\"transfer-box\"><h3>Alihkan (transfer)</h3>\
         <p id=\"agency-now\">Alihkan sekarang ke: {}</p>\
         <label>Ke instansi <select id=\"t-agency\">{}</select></label> \
         <label>Petugas <select id=\"t-agent\"><option value=\"\">siapa saja</option></select></label> \
         <button id=\"t-start\" type=\"button\">Alihkan</button> <span id=\"t-state\" role=\"status\"></span> \
         <button id=\"t-complete\" type=\"button\" hidden>Serahkan</button> \
         <button id=\"t-conference\" type=\"button\" hidden>Konferensi</button> \
         <button id=\"t-cancel\" type=\"button\" hidden>Batalkan</button></section>\
         <button id=\"close-card\" type=\"button\">Selesai</button>\
         </section>",
        options(CATEGORIES, None, "— pilih —"),
        options(&priorities, None, "— pilih —"),
        options(&agencies, None, "— pilih —"),
        transferable
            .iter()
            .map(|(id, name)| format!(
                "<button type=\"button\" data-agency=\"{}\">{}</button>",
                esc(id),
                esc(name)
            ))
            .collect::<Vec<_>>()
            .join(" "),
        options(&transferable, None, "— pilih —"),
    );
    page(
        "Penerima panggilan",
        Some(&user),
        &body,
        Some("calltaker.js"),
        s.config.server.http.utc_offset_hours,
    )
    .into_response()
}

/// The agent's own card, for a user bound to an agent: their state, ready
/// and not ready, and the browser softphone (`phone.js`).
fn agent_card(user: &User) -> String {
    let Some(agent) = user.agent_id.as_deref() else {
        return "<section class=\"card\" id=\"agent-card\"><span class=\"muted\">\
                Akun ini tidak terhubung ke agen: tidak menerima panggilan.</span></section>"
            .into();
    };
    format!(
        "<section class=\"card\" id=\"agent-card\">\
         <span id=\"agent-id\" data-agent=\"{0}\">Agen {0}</span> — status: <strong id=\"agent-state\">?</strong> \
         <button id=\"btn-ready\" type=\"button\">Siap</button> \
         <button id=\"btn-notready\" type=\"button\">Istirahat</button>\
         <p id=\"agent-note\" class=\"error\" role=\"alert\" hidden></p>\
         <div id=\"phone-card\" data-on=\"off\">Telepon browser: <span id=\"phone-state\" role=\"status\">mati</span> \
         <button id=\"phone-on\" type=\"button\">Nyalakan</button> \
         <span id=\"phone-ringing\" hidden>Panggilan masuk dari <strong id=\"phone-caller\"></strong> \
         <button id=\"phone-answer\" type=\"button\">Jawab</button> \
         <button id=\"phone-decline\" type=\"button\">Tolak</button></span>\
         <span id=\"phone-call\" hidden><button id=\"phone-hold\" type=\"button\">Tahan</button> \
         <button id=\"phone-hangup\" type=\"button\">Tutup telepon</button></span>\
         <span class=\"phone-off-box\"><button id=\"phone-off\" type=\"button\" hidden>Matikan telepon</button>\
         <span id=\"phone-off-confirm\" class=\"error\" role=\"alert\" hidden>Panggilan sedang berlangsung dan akan terputus. \
         <button id=\"phone-off-yes\" type=\"button\">Ya, matikan</button> \
         <button id=\"phone-off-no\" type=\"button\">Batal</button></span></span>\
         <p id=\"phone-error\" class=\"error\" role=\"alert\"></p>\
         <audio id=\"phone-audio\" autoplay></audio></div></section>\
         <script src=\"/assets/phone.js\" defer></script>",
        esc(agent)
    )
}

pub async fn supervisor(State(s): State<AppState>, Extension(user): Extension<User>) -> Response {
    if !user.is(&[Role::Supervisor, Role::Admin]) {
        return forbidden(&user);
    }
    let figure = |id: &str, label: &str| {
        format!("<div class=\"figure\"><span class=\"label\">{label}</span><span id=\"{id}\" class=\"value\">–</span></div>")
    };
    let body = format!(
        "<h1>Supervisor</h1>\
         <section class=\"card\"><h2>Hari ini</h2><div id=\"figures\" class=\"figures\">{}{}{}{}{}{}{}{}</div></section>\
         <section class=\"card\"><h2>Antrean</h2><table id=\"queues\"><thead><tr><th>Antrean</th><th>No.</th><th>Menunggu</th><th>Berdering di</th></tr></thead><tbody></tbody></table></section>\
         <section class=\"card\"><h2>Agen</h2><table id=\"agents\"><thead><tr><th>Agen</th><th>Instansi</th><th>Status</th><th>Sejak</th><th>Telepon</th></tr></thead><tbody></tbody></table></section>\
         <section class=\"card\"><h2>Panggilan terputus (belum dijawab)</h2><table id=\"abandoned\"><thead><tr><th>Terakhir</th><th>Nomor</th><th>Layanan</th><th>Menunggu paling lama</th><th></th></tr></thead><tbody></tbody></table><p id=\"callback-msg\" role=\"status\"></p></section>\
         <section class=\"card\"><h2>Nomor sering iseng</h2><p class=\"muted\">Tetap dijawab dan direkam, tetapi menunggu di belakang penelepon lain. Tidak pernah diblokir.</p><table id=\"pranks\"><thead><tr><th>Nomor</th><th>Panggilan iseng</th><th></th></tr></thead><tbody></tbody></table><p id=\"prank-msg\" role=\"status\"></p></section>",
        figure("fig-calls", "Panggilan"),
        figure("fig-answered", "Dijawab"),
        figure("fig-10s", "Dijawab ≤ 10 dtk"),
        figure("fig-20s", "Dijawab ≤ 20 dtk"),
        figure("fig-avg", "Rata-rata waktu jawab"),
        figure("fig-abandon", "Terputus"),
        figure("fig-prank", "Iseng (prank)"),
        figure("fig-ghost", "Kosong (ghost)"),
    );
    let offset = s.config.server.http.utc_offset_hours;
    page(
        "Supervisor",
        Some(&user),
        &body,
        Some("supervisor.js"),
        offset,
    )
    .into_response()
}

pub async fn dispatcher(State(s): State<AppState>, Extension(user): Extension<User>) -> Response {
    if !user.is(&[Role::Dispatcher, Role::Supervisor, Role::Admin]) {
        return forbidden(&user);
    }
    let agency = user.agency.clone().unwrap_or_default();
    let name = s
        .config
        .agencies
        .iter()
        .find(|a| a.id == agency)
        .map(|a| a.name.clone())
        .unwrap_or_else(|| "semua instansi".into());
    let body = format!(
        "<h1>Dispatcher — <span id=\"agency\" data-agency=\"{}\">{}</span></h1>{}\
         <section class=\"card\"><table id=\"dispatch-list\"><thead><tr><th>Waktu</th><th>Kategori</th><th>Prioritas</th><th>Alamat</th><th>Catatan</th><th>Status</th><th></th></tr></thead><tbody></tbody></table></section>",
        esc(&agency),
        esc(&name),
        agent_card(&user),
    );
    let offset = s.config.server.http.utc_offset_hours;
    page(
        "Dispatcher",
        Some(&user),
        &body,
        Some("dispatcher.js"),
        offset,
    )
    .into_response()
}

pub async fn admin(State(s): State<AppState>, Extension(user): Extension<User>) -> Response {
    if !user.is(&[Role::Admin]) {
        return forbidden(&user);
    }
    let body = "<h1>Pengguna panel</h1>\
        <section class=\"card\"><table id=\"users\"><thead><tr><th>Nama pengguna</th><th>Nama</th><th>Peran</th><th>Instansi</th><th>Agen</th><th>Status</th><th></th></tr></thead><tbody></tbody></table></section>\
        <section class=\"card\"><h2>Tambah pengguna</h2><form id=\"user-form\">\
        <label>Nama pengguna <input id=\"u-username\" required></label>\
        <label>Nama <input id=\"u-name\"></label>\
        <label>Peran <select id=\"u-role\"><option value=\"call_taker\">call_taker</option><option value=\"dispatcher\">dispatcher</option><option value=\"supervisor\">supervisor</option><option value=\"admin\">admin</option></select></label>\
        <label>Instansi <select id=\"u-agency\"></select></label>\
        <label>Agen SIP <input id=\"u-agent\"></label>\
        <label>Kata sandi <input id=\"u-password\" type=\"password\" autocomplete=\"new-password\" required></label>\
        <button type=\"submit\">Tambah</button> <span id=\"user-msg\" role=\"status\"></span></form></section>";
    let offset = s.config.server.http.utc_offset_hours;
    page("Pengguna", Some(&user), body, Some("admin.js"), offset).into_response()
}

/// The list's filters as the form sends them: dates as YYYY-MM-DD in the
/// center's time zone.
#[derive(Deserialize, Default)]
pub struct ListForm {
    status: Option<String>,
    service: Option<String>,
    agency: Option<String>,
    category: Option<String>,
    caller_number: Option<String>,
    from_date: Option<String>,
    to_date: Option<String>,
}

/// Days since 1970-01-01 of a YYYY-MM-DD date (proleptic Gregorian).
fn days_from_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn date_start_ms(s: &str, offset_hours: i8) -> Option<i64> {
    days_from_date(s).map(|d| d * 86_400_000 - i64::from(offset_hours) * 3_600_000)
}

/// A time as the room reads it: YYYY-MM-DD HH:MM in the center's zone.
/// How a call ended, in words (`EndCause::as_str`, `LegEnd::cause`).
fn end_cause_name(cause: &str) -> &str {
    match cause {
        "" => "masih berlangsung",
        "caller_bye" => "penelepon menutup",
        "caller_cancel" => "penelepon menutup sebelum dijawab",
        "agent_bye" => "petugas menutup",
        "transferred" => "dialihkan",
        "overflow_bye" => "pusat lain menutup",
        "rtp_timeout" => "suara penelepon terputus",
        "media_failed" => "media gagal",
        "shutdown" => "layanan dihentikan",
        "node_failure" => "terputus: server mati",
        "no_ack" => "tidak terkonfirmasi (tanpa ACK)",
        "system_bye" => "ditutup sistem",
        "dialog_closed" => "sambungan tertutup",
        "no_common_codec" => "codec tidak cocok",
        "bad_sdp" => "SDP rusak",
        "no_media_port" => "port media habis",
        "callback_failed" => "telepon balik gagal",
        "callback_no_answer" => "telepon balik tidak dijawab",
        "callback_declined" => "telepon balik ditolak",
        "callback_unreachable" => "telepon balik tidak tersambung",
        "internal_error" => "kesalahan internal",
        other => other,
    }
}

/// An audit row's action, in words.
fn action_name(action: &str) -> &str {
    match action {
        "update" => "diubah",
        "classify" => "digolongkan otomatis",
        "call_linked" => "panggilan digabung ke sini",
        "call_unlinked" => "panggilan dipindah",
        "merged" => "digabung",
        "callback" => "telepon balik",
        "transfer_started" => "pengalihan dimulai",
        "transfer_ended" => "pengalihan selesai",
        "silent" => "penelepon menekan 55 (darurat diam)",
        other => other,
    }
}

/// An incident's field, as the form names it.
fn field_name(field: &str) -> &str {
    match field {
        "category" => "Kategori",
        "priority" => "Prioritas",
        "address" => "Alamat",
        "notes" => "Catatan",
        "agency" => "Instansi",
        "status" => "Status",
        "silent" => "Tanda darurat diam",
        other => other,
    }
}

/// An audited value as a person reads it: a category's, status's,
/// priority's or agency's name instead of its code.
fn value_name(field: Option<&str>, v: Option<&str>, agencies: &[(&str, &str)]) -> String {
    let Some(v) = v else {
        return String::new();
    };
    // A code no longer configured is shown as it is.
    let name = match field {
        Some("category") => name_or_code(CATEGORIES, v),
        Some("status") => match v.strip_prefix("merged into ") {
            Some(into) => return format!("Digabung ke {into}"),
            None => name_or_code(STATUSES, v),
        },
        Some("priority") => v
            .parse::<i64>()
            .ok()
            .and_then(|p| PRIORITIES.iter().find(|(k, _)| *k == p))
            .map_or(v, |(_, n)| *n),
        Some("agency") => name_or_code(agencies, v),
        _ => v,
    };
    name.to_string()
}

/// `id`'s name in `list`, or `id` itself when the list lacks it.
fn name_or_code<'a>(list: &[(&str, &'a str)], id: &'a str) -> &'a str {
    list.iter().find(|(k, _)| *k == id).map_or(id, |(_, n)| *n)
}

/// The one way the panel writes a moment: `03-12-2026 20:14:18 WIB`, in
/// the center's zone (`panel.js` `siaga.datetime` writes the same).
pub fn local_time(ms: i64, offset_hours: i8) -> String {
    let t = ms + i64::from(offset_hours) * 3_600_000;
    let (y, m, d) = crate::call::paths::civil_date(t);
    let secs = t.rem_euclid(86_400_000) / 1000;
    format!(
        "{d:02}-{m:02}-{y:04} {:02}:{:02}:{:02} {}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        zone_name(offset_hours)
    )
}

/// Indonesia's zones by name; elsewhere the offset.
pub fn zone_name(offset_hours: i8) -> String {
    match offset_hours {
        7 => "WIB".into(),
        8 => "WITA".into(),
        9 => "WIT".into(),
        0 => "UTC".into(),
        h => format!("UTC{h:+}"),
    }
}

fn name_of<'a>(list: &'a [(&'a str, &'a str)], id: Option<&str>) -> &'a str {
    id.and_then(|id| list.iter().find(|(k, _)| *k == id).map(|(_, v)| *v))
        .unwrap_or("–")
}

fn incident_rows(rows: &[IncidentRow], offset: i8) -> String {
    let mut out = String::new();
    for i in rows {
        let _ = write!(
            out,
            "<tr class=\"incident-row\" data-id=\"{id}\"><td><a href=\"/incidents/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            local_time(i.created_at, offset),
            esc(&i.service),
            esc(i.caller_number.as_deref().unwrap_or("–")),
            esc(name_of(CATEGORIES, i.category.as_deref())),
            esc(i.agency.as_deref().unwrap_or("–")),
            esc(name_of(STATUSES, Some(&i.status))),
            esc(i.address.as_deref().or(i.location_text.as_deref()).unwrap_or("")),
            id = esc(&i.id),
        );
    }
    out
}

pub async fn incidents(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(form): Query<ListForm>,
) -> Result<Response, ApiError> {
    let offset = s.config.server.http.utc_offset_hours;
    let mut filter = IncidentFilter {
        status: form.status.clone(),
        service: form.service.clone(),
        agency: form.agency.clone(),
        category: form.category.clone(),
        caller_number: form.caller_number.clone(),
        from: form
            .from_date
            .as_deref()
            .and_then(|d| date_start_ms(d, offset)),
        to: form
            .to_date
            .as_deref()
            .and_then(|d| date_start_ms(d, offset))
            .map(|t| t + 86_400_000),
        limit: Some(500),
    };
    if user.role == Role::Dispatcher {
        filter.agency = user.agency.clone().or(Some("-none-".into()));
    }
    let rows = s.store.search_incidents(&filter).await?;
    let agencies = agency_choices(&s.config);
    let agency_filter = if user.role == Role::Dispatcher {
        String::new()
    } else {
        format!(
            "<label>Instansi <select name=\"agency\">{}</select></label>",
            options(&agencies, form.agency.as_deref(), "semua")
        )
    };
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let body = format!(
        "<h1>Insiden</h1><form id=\"filters\" class=\"card filters\" method=\"get\">\
         <label>Status <select name=\"status\">{}</select></label>\
         <label>Layanan <select name=\"service\">{}</select></label>{agency_filter}\
         <label>Kategori <select name=\"category\">{}</select></label>\
         <label>Nomor penelepon <input name=\"caller_number\" value=\"{}\"></label>\
         <label>Dari <input type=\"date\" name=\"from_date\" value=\"{}\"></label>\
         <label>Sampai <input type=\"date\" name=\"to_date\" value=\"{}\"></label>\
         <button type=\"submit\">Saring</button></form>\
         <p>{} insiden</p><table id=\"incident-list\"><thead><tr><th>Waktu</th><th>Layanan</th><th>Penelepon</th><th>Kategori</th><th>Instansi</th><th>Status</th><th>Alamat</th></tr></thead><tbody>{}</tbody></table>",
        options(STATUSES, form.status.as_deref(), "semua"),
        options(&[("112", "112"), ("119", "119")], form.service.as_deref(), "semua"),
        options(CATEGORIES, form.category.as_deref(), "semua"),
        v(&form.caller_number),
        v(&form.from_date),
        v(&form.to_date),
        rows.len(),
        incident_rows(&rows, offset),
    );
    Ok(page("Insiden", Some(&user), &body, None, offset).into_response())
}

pub async fn incident(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let offset = s.config.server.http.utc_offset_hours;
    let d = match incident_detail(&s, &user, &id).await {
        Ok(d) => d,
        Err(ApiError::NotFound(_)) => {
            return Ok((
                StatusCode::NOT_FOUND,
                page(
                    "Tidak ada",
                    Some(&user),
                    "<h1>Insiden tidak ditemukan</h1>",
                    None,
                    offset,
                ),
            )
                .into_response())
        }
        Err(e) => return Err(e),
    };
    let i = &d.incident;
    let mut calls = String::new();
    for c in &d.calls {
        let c = serde_json::to_value(c).unwrap_or_default();
        let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let num = |k: &str| c.get(k).and_then(|v| v.as_i64());
        let audio = match c.get("recording_url").and_then(|v| v.as_str()) {
            Some(url) => format!(
                "<audio controls preload=\"none\" src=\"{}\"></audio>",
                esc(url)
            ),
            None => "tanpa rekaman".into(),
        };
        let direction = match text("direction").as_str() {
            "outbound" => "keluar (telepon balik)",
            _ => "masuk",
        };
        let _ = write!(
            calls,
            "<tr class=\"call-row\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{audio}</td></tr>",
            num("arrived_at").map(|t| local_time(t, offset)).unwrap_or_default(),
            direction,
            esc(&text("caller_number")),
            esc(&text("agent_id")),
            esc(end_cause_name(&text("end_cause"))),
        );
    }
    let agencies = agency_choices(&s.config);
    let mut audit = String::new();
    for a in &d.audit {
        let field = a.field.as_deref();
        let value = |v: &Option<String>| value_name(field, v.as_deref(), &agencies);
        let _ = write!(
            audit,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            local_time(a.at, offset),
            esc(if a.actor == "system" {
                "siaga (otomatis)"
            } else {
                &a.actor
            }),
            esc(action_name(&a.action)),
            esc(field.map_or("", field_name)),
            esc(&value(&a.old_value)),
            esc(&value(&a.new_value)),
        );
    }
    let merged = i
        .merged_into
        .as_ref()
        .map(|m| {
            format!(
                "<p>Digabung ke <a href=\"/incidents/{0}\">{0}</a></p>",
                esc(m)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Insiden <span id=\"incident-id\">{}</span></h1>{merged}<section class=\"card\"><dl>\
         <dt>Waktu</dt><dd>{}</dd><dt>Layanan</dt><dd>{}</dd><dt>Penelepon</dt><dd id=\"d-caller\">{}</dd>\
         <dt>Status</dt><dd id=\"d-status\">{}</dd><dt>Kategori</dt><dd id=\"d-category\">{}</dd>\
         <dt>Prioritas</dt><dd>{}</dd><dt>Alamat</dt><dd id=\"d-address\">{}</dd>\
         <dt>Lokasi jaringan</dt><dd>{}</dd><dt>Instansi</dt><dd id=\"d-agency\">{}</dd>\
         <dt>Catatan</dt><dd id=\"d-notes\" class=\"notes\">{}</dd></dl></section>\
         <section class=\"card\"><h2>Panggilan</h2><table id=\"calls\"><thead><tr><th>Waktu</th><th>Arah</th><th>Nomor</th><th>Agen</th><th>Akhir</th><th>Rekaman</th></tr></thead><tbody>{calls}</tbody></table></section>\
         <section class=\"card\"><h2>Riwayat perubahan</h2><table id=\"audit\"><thead><tr><th>Waktu</th><th>Oleh</th><th>Tindakan</th><th>Isian</th><th>Lama</th><th>Baru</th></tr></thead><tbody>{audit}</tbody></table></section>\
         <section class=\"card\"><h2>Insiden lain dari nomor ini</h2><table><tbody>{}</tbody></table></section>",
        esc(&i.id),
        local_time(i.created_at, offset),
        esc(&i.service),
        esc(i.caller_number.as_deref().unwrap_or("–")),
        esc(name_of(STATUSES, Some(&i.status))),
        esc(name_of(CATEGORIES, i.category.as_deref())),
        i.priority
            .and_then(|p| PRIORITIES.iter().find(|(k, _)| *k == p))
            .map(|(_, n)| *n)
            .unwrap_or("–"),
        esc(i.address.as_deref().unwrap_or("–")),
        esc(i.location_text.as_deref().unwrap_or("–")),
        esc(i.agency.as_deref().map_or("–", |a| name_of(&agencies, Some(a)))),
        esc(i.notes.as_deref().unwrap_or("")),
        incident_rows(&d.history, offset),
    );
    Ok(page("Insiden", Some(&user), &body, None, offset).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn codes_are_shown_by_their_names() {
        let agencies = [("damkar", "Damkar (Pemadam Kebakaran)")];
        let v = |f: &str, x: &str| value_name(Some(f), Some(x), &agencies);
        assert_eq!(v("category", "prank"), "Panggilan iseng (prank)");
        assert_eq!(v("status", "unit_sent"), "Unit dikirim");
        assert_eq!(v("status", "merged into ab12"), "Digabung ke ab12");
        assert_eq!(v("priority", "1"), "Darurat");
        assert_eq!(v("agency", "damkar"), "Damkar (Pemadam Kebakaran)");
        assert_eq!(v("notes", "asap"), "asap", "free text as typed");
        assert_eq!(
            v("category", "retired"),
            "retired",
            "an unknown code as it is"
        );
        assert_eq!(value_name(Some("notes"), None, &agencies), "");
        assert_eq!(field_name("agency"), "Instansi");
        assert_eq!(action_name("classify"), "digolongkan otomatis");
        assert_eq!(end_cause_name("agent_bye"), "petugas menutup");
        assert_eq!(end_cause_name("node_failure"), "terputus: server mati");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_date("1970-01-01"), Some(0));
        assert_eq!(days_from_date("2026-11-23"), Some(20_780));
        assert_eq!(days_from_date("2026-13-01"), None);
        assert_eq!(days_from_date("nope"), None);
        let t = date_start_ms("2026-11-23", 7).unwrap();
        assert_eq!(local_time(t, 7), "23-11-2026 00:00:00 WIB");
        assert_eq!(local_time(t, 0), "22-11-2026 17:00:00 UTC");
        assert_eq!(local_time(t + 3_723_000, 8), "23-11-2026 02:02:03 WITA");
        assert_eq!(local_time(0, 0), "01-01-1970 00:00:00 UTC");
        assert_eq!(local_time(951_782_400_000, -3), "28-02-2000 21:00:00 UTC-3");
    }
}
