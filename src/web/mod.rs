//! The HTTP side: a read-only JSON API (calls, incidents, recordings) and a
//! health probe. Bound to loopback by default until logins arrive.

use crate::acd::runtime::AcdHandle;
use crate::store::{CallEventRow, CallRow, IncidentRow, Store, StoreError};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tower::ServiceExt;
use tracing::warn;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub recordings_dir: PathBuf,
    pub acd: AcdHandle,
}

/// The router, apart from any socket, so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/calls", get(list_calls))
        .route("/api/calls/{id}", get(get_call))
        .route("/api/incidents", get(list_incidents))
        .route("/api/incidents/{id}", get(get_incident))
        .route("/api/recordings/{call_id}", get(get_recording))
        .route("/api/queues", get(queues))
        .route("/api/agents", get(agents))
        .route("/api/agents/{id}/state", post(set_agent_state))
        .route("/api/abandoned", get(abandoned))
        .with_state(state)
}

/// What the client sees of an error: a plain message. The detail is logged.
#[derive(Debug)]
pub enum ApiError {
    NotFound(&'static str),
    Unavailable,
    /// The request cannot be done now; the message says why.
    Conflict(String),
    BadRequest(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "API request failed on the database");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what} not found")),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; calls are still being taken".to_string(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

fn limit(q: &ListQuery) -> i64 {
    q.limit.unwrap_or(100).clamp(1, 1000)
}

#[derive(Serialize)]
struct CallView {
    #[serde(flatten)]
    call: CallRow,
    recording_url: Option<String>,
}

impl From<CallRow> for CallView {
    fn from(call: CallRow) -> Self {
        let recording_url = call
            .recording_path
            .as_ref()
            .map(|_| format!("/api/recordings/{}", call.id));
        CallView {
            call,
            recording_url,
        }
    }
}

#[derive(Serialize)]
struct CallDetail {
    #[serde(flatten)]
    call: CallView,
    events: Vec<CallEventRow>,
}

#[derive(Serialize)]
struct IncidentDetail {
    #[serde(flatten)]
    incident: IncidentRow,
    calls: Vec<CallView>,
}

async fn healthz(State(s): State<AppState>) -> Response {
    let db = s.store.ping().await.is_ok();
    let body = serde_json::json!({
        "status": "ok",
        "database": if db { "ok" } else { "unavailable" },
    });
    // Calls are taken even when the database is down: still healthy.
    (StatusCode::OK, Json(body)).into_response()
}

async fn list_calls(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let rows = s.store.list_calls(limit(&q)).await?;
    Ok(Json(rows.into_iter().map(CallView::from).collect()))
}

async fn get_call(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallDetail>, ApiError> {
    let call = s
        .store
        .get_call(&id)
        .await?
        .ok_or(ApiError::NotFound("call"))?;
    let events = s.store.call_events(&id).await?;
    Ok(Json(CallDetail {
        call: call.into(),
        events,
    }))
}

async fn list_incidents(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<IncidentRow>>, ApiError> {
    Ok(Json(s.store.list_incidents(limit(&q)).await?))
}

async fn get_incident(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IncidentDetail>, ApiError> {
    let incident = s
        .store
        .get_incident(&id)
        .await?
        .ok_or(ApiError::NotFound("incident"))?;
    let calls = s.store.calls_of_incident(&id).await?;
    Ok(Json(IncidentDetail {
        incident,
        calls: calls.into_iter().map(CallView::from).collect(),
    }))
}

/// The recording as audio/wav, with HTTP range requests (RFC 9110 §14).
async fn get_recording(
    State(s): State<AppState>,
    Path(call_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let call = s
        .store
        .get_call(&call_id)
        .await?
        .ok_or(ApiError::NotFound("call"))?;
    let path = PathBuf::from(call.recording_path.ok_or(ApiError::NotFound("recording"))?);
    // Serve only files under the recordings folder.
    let inside = match (path.canonicalize(), s.recordings_dir.canonicalize()) {
        (Ok(p), Ok(root)) => p.starts_with(root),
        _ => false,
    };
    if !inside {
        return Err(ApiError::NotFound("recording"));
    }
    let service = tower_http::services::ServeFile::new_with_mime(
        &path,
        &"audio/wav".parse().expect("static mime"),
    );
    match service.oneshot(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(e) => {
            warn!(error = %e, "recording could not be served");
            Err(ApiError::NotFound("recording"))
        }
    }
}

async fn queues(State(s): State<AppState>) -> Json<Vec<crate::acd::QueueSnapshot>> {
    Json(s.acd.snapshot().await)
}

async fn agents(State(s): State<AppState>) -> Json<Vec<crate::acd::AgentSnapshot>> {
    Json(s.acd.agents().await)
}

#[derive(Deserialize)]
struct StateChange {
    /// `ready`, `not_ready` or `logged_out`.
    state: String,
    reason: Option<String>,
}

/// Login/ready/not-ready/logout for an agent.
async fn set_agent_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(change): Json<StateChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::acd::{AcdError, Requested};
    let req = match change.state.as_str() {
        "ready" => Requested::Ready,
        "not_ready" => Requested::NotReady(change.reason.unwrap_or_else(|| "break".into())),
        "logged_out" => Requested::LoggedOut,
        other => {
            return Err(ApiError::BadRequest(format!(
                "state must be ready, not_ready or logged_out, not `{other}`"
            )))
        }
    };
    match s.acd.set_state(id.clone(), req).await {
        Ok(()) => Ok(Json(serde_json::json!({ "id": id, "state": change.state }))),
        Err(AcdError::UnknownAgent(_)) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(ApiError::Conflict(e.to_string())),
    }
}

async fn abandoned(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let rows = s.store.list_abandoned(limit(&q)).await?;
    Ok(Json(rows.into_iter().map(CallView::from).collect()))
}
