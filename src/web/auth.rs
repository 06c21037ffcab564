//! Panel logins: users with roles, Argon2id password hashes, and sessions
//! held in an HttpOnly, SameSite=Strict cookie whose token the database
//! keeps only as a SHA-256.

use super::{ApiError, AppState};
use crate::store::{now_ms, UserRow};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COOKIE: &str = "siaga_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    CallTaker,
    Dispatcher,
    Supervisor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::CallTaker,
        Role::Dispatcher,
        Role::Supervisor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::CallTaker => "call_taker",
            Role::Dispatcher => "dispatcher",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// What the panel calls the role, in Indonesian.
    pub fn label(self) -> &'static str {
        match self {
            Role::CallTaker => "penerima panggilan",
            Role::Dispatcher => "dispatcher",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// `call_taker` or `call-taker`, and so on.
    pub fn parse(s: &str) -> Option<Role> {
        let s = s.replace('-', "_");
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The panel page a user of this role starts on.
    pub fn home(self) -> &'static str {
        match self {
            Role::CallTaker => "/calltaker",
            Role::Dispatcher => "/dispatcher",
            Role::Supervisor => "/supervisor",
            Role::Admin => "/admin",
        }
    }
}

/// The logged-in user of a request.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub agency: Option<String>,
    pub agent_id: Option<String>,
}

impl User {
    fn from_row(row: UserRow) -> Option<User> {
        Some(User {
            role: Role::parse(&row.role)?,
            id: row.id,
            username: row.username,
            display_name: row.display_name,
            agency: row.agency,
            agent_id: row.agent_id,
        })
    }

    pub fn is(&self, roles: &[Role]) -> bool {
        roles.contains(&self.role)
    }

    /// Refuses the request unless the user has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.is(roles) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Whether this user may see what belongs to `agency`: everyone but a
    /// dispatcher sees every agency; a dispatcher only their own. Every
    /// check of a dispatcher's view goes through here or `agency_filter`.
    pub fn sees_agency(&self, agency: Option<&str>) -> bool {
        match self.agency_filter() {
            None => true,
            Some(mine) => agency == Some(mine),
        }
    }

