//! The JSON API. Each handler checks the role of the logged-in user (the
//! login itself is checked before any handler runs: `auth::require_login`).

use super::auth::{self, Role, User};
use super::{ApiError, AppState};
use crate::live::{day_start, Figures, LiveEvent};
use crate::store::{
    now_ms, AuditRow, CallEventRow, CallRow, IncidentFilter, IncidentRow, IncidentUpdate,
    LinkOutcome, NewUser, UserRow, CATEGORIES, PRIORITIES, STATUSES,
};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tower::ServiceExt;
use tracing::{info, warn};

/// Who takes calls and fills in incidents.
const FLOOR: &[Role] = &[Role::CallTaker, Role::Supervisor, Role::Admin];
const SUPERVISE: &[Role] = &[Role::Supervisor, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

fn limit(q: &ListQuery) -> i64 {
    q.limit.unwrap_or(100).clamp(1, 1000)
}

#[derive(Serialize)]
pub struct CallView {
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
pub struct CallDetail {
    #[serde(flatten)]
    call: CallView,
    events: Vec<CallEventRow>,
    /// Warm transfers, oldest first.
    transfers: Vec<crate::store::TransferRow>,
}

#[derive(Serialize)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: IncidentRow,
    pub calls: Vec<CallView>,
    /// Every change, oldest first.
    pub audit: Vec<AuditRow>,
    /// Earlier incidents from the same number, newest first.
    pub history: Vec<IncidentRow>,
}

/// From state the parts keep current, never a query: it answers at once
/// whatever the database or the disk does.
pub async fn healthz(State(s): State<AppState>) -> Response {
    let behind = s.recorder.behind();
    let unsynced = s.recorder.unsynced();
    let recordings = if s.recorder.failing() {
        "failing"
    } else if s.recorder.losing() {
        "losing"
    } else if behind >= crate::media::recorder::BEHIND_WARN {
        "behind"
    } else if unsynced >= crate::media::recorder::UNSYNCED_WARN {
        "unsynced"
    } else {
        "ok"
    };
    let (role, node) = match &s.leadership {
        Some(l) => (l.role(), Some(l.node())),
        None => ("leader", None),
    };
    let body = serde_json::json!({
        "status": "ok",
        "role": role,
        "node": node,
        "database": s.store.health().state(),
        "recordings": recordings,
        "recordings_behind_ms": behind.as_millis() as u64,
        "recordings_unsynced_ms": unsynced.as_millis() as u64,
        "recordings_lost_ms": s.recorder.lost().as_millis() as u64,
    });
    // Calls are taken even when the database is down or recordings are
    // written late: still healthy, and the body says what is wrong.
    (StatusCode::OK, Json(body)).into_response()
}

pub async fn me(Extension(user): Extension<User>) -> Json<User> {
    Json(user)
}

/// The lists the forms choose from.
pub async fn meta(State(s): State<AppState>) -> Json<serde_json::Value> {
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(id, name)| serde_json::json!({ "id": id, "name": name }))
            .collect::<Vec<_>>()
    };
    Json(serde_json::json!({
        "categories": pairs(CATEGORIES),
        "statuses": pairs(STATUSES),
        "priorities": PRIORITIES.iter().map(|(id, name)| serde_json::json!({ "id": id, "name": name })).collect::<Vec<_>>(),
        "agencies": s.config.agencies,
        "roles": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        // Whether a trunk can place call-backs (`outbound`).
        "callbacks": s.config.server.trunks.iter().any(|t| t.outbound.is_some()),
    }))
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// A call, if this user may see it: the floor sees all, a dispatcher the
/// calls of their agency's incidents.
async fn visible_call(s: &AppState, user: &User, id: &str) -> Result<CallRow, ApiError> {
    if !user.is(FLOOR) {
        user.require(&[Role::Dispatcher])?;
        let agency = s.store.call_agency(id).await?;
        if !user.sees_agency(agency.as_deref()) {
            return Err(ApiError::NotFound("call"));
        }
    }
    s.store
        .get_call(id)
        .await?
        .ok_or(ApiError::NotFound("call"))
}

