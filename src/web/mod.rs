//! The HTTP side: the panel's pages, its JSON API (described in
//! `openapi.json`, served at /api/openapi.json), the live event socket,
//! recordings with range requests, and the /healthz probe. Every route but
//! /healthz, the login page and the static assets needs a session.

mod api;
pub use api::{new_user, UserRequest};
pub mod auth;
mod live;
mod pages;
pub mod serve;

use crate::acd::runtime::AcdHandle;
use crate::config::Config;
use crate::live::Live;
use crate::store::{Store, StoreError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::warn;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub recordings_dir: PathBuf,
    /// Tells /healthz how far behind the calls recordings are written.
    pub recorder: crate::media::recorder::Recorder,
    pub acd: AcdHandle,
    pub config: Arc<Config>,
    pub live: Live,
    pub logins: auth::Logins,
    /// Places call-backs to abandoned callers; absent where no call
    /// machinery runs (router tests).
    pub callbacks: Option<crate::call::Callbacks>,
    /// Reaches calls in progress (warm transfer); absent likewise.
    pub controls: Option<crate::call::Controls>,
    /// The browser softphones; absent likewise.
    pub phones: Option<crate::webphone::Phones>,
    /// Whether this node leads; absent likewise (it leads).
    pub leadership: Option<crate::cluster::Leadership>,
    /// The repeat prank callers, as calls see them.
    pub pranks: crate::pranks::Pranks,
}

/// The router, apart from any socket, so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    let public = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/login", get(pages::login))
        .route("/assets/{file}", get(pages::asset))
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout));
    let private = Router::new()
        .route("/", get(pages::home))
        .route("/calltaker", get(pages::calltaker))
        .route("/supervisor", get(pages::supervisor))
        .route("/dispatcher", get(pages::dispatcher))
        .route("/incidents", get(pages::incidents))
        .route("/incidents/{id}", get(pages::incident))
        .route("/admin", get(pages::admin))
        .route("/api/me", get(api::me))
        .route("/api/meta", get(api::meta))
        .route("/api/openapi.json", get(api::openapi))
        .route("/api/live", get(live::socket))
        .route("/api/calls", get(api::list_calls))
        .route("/api/calls/{id}", get(api::get_call))
        .route("/api/calls/{id}/incident", post(api::link_call))
        .route("/api/calls/{id}/callback", post(api::callback))
        .route("/api/calls/{id}/hangup", post(api::hang_up))
        .route("/api/calls/{id}/transfer", post(api::transfer))
        .route(
            "/api/calls/{id}/transfer/{action}",
            post(api::transfer_action),
        )
        .route("/api/incidents", get(api::list_incidents))
        .route("/api/incidents/open", get(api::open_incidents))
        .route(
            "/api/incidents/{id}",
            get(api::get_incident).patch(api::update_incident),
        )
        .route("/api/recordings/{call_id}", get(api::get_recording))
        .route("/api/queues", get(api::queues))
        .route("/api/agents", get(api::agents))
        .route("/api/agents/{id}/state", post(api::set_agent_state))
        .route("/api/abandoned", get(api::abandoned))
        .route("/api/pranks", get(api::pranks))
        .route("/api/pranks/clear", post(api::clear_pranks))
        .route("/api/stats/today", get(api::stats_today))
        .route("/api/users", get(api::list_users).post(api::create_user))
        .route("/api/users/{id}", axum::routing::patch(api::update_user))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_login,
        ));
    public
        .merge(private)
        .layer(middleware::from_fn_with_state(state.clone(), known_host))
        // A request's handler answers within this (a body trickled in
        // slowly ends here); a WebSocket's upgrade answers at once.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.server.http.request_timeout,
        ))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// Answers only requests for a host the panel is reached by
/// (`http.allowed_hosts`): a site whose name was pointed at this address
/// (DNS rebinding) gets 421 before any handler, the login's among them.
/// `/healthz` answers whatever the name (probes use their own).
async fn known_host(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if req.uri().path() == "/healthz" || s.config.server.http.host_allowed(host) {
        return next.run(req).await;
    }
    warn!(host, "request for a host the panel does not answer to");
    (
        axum::http::StatusCode::MISDIRECTED_REQUEST,
        "Alamat host ini tidak dilayani panel siaga.",
    )
        .into_response()
}

/// Pages and API alike: no framing, no sniffing, scripts only from us.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// What the client sees of an error: a plain message. The detail is logged.
#[derive(Debug)]
pub enum ApiError {
    NotFound(&'static str),
    Unavailable,
    /// The request cannot be done now: a code the panel translates, and
    /// the reason in English for API clients and logs.
    Conflict(&'static str, String),
    BadRequest(&'static str, String),
    /// No valid session.
    Unauthorized,
    /// Logged in, but not allowed this.
    Forbidden,
    TooMany(&'static str, String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "API request failed on the database");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable; calls are still being taken".to_string(),
            ),
            ApiError::Conflict(code, m) => (StatusCode::CONFLICT, code, m),
            ApiError::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "login_required",
                "log in first (POST /api/login)".to_string(),
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role may not do this".to_string(),
            ),
            ApiError::TooMany(code, m) => (StatusCode::TOO_MANY_REQUESTS, code, m),
        };
        (
            status,
            Json(serde_json::json!({ "error": message, "code": code })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    /// Every API route the router serves is in the OpenAPI document, and
    /// the document names no route the router lacks.
    #[test]
    fn openapi_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let documented: std::collections::BTreeSet<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        let src = include_str!("mod.rs");
        let routed: std::collections::BTreeSet<String> = src
            .split(".route(\n            \"")
            .chain(src.split(".route(\""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|p| p.starts_with("/api/") || *p == "/healthz")
            .map(str::to_string)
            .collect();
        assert!(routed.len() > 20, "found {routed:?}");
        assert_eq!(routed, documented);
    }
}