    /// The one agency whose records a query may return to this user, or
    /// None for every agency: a dispatcher's own agency. A dispatcher
    /// without one gets `(none)`, which no agency id can be (config allows
    /// letters, digits, `-` and `_`), so they see nothing.
    pub fn agency_filter(&self) -> Option<&str> {
        (self.role == Role::Dispatcher).then(|| self.agency.as_deref().unwrap_or("(none)"))
    }
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's
/// recommended minimum), as a PHC string with its own salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password policy an operator can live with: long enough, not the user name.
pub fn check_password(username: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < 10 {
        return Err("use a password of at least 10 characters".into());
    }
    if password.eq_ignore_ascii_case(username) {
        return Err("the password must not be the user name".into());
    }
    Ok(())
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The user of a session cookie, if it is valid now.
pub async fn session_user(state: &AppState, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let row = state
        .store
        .session_user(&token_digest(&token), now_ms())
        .await?;
    Ok(row.and_then(User::from_row))
}

/// Lets through only requests with a valid session; puts the `User` in
/// the request's extensions. API requests without one get 401, pages a
/// redirect to the login page. Requests that change something must come
/// from our own pages (Origin, when sent, names this host).
pub async fn require_login(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let api = req.uri().path().starts_with("/api/");
    // Requests that change something, and the live socket (a WebSocket is
    // not bound by CORS, and another port of this host is "same-site" for
    // the cookie), must come from our own pages.
    let changes = req.method() != Method::GET && req.method() != Method::HEAD;
    if (changes || req.uri().path() == "/api/live") && !same_origin(req.headers()) {
        return ApiError::Forbidden.into_response();
    }
    match session_user(&state, req.headers()).await {
        Ok(Some(user)) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Ok(None) if api => ApiError::Unauthorized.into_response(),
        Ok(None) => {
            let next = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            Redirect::to(&format!("/login?next={}", url_encode(next))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser's cross-site request (those carry Origin).
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Brakes on password guessing, decided before the password is checked:
/// every attempt counts as a failure from the moment it starts (and is
/// taken back if it succeeds), so parallel guesses cannot all slip past.
///
/// - One name from one address: `PAIR_MAX` failures, then that pair waits
///   out `WINDOW`. A stranger locks only themselves out this way.
/// - One address, any names: `ADDRESS_MAX` failures, then it waits
///   (spraying names).
/// - One name, from addresses it never logged in from: past `NAME_MAX`
///   failures, one attempt per `NAME_PACE` (guessing from many addresses).
///   Addresses where the name logged in before are never slowed by this,
///   so a stranger cannot keep staff out of their own desk.
///
/// Pure: time comes in as an argument.
#[derive(Debug, Default)]
pub struct LoginGuard {
    pairs: HashMap<(String, IpAddr), Count>,
    addresses: HashMap<IpAddr, Count>,
    names: HashMap<String, NameCount>,
    /// Addresses each name logged in from, and when last.
    known: HashMap<String, HashMap<IpAddr, Instant>>,
    last_purge: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct NameCount {
    n: u32,
    last: Instant,
    /// The last attempt let through once the name was being paced.
    paced: Option<Instant>,
}

const PAIR_MAX: u32 = 5;
const ADDRESS_MAX: u32 = 20;
const NAME_MAX: u32 = 20;
const WINDOW: Duration = Duration::from_secs(5 * 60);
const NAME_PACE: Duration = Duration::from_secs(5);
/// How long an address stays known for a name after its last login.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why an attempt was refused before its password was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures of this name from this address.
    Pair,
    /// Too many failures from this address.
    Address,
    /// This name is being guessed from many addresses: one try at a time.
    Paced,
}

impl LoginGuard {
    /// Counts an attempt of `name` from `ip` as a failure, unless a brake
    /// refuses it first.
    pub fn begin(&mut self, name: &str, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.purge(now);
        let live = |c: Option<&Count>| {
            c.filter(|c| now.saturating_duration_since(c.last) < WINDOW)
                .map_or(0, |c| c.n)
        };
        if live(self.pairs.get(&(name.to_string(), ip))) >= PAIR_MAX {
            return Err(Refusal::Pair);
        }
        if live(self.addresses.get(&ip)) >= ADDRESS_MAX {
            return Err(Refusal::Address);
        }
        let known = self
            .known
            .get(name)
            .and_then(|a| a.get(&ip))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR);
        if !known {
            let entry = self.names.entry(name.to_string()).or_insert(NameCount {
                n: 0,
                last: now,
                paced: None,
            });
            if now.saturating_duration_since(entry.last) >= WINDOW {
                *entry = NameCount {
                    n: 0,
                    last: now,
                    paced: None,
                };
            }
            if entry.n >= NAME_MAX {
                if entry
                    .paced
                    .is_some_and(|p| now.saturating_duration_since(p) < NAME_PACE)
                {
                    return Err(Refusal::Paced);
                }
                entry.paced = Some(now);
            }
            entry.n += 1;
            entry.last = now;
        }
        for c in [
            self.pairs
                .entry((name.to_string(), ip))
                .or_insert(Count { n: 0, last: now }),
            self.addresses
                .entry(ip)
                .or_insert(Count { n: 0, last: now }),
        ] {
            if now.saturating_duration_since(c.last) >= WINDOW {
                c.n = 0;
            }
            c.n += 1;
            c.last = now;
        }
        Ok(())
    }

    /// The attempt begun for `name` from `ip` succeeded: it was no
    /// failure, that pair starts clean, and the address is known.
    pub fn succeeded(&mut self, name: &str, ip: IpAddr, now: Instant) {
        self.pairs.remove(&(name.to_string(), ip));
        if let Some(c) = self.addresses.get_mut(&ip) {
            c.n = c.n.saturating_sub(1);
        }
        let was_known = self.known.get(name).is_some_and(|a| a.contains_key(&ip));
        if !was_known {
            if let Some(c) = self.names.get_mut(name) {
                c.n = c.n.saturating_sub(1);
            }
        }
        self.known
            .entry(name.to_string())
            .or_default()
            .insert(ip, now);
    }

    /// Forgets counts older than the window, at most once a second, so a
    /// spray of names from many addresses does not grow the maps for good.
    fn purge(&mut self, now: Instant) {
        if self
            .last_purge
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_purge = Some(now);
        let fresh = |last: Instant| now.saturating_duration_since(last) < WINDOW;
        self.pairs.retain(|_, c| fresh(c.last));
        self.addresses.retain(|_, c| fresh(c.last));
        self.names.retain(|_, c| fresh(c.last));
        self.known.retain(|_, a| {
            a.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            !a.is_empty()
        });
    }
}

/// Password checks running at once at most: Argon2id takes 19 MiB and
/// about 50 ms of a core each, so 500 logins at once once took 4.3 GB.
/// Beyond these, a login waits its turn up to `VERIFY_WAIT`, then is told
/// to try again; every login, for a known name or not, takes a turn.
const VERIFY_AT_ONCE: usize = 2;
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The login's shared state: the guard and the password checks' turns.
#[derive(Clone)]
pub struct Logins {
    guard: Arc<Mutex<LoginGuard>>,
    verifying: Arc<tokio::sync::Semaphore>,
}

impl Default for Logins {
    fn default() -> Self {
        Logins {
            guard: Arc::default(),
            verifying: Arc::new(tokio::sync::Semaphore::new(VERIFY_AT_ONCE)),
        }
    }
}

impl Logins {
    fn guard(&self) -> std::sync::MutexGuard<'_, LoginGuard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /api/login`: a session cookie for a right user name and password.
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError::Forbidden);
    }
    let name = login.username.trim().to_string();
    // The TCP peer: what the per-address brakes count (never a header).
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(ConnectInfo(a))| {
        a.ip()
    });
    if let Err(why) = state.logins.guard().begin(&name, ip, Instant::now()) {
        tracing::warn!(username = %name, %ip, ?why, "panel login refused before its password was checked");
        return Err(ApiError::TooMany(
            "too_many_logins",
            "Terlalu banyak percobaan masuk yang gagal; tunggu beberapa menit.".into(),
        ));
    }
    let Ok(_turn) = tokio::time::timeout(
        VERIFY_WAIT,
        Arc::clone(&state.logins.verifying).acquire_owned(),
    )
    .await
    else {
        return Err(ApiError::TooMany(
            "login_busy",
            "Panel sedang sibuk memeriksa kata sandi; coba lagi sebentar.".into(),
        ));
    };
    let row = state.store.user_by_username(&name).await?;
    // Verify against something even for an unknown name, so the time
    // taken does not tell which names exist.
    let hash = row
        .as_ref()
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = login.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    drop(_turn);
    let user = match row {
        Some(r) if ok && r.disabled == 0 => User::from_row(r),
        _ => None,
    };
    let Some(user) = user else {
        tracing::warn!(username = %name, %ip, "panel login refused");
        return Err(ApiError::Unauthorized);
    };
    state.logins.guard().succeeded(&name, ip, Instant::now());
    let token = hex::encode(rand::random::<[u8; 32]>());
    let now = now_ms();
    let ttl = state.config.server.http.session_ttl;
    state
        .store
        .create_session(
            &token_digest(&token),
            &user.id,
            now,
            now + ttl.as_millis() as i64,
        )
        .await?;
    tracing::info!(username = %user.username, role = user.role.as_str(), "panel login");
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if state.config.server.http.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "user": user, "home": user.role.home() })),
    )
        .into_response())
}