pub async fn list_calls(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    user.require(FLOOR)?;
    let rows = s.store.list_calls(limit(&q)).await?;
    Ok(Json(rows.into_iter().map(CallView::from).collect()))
}

pub async fn get_call(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<CallDetail>, ApiError> {
    let call = visible_call(&s, &user, &id).await?;
    let events = s.store.call_events(&id).await?;
    let transfers = s.store.transfers_of_call(&id).await?;
    Ok(Json(CallDetail {
        call: call.into(),
        events,
        transfers,
    }))
}

pub async fn list_incidents(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(mut f): Query<IncidentFilter>,
) -> Result<Json<Vec<IncidentRow>>, ApiError> {
    if let Some(mine) = user.agency_filter() {
        f.agency = Some(mine.into());
    }
    Ok(Json(s.store.search_incidents(&f).await?))
}

/// Incidents a call can be linked to (the last 24 hours, still open).
pub async fn open_incidents(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
) -> Result<Json<Vec<IncidentRow>>, ApiError> {
    user.require(FLOOR)?;
    let since = now_ms() - crate::store::RECENT.as_millis() as i64;
    Ok(Json(s.store.open_incidents(since, 100).await?))
}

pub async fn incident_detail(
    s: &AppState,
    user: &User,
    id: &str,
) -> Result<IncidentDetail, ApiError> {
    let incident = s
        .store
        .get_incident(id)
        .await?
        .filter(|i| user.sees_agency(i.agency.as_deref()))
        .ok_or(ApiError::NotFound("incident"))?;
    let calls = s.store.calls_of_incident(id).await?;
    let audit = s.store.incident_audit(id).await?;
    let history = match &incident.caller_number {
        Some(n) => {
            s.store
                .incidents_of_number(n, id, user.agency_filter(), 10)
                .await?
        }
        None => Vec::new(),
    };
    Ok(IncidentDetail {
        incident,
        calls: calls.into_iter().map(CallView::from).collect(),
        audit,
        history,
    })
}

pub async fn get_incident(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<IncidentDetail>, ApiError> {
    Ok(Json(incident_detail(&s, &user, &id).await?))
}

/// Statuses a dispatcher sets as their units work.
const DISPATCH_STATUSES: &[&str] = &["received", "unit_sent", "on_scene", "closed"];

fn check_update(s: &AppState, user: &User, u: &IncidentUpdate) -> Result<(), ApiError> {
    if user.role == Role::Dispatcher {
        let only_status = u.category.is_none()
            && u.priority.is_none()
            && u.address.is_none()
            && u.notes.is_none()
            && u.agency.is_none();
        if !only_status {
            return Err(ApiError::Forbidden);
        }
    } else {
        user.require(FLOOR)?;
    }
    fn filled(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(c) = filled(&u.category) {
        if !CATEGORIES.iter().any(|(id, _)| *id == c) {
            return Err(ApiError::BadRequest(
                "unknown_category",
                format!("unknown category `{c}`"),
            ));
        }
    }
    if let Some(p) = u.priority {
        if !PRIORITIES.iter().any(|(id, _)| *id == p) {
            return Err(ApiError::BadRequest(
                "bad_priority",
                "priority must be 1..4".into(),
            ));
        }
    }
    if let Some(a) = filled(&u.agency) {
        if !s.config.agencies.iter().any(|x| x.id == a) {
            return Err(ApiError::BadRequest(
                "unknown_agency",
                format!("unknown agency `{a}`"),
            ));
        }
    }
    if let Some(st) = &u.status {
        let allowed = if user.role == Role::Dispatcher {
            DISPATCH_STATUSES.contains(&st.as_str())
        } else {
            STATUSES.iter().any(|(id, _)| *id == st && *id != "merged")
        };
        if !allowed {
            return Err(ApiError::BadRequest(
                "status_not_allowed",
                format!("status `{st}` cannot be set here"),
            ));
        }
    }
    for (name, v, max) in [("address", &u.address, 500), ("notes", &u.notes, 8000)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(ApiError::BadRequest(
                "too_long",
                format!("{name} is longer than {max} characters"),
            ));
        }
    }
    Ok(())
}

pub async fn update_incident(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Json(change): Json<IncidentUpdate>,
) -> Result<Json<IncidentDetail>, ApiError> {
    check_update(&s, &user, &change)?;
    let before = s
        .store
        .get_incident(&id)
        .await?
        .filter(|i| user.sees_agency(i.agency.as_deref()))
        .ok_or(ApiError::NotFound("incident"))?;
    if before.status == "merged" {
        return Err(ApiError::Conflict(
            "incident_merged",
            format!(
                "this incident was merged into {}; change that one",
                before.merged_into.unwrap_or_default()
            ),
        ));
    }
    let after = s
        .store
        .update_incident(&id, &change, &user.username, now_ms())
        .await?
        .ok_or(ApiError::NotFound("incident"))?;
    info!(incident = %id, user = %user.username, "incident updated");
    let previous_agency = (before.agency != after.agency)
        .then_some(before.agency)
        .flatten();
    s.live.send(LiveEvent::Incident {
        incident: after,
        previous_agency,
    });
    s.live.calls_changed();
    Ok(Json(incident_detail(&s, &user, &id).await?))
}

#[derive(Deserialize)]
pub struct LinkRequest {
    incident_id: String,
}

/// Moves a call to another open incident (the same fire, reported twice).
pub async fn link_call(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(call_id): Path<String>,
    Json(req): Json<LinkRequest>,
) -> Result<Json<IncidentDetail>, ApiError> {
    user.require(FLOOR)?;
    let outcome = s
        .store
        .link_call(&call_id, &req.incident_id, &user.username, now_ms())
        .await?;
    match outcome {
        LinkOutcome::Linked { from, merged } => {
            info!(call = %call_id, %from, to = %req.incident_id, merged, user = %user.username, "call linked to another incident");
            for id in [&from, &req.incident_id] {
                if let Some(incident) = s.store.get_incident(id).await? {
                    s.live.send(LiveEvent::Incident {
                        incident,
                        previous_agency: None,
                    });
                }
            }
        }
        LinkOutcome::AlreadyThere => {}
        LinkOutcome::NoCall => return Err(ApiError::NotFound("call")),
        LinkOutcome::NoIncident => return Err(ApiError::NotFound("incident")),
        LinkOutcome::TargetNotOpen => {
            return Err(ApiError::Conflict(
                "incident_not_open",
                "that incident is closed or merged; link to an open one".into(),
            ))
        }
    }
    Ok(Json(incident_detail(&s, &user, &req.incident_id).await?))
}

/// The recording as audio/wav, with HTTP range requests (RFC 9110 §14).
pub async fn get_recording(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(call_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let call = visible_call(&s, &user, &call_id).await?;
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

pub async fn queues(State(s): State<AppState>) -> Json<Vec<crate::acd::QueueSnapshot>> {
    Json(s.acd.snapshot().await)
}

pub async fn agents(State(s): State<AppState>) -> Json<Vec<crate::acd::AgentSnapshot>> {
    Json(s.acd.agents().await)
}

#[derive(Deserialize)]
pub struct StateChange {
    /// `ready`, `not_ready` or `logged_out`.
    state: String,
    reason: Option<String>,
}

/// Ready/not-ready/logout for an agent: their own, or anyone's for a
/// supervisor.
pub async fn set_agent_state(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Json(change): Json<StateChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::acd::{AcdError, Requested};
    if !user.is(SUPERVISE) && user.agent_id.as_deref() != Some(id.as_str()) {
        return Err(ApiError::Forbidden);
    }
    let req = match change.state.as_str() {
        "ready" => Requested::Ready,
        "not_ready" => Requested::NotReady(change.reason.unwrap_or_else(|| "break".into())),
        "logged_out" => Requested::LoggedOut,
        other => {
            return Err(ApiError::BadRequest(
                "bad_state",
                format!("state must be ready, not_ready or logged_out, not `{other}`"),
            ))
        }
    };
    match s.acd.set_state(id.clone(), req).await {
        Ok(()) => {
            info!(agent = %id, state = %change.state, user = %user.username, "agent state set from the panel");
            Ok(Json(serde_json::json!({ "id": id, "state": change.state })))
        }
        Err(AcdError::UnknownAgent(_)) => Err(ApiError::NotFound("agent")),
        Err(e @ AcdError::NotRegistered) => Err(ApiError::Conflict("no_phone", e.to_string())),
        Err(e @ AcdError::Busy) => Err(ApiError::Conflict("agent_busy", e.to_string())),
        Err(e) => Err(ApiError::Conflict("agent_state_refused", e.to_string())),
    }
}

pub async fn abandoned(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<AbandonedView>>, ApiError> {
    user.require(SUPERVISE)?;
    let rows = s.store.list_abandoned(limit(&q)).await?;
    // A repeat prank caller's hang-up is no one to call back.
    let rows = rows
        .into_iter()
        .filter(|r| s.pranks.of(r.call.caller_number.as_deref()) == 0);
    Ok(Json(rows.map(AbandonedView::from).collect()))
}

#[derive(Serialize)]
pub struct AbandonedView {
    #[serde(flatten)]
    call: CallView,
    got_through_at: Option<i64>,
}

impl From<crate::store::AbandonedRow> for AbandonedView {
    fn from(r: crate::store::AbandonedRow) -> Self {
        AbandonedView {
            call: r.call.into(),
            got_through_at: r.got_through_at,
        }
    }
}

#[derive(serde::Serialize)]
pub struct PrankNumber {
    pub number: String,
    pub pranks: u32,
}

/// The repeat prank callers now: their calls wait behind every other.
pub async fn pranks(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
) -> Result<Json<Vec<PrankNumber>>, ApiError> {
    user.require(SUPERVISE)?;
    let list = s.pranks.list().into_iter();
    Ok(Json(
        list.map(|(number, pranks)| PrankNumber { number, pranks })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub struct ClearPranks {
    pub number: String,
}

/// A supervisor clears a number: its pranks so far no longer count, and
/// its next call waits like anyone's.
pub async fn clear_pranks(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Json(body): Json<ClearPranks>,
) -> Result<StatusCode, ApiError> {
    user.require(SUPERVISE)?;
    let number = crate::pranks::normalise(&body.number);
    if number.is_empty() {
        return Err(ApiError::BadRequest(
            "no_number",
            "a number is needed".into(),
        ));
    }
    s.store
        .clear_pranks(&number, now_ms(), &user.username)
        .await?;
    tracing::info!(%number, by = %user.username, "repeat prank caller cleared");
    s.pranks.load(&s.store, now_ms()).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn stats_today(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
) -> Result<Json<Figures>, ApiError> {
    user.require(SUPERVISE)?;
    let start = day_start(now_ms(), s.config.server.http.utc_offset_hours);
    let counts = s.store.day_counts(start, start + 24 * 3600 * 1000).await?;
    Ok(Json(Figures::from_counts(start, counts)))
}

/// Calls an abandoned caller back through the trunk, on the same incident.
pub async fn callback(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(call_id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    user.require(SUPERVISE)?;
    let call = s
        .store
        .get_call(&call_id)
        .await?
        .ok_or(ApiError::NotFound("call"))?;
    let Some(callbacks) = &s.callbacks else {
        return Err(ApiError::Conflict(
            "callbacks_off",
            "call-backs are not running".into(),
        ));
    };
    match callbacks.start(call, &user.username).await {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "callback_call_id": id })),
        )),
        Err(why) => Err(ApiError::Conflict("callback_refused", why)),
    }
}

pub async fn list_users(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
) -> Result<Json<Vec<UserRow>>, ApiError> {
    user.require(ADMIN)?;
    Ok(Json(s.store.list_users().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub username: String,
    pub display_name: Option<String>,
    pub role: String,
    pub agency: Option<String>,
    pub agent_id: Option<String>,
    pub password: String,
}

/// Checks a new user against the config and makes its record (the
/// password hashed). Shared by the admin page and `siaga user add`.
pub fn new_user(config: &crate::config::Config, r: UserRequest) -> Result<NewUser, String> {
    let username = r.username.trim().to_string();
    let ok = !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !ok {
        return Err("user names are letters, digits and - _ . @ (at most 64)".into());
    }
    let role = Role::parse(&r.role).ok_or_else(|| {
        format!(
            "role must be call_taker, dispatcher, supervisor or admin, not `{}`",
            r.role
        )
    })?;
    let agent_id = r.agent_id.filter(|a| !a.trim().is_empty());
    let agent = match &agent_id {
        Some(a) => Some(
            config
                .agents
                .get(a)
                .ok_or_else(|| format!("no agent `{a}` in sip-config/agents.toml"))?,
        ),
        None => None,
    };
    let agency = r
        .agency
        .filter(|a| !a.trim().is_empty())
        .or_else(|| agent.map(|a| a.agency.clone()));
    if let Some(a) = &agency {
        if !config.agencies.iter().any(|x| &x.id == a) {
            return Err(format!("no agency `{a}` in sip-config/agencies.toml"));
        }
    }
    if role == Role::Dispatcher && agency.is_none() {
        return Err("a dispatcher works for an agency: give --agency or an agent".into());
    }
    auth::check_password(&username, &r.password)?;
    let password_hash = auth::hash_password(&r.password)?;
    let at = now_ms();
    Ok(NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        display_name: r
            .display_name
            .filter(|d| !d.trim().is_empty())
            .or_else(|| agent.map(|a| a.name.clone()))
            .unwrap_or_else(|| username.clone()),
        username,
        role: role.as_str().to_string(),
        agency,
        agent_id,
        password_hash,
        at,
    })
}

pub async fn create_user(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Json(req): Json<UserRequest>,
) -> Result<(StatusCode, Json<UserRow>), ApiError> {
    user.require(ADMIN)?;
    let config = s.config.clone();
    let new = tokio::task::spawn_blocking(move || new_user(&config, req))
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(|m| ApiError::BadRequest("bad_user", m))?;
    if s.store.user_by_username(&new.username).await?.is_some() {
        return Err(ApiError::Conflict(
            "user_exists",
            format!("user `{}` exists already", new.username),
        ));
    }
    s.store.create_user(&new).await?;
    info!(username = %new.username, role = %new.role, by = %user.username, "panel user added");
    let row = s
        .store
        .user_by_id(&new.id)
        .await?
        .ok_or(ApiError::Unavailable)?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    disabled: Option<bool>,
    password: Option<String>,
}

pub async fn update_user(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Json(change): Json<UserChange>,
) -> Result<Json<UserRow>, ApiError> {
    user.require(ADMIN)?;
    let target = s
        .store
        .user_by_id(&id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if let Some(disabled) = change.disabled {
        if disabled && target.id == user.id {
            return Err(ApiError::Conflict(
                "self_disable",
                "you cannot disable yourself".into(),
            ));
        }
        s.store.set_disabled(&id, disabled, now_ms()).await?;
        info!(username = %target.username, disabled, by = %user.username, "panel user changed");
    }
    if let Some(pw) = change.password {
        auth::check_password(&target.username, &pw)
            .map_err(|m| ApiError::BadRequest("bad_password", m))?;
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
            .await
            .map_err(|_| ApiError::Unavailable)?
            .map_err(|m| ApiError::BadRequest("bad_password", m))?;
        s.store.set_password(&id, &hash, now_ms()).await?;
        info!(username = %target.username, by = %user.username, "panel password reset");
    }
    Ok(Json(
        s.store
            .user_by_id(&id)
            .await?
            .ok_or(ApiError::NotFound("user"))?,
    ))
}

/// Who may steer a call's transfer: the agent talking on it, or a
/// supervisor.
/// The calls' controls, for a user who may steer `call_id` (`may_steer`).
fn steer(s: &AppState, user: &User, call_id: &str) -> Result<crate::call::Controls, ApiError> {
    may_steer(s, user, call_id)?;
    s.controls
        .clone()
        .ok_or_else(|| ApiError::Conflict("calls_off", "calls are not running".into()))
}

fn may_steer(s: &AppState, user: &User, call_id: &str) -> Result<(), ApiError> {
    user.require(FLOOR)?;
    if user.is(SUPERVISE) {
        return Ok(());
    }
    let mine = user
        .agent_id
        .as_deref()
        .and_then(|a| s.live.bridged_to(a))
        .is_some_and(|b| b.call_id == call_id);
    if mine {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[derive(Deserialize)]
pub struct TransferRequest {
    /// The agency; may be left out when `agent` is given.
    agency: Option<String>,
    /// A named dispatcher (an agent id) instead of any of the agency's.
    agent: Option<String>,
}

/// Starts a warm transfer: the incident goes to the agency at once (its
/// dispatchers see it while their phones ring), the caller hears the
/// hold prompt, the agency's queue rings.
pub async fn transfer(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(call_id): Path<String>,
    Json(req): Json<TransferRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let controls = steer(&s, &user, &call_id)?;
    let named = req.agent.as_ref().filter(|a| !a.is_empty());
    let agency = match (named, &req.agency) {
        (Some(a), given) => {
            let of = &s
                .config
                .agents
                .get(a)
                .ok_or_else(|| {
                    ApiError::BadRequest("unknown_agent", format!("unknown agent `{a}`"))
                })?
                .agency;
            if given.as_ref().is_some_and(|g| g != of) {
                return Err(ApiError::BadRequest(
                    "agent_other_agency",
                    format!("agent `{a}` works for `{of}`"),
                ));
            }
            of.clone()
        }
        (None, Some(agency)) => agency.clone(),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "transfer_target_missing",
                "name an agency or an agent".into(),
            ))
        }
    };
    if !s.config.agencies.iter().any(|a| a.id == agency) {
        return Err(ApiError::BadRequest(
            "unknown_agency",
            format!("unknown agency `{agency}`"),
        ));
    }
    let by = user.username.clone();
    let (to, agent) = (agency.clone(), named.cloned());
    controls
        .send(&call_id, |reply| crate::call::Control::Transfer {
            agency: to,
            agent,
            by,
            reply,
        })
        .await
        .map_err(|m| ApiError::Conflict("transfer_refused", m))?;
    // The incident is the agency's from now on.
    if let Some(call) = s.store.get_call(&call_id).await? {
        let change = IncidentUpdate {
            agency: Some(agency.clone()),
            ..Default::default()
        };
        let before = s.store.get_incident(&call.incident_id).await?;
        if let Some(after) = s
            .store
            .update_incident(&call.incident_id, &change, &user.username, now_ms())
            .await?
        {
            s.live.send(LiveEvent::Incident {
                previous_agency: before
                    .and_then(|b| b.agency)
                    .filter(|a| Some(a) != after.agency.as_ref()),
                incident: after,
            });
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(
            serde_json::json!({ "call_id": call_id, "agency": agency, "agent": named, "state": "ringing" }),
        ),
    ))
}

/// The call-taker ends their call from the panel (a quick disposition
/// on a desk phone's call): the caller's leg and the phone's end.
pub async fn hang_up(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path(call_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    use crate::call::Control;
    let controls = steer(&s, &user, &call_id)?;
    let by = user.username.clone();
    controls
        .send(&call_id, |reply| Control::HangUp { by, reply })
        .await
        .map_err(|m| ApiError::Conflict("hangup_refused", m))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `complete`, `conference` or `cancel` a warm transfer in progress.
pub async fn transfer_action(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path((call_id, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::call::Control;
    let controls = steer(&s, &user, &call_id)?;
    let by = user.username.clone();
    let result = match action.as_str() {
        "complete" => {
            controls
                .send(&call_id, |reply| Control::Complete { by, reply })
                .await
        }
        "conference" => {
            controls
                .send(&call_id, |reply| Control::Conference { by, reply })
                .await
        }
        "cancel" => {
            controls
                .send(&call_id, |reply| Control::Cancel { by, reply })
                .await
        }
        _ => return Err(ApiError::NotFound("transfer action")),
    };
    result.map_err(|m| ApiError::Conflict("transfer_action_refused", m))?;
    Ok(Json(
        serde_json::json!({ "call_id": call_id, "done": action }),
    ))
}