/// `POST /api/logout`: ends the session and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = cookie_token(&headers) {
        state.store.delete_session(&token_digest(&token)).await?;
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, clear)],
        Json(serde_json::json!({ "ok": true })),
    )
        .into_response())
}

/// An Argon2id hash of a password nobody has, for unknown user names.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2lhZ2FkdW1teXNhbHQ$3sXDvtP1CgdTEZgIWVymvXDJbHCDm9vh7SgJHMF3Tmo";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("kata-sandi-panjang").unwrap();
        let b = hash_password("kata-sandi-panjang").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password(&a, "kata-sandi-panjang"));
        assert!(!verify_password(&a, "kata-sandi-panjanG"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn dummy_hash_is_a_valid_hash() {
        use argon2::password_hash::PasswordHash;
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password(DUMMY_HASH, ""));
    }

    #[test]
    fn roles_parse_both_spellings() {
        assert_eq!(Role::parse("call-taker"), Some(Role::CallTaker));
        assert_eq!(Role::parse("call_taker"), Some(Role::CallTaker));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn cookie_and_origin() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; siaga_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        h.insert(header::HOST, "127.0.0.1:8112".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8112".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }

    /// Five failures of one name from one address stop that pair, not the
    /// name elsewhere nor the address for other names; spraying names from
    /// one address stops the address; guessing one name from many
    /// addresses paces strangers to one try per NAME_PACE, never the desk
    /// the name logs in from. Attempts count before the check: parallel
    /// ones cannot slip past.
    #[test]
    fn login_brakes_stop_guessers_not_staff() {
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let mut g = LoginGuard::default();
        // Staff log in at their desk once.
        g.begin("sup", ip(1), t0).unwrap();
        g.succeeded("sup", ip(1), t0);

        // Thirty at once from one address: five begin, the rest refused.
        let started = (0..30)
            .filter(|_| g.begin("sup", ip(66), t0).is_ok())
            .count();
        assert_eq!(started, PAIR_MAX as usize);
        assert_eq!(g.begin("sup", ip(66), t0), Err(Refusal::Pair));
        // The name is not locked for its desk, nor the address for others.
        assert!(g.begin("sup", ip(1), t0).is_ok());
        g.succeeded("sup", ip(1), t0);
        assert!(g.begin("siti", ip(66), t0).is_ok());
        // The window passes: the pair may try again.
        assert!(g.begin("sup", ip(66), t0 + WINDOW).is_ok());

        // Spraying names from one address.
        let t1 = t0 + 2 * WINDOW;
        let mut refused = None;
        for k in 0..100 {
            if let Err(r) = g.begin(&format!("name{k}"), ip(77), t1) {
                refused = Some((k, r));
                break;
            }
        }
        assert_eq!(refused, Some((ADDRESS_MAX as usize, Refusal::Address)));

        // One name from many addresses: paced after NAME_MAX.
        let t2 = t1 + 2 * WINDOW;
        for k in 0..NAME_MAX as u8 {
            g.begin("sup", ip(100 + k), t2).unwrap();
        }
        assert!(g.begin("sup", ip(200), t2).is_ok(), "one paced try");
        assert_eq!(g.begin("sup", ip(201), t2), Err(Refusal::Paced));
        assert!(g.begin("sup", ip(202), t2 + NAME_PACE).is_ok());
        // The desk is never paced.
        for _ in 0..3 {
            assert!(g.begin("sup", ip(1), t2).is_ok());
            g.succeeded("sup", ip(1), t2);
        }
    }

    #[test]
    fn dispatcher_sees_only_own_agency() {
        let u = User {
            id: "1".into(),
            username: "d".into(),
            display_name: "D".into(),
            role: Role::Dispatcher,
            agency: Some("damkar".into()),
            agent_id: None,
        };
        assert!(u.sees_agency(Some("damkar")));
        assert!(!u.sees_agency(Some("polri")));
        assert!(!u.sees_agency(None));
        let s = User {
            role: Role::Supervisor,
            ..u
        };
        assert!(s.sees_agency(None));
    }
}
