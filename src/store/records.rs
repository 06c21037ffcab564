//! The writes of call records: each runs on a connection the caller
//! holds, so the store writer can put many into one transaction (one
//! commit, one fsync, for a whole batch of calls' records). Nothing here
//! begins or commits; `Store::apply` does.

use super::{CallId, IncidentRow, NewCall, NewIncident, RecordingOutcome, StoreError, RECENT};
use serde::Deserialize;
use sqlx::AnyConnection;

/// Opens the incident (with the caller's history counted) and the call
/// record.
pub(super) async fn insert_call(
    conn: &mut AnyConnection,
    call: &NewCall,
    inc: &NewIncident,
) -> Result<(), StoreError> {
    let (prior, recent) = match &inc.caller_number {
        Some(number) => {
            let prior: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM incidents WHERE caller_number = $1")
                    .bind(number)
                    .fetch_one(&mut *conn)
                    .await?;
            let recent: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM incidents WHERE caller_number = $1 AND created_at >= $2",
            )
            .bind(number)
            .bind(inc.created_at - RECENT.as_millis() as i64)
            .fetch_one(&mut *conn)
            .await?;
            (prior, recent)
        }
        None => (0, 0),
    };
    sqlx::query(
        "INSERT INTO incidents (id, status, service, caller_number, location_text, latitude, longitude, geolocation, prior_incidents, recent_incidents, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(inc.id.as_str())
    .bind("new")
    .bind(&inc.service)
    .bind(&inc.caller_number)
    .bind(&inc.location_text)
    .bind(inc.latitude)
    .bind(inc.longitude)
    .bind(&inc.geolocation)
    .bind(prior)
    .bind(recent)
    .bind(inc.created_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO calls (id, incident_id, sip_call_id, from_uri, to_uri, caller_number, dialed, service, route, queue, source, transport, trunk, status, arrived_at, node) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(call.id.as_str())
    .bind(call.incident_id.as_str())
    .bind(&call.sip_call_id)
    .bind(&call.from_uri)
    .bind(&call.to_uri)
    .bind(&call.caller_number)
    .bind(&call.dialed)
    .bind(&call.service)
    .bind(&call.route)
    .bind(&call.queue)
    .bind(&call.source)
    .bind(&call.transport)
    .bind(&call.trunk)
    .bind("arriving")
    .bind(call.arrived_at)
    .bind(&call.node)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn call_answered(
    conn: &mut AnyConnection,
    id: &CallId,
    at: i64,
    codec: &str,
    recording_path: Option<&str>,
    recording_error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE calls SET status = $1, answered_at = $2, codec = $3, recording_path = $4, recording_error = $5 WHERE id = $6",
    )
    .bind("queued")
    .bind(at)
    .bind(codec)
    .bind(recording_path)
    .bind(recording_error)
    .bind(id.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn agent_answered(
    conn: &mut AnyConnection,
    id: &CallId,
    agent: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE calls SET agent_id = $1, agent_answered_at = $2 WHERE id = $3")
        .bind(agent)
        .bind(at)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn call_queue(
    conn: &mut AnyConnection,
    id: &CallId,
    queue: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE calls SET queue = $1 WHERE id = $2")
        .bind(queue)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn call_event(
    conn: &mut AnyConnection,
    id: &CallId,
    at: i64,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO call_events (call_id, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(at)
        .bind(kind)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn call_ended(
    conn: &mut AnyConnection,
    id: &CallId,
    at: i64,
    wait_ms: Option<i64>,
    cause: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE calls SET status = $1, ended_at = $2, wait_ms = $3, end_cause = $4 WHERE id = $5",
    )
    .bind("ended")
    .bind(at)
    .bind(wait_ms)
    .bind(cause)
    .bind(id.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The call's recording was not made: its path goes, the reason stays.
pub(super) async fn recording_failed(
    conn: &mut AnyConnection,
    id: &CallId,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE calls SET recording_path = NULL, recording_error = $1 WHERE id = $2")
        .bind(error)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn recording_closed(
    conn: &mut AnyConnection,
    id: &CallId,
    outcome: &RecordingOutcome,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE calls SET recording_sha256 = $1, recording_error = COALESCE($2, recording_error), recording_lost_ms = $3 WHERE id = $4",
    )
    .bind(outcome.sha256.as_deref())
    .bind(outcome.error.as_deref())
    .bind(outcome.lost_ms)
    .bind(id.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A transfer begins: its row, and a line in the incident's audit trail.
pub(super) async fn transfer_started(
    conn: &mut AnyConnection,
    t: &NewTransfer,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transfers (id, call_id, incident_id, from_agent, agency, requested_by, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&t.id)
    .bind(&t.call_id)
    .bind(&t.incident_id)
    .bind(&t.from_agent)
    .bind(&t.agency)
    .bind(&t.requested_by)
    .bind(t.at)
    .execute(&mut *conn)
    .await?;
    let detail = format!(
        "{} -> {} (call {})",
        t.from_agent.as_deref().unwrap_or("-"),
        t.agency,
        t.call_id
    );
    audit(
        conn,
        &t.incident_id,
        t.at,
        &t.requested_by,
        "transfer_started",
        None,
        None,
        Some(detail),
    )
    .await?;
    Ok(())
}

pub(super) async fn transfer_answered(
    conn: &mut AnyConnection,
    id: &str,
    agent: &str,
    at: i64,
    recording_path: Option<&str>,
    recording_error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE transfers SET to_agent = $1, answered_at = $2, recording_path = $3, recording_error = $4 WHERE id = $5",
    )
    .bind(agent)
    .bind(at)
    .bind(recording_path)
    .bind(recording_error)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A transfer ends: its outcome, and a line in the incident's timeline.
pub(super) async fn transfer_ended(
    conn: &mut AnyConnection,
    id: &str,
    at: i64,
    outcome: &str,
    actor: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE transfers SET ended_at = $1, outcome = $2 WHERE id = $3 AND ended_at IS NULL",
    )
    .bind(at)
    .bind(outcome)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let row: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT incident_id, agency, to_agent FROM transfers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((incident, agency, to_agent)) = row {
        let detail = format!(
            "{outcome}: {agency} {}",
            to_agent.as_deref().unwrap_or("(no dispatcher)")
        );
        audit(
            conn,
            &incident,
            at,
            actor,
            "transfer_ended",
            None,
            None,
            Some(detail),
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn transfer_recording(
    conn: &mut AnyConnection,
    id: &str,
    outcome: &RecordingOutcome,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE transfers SET recording_sha256 = $1, recording_error = COALESCE($2, recording_error), recording_lost_ms = $3 WHERE id = $4",
    )
    .bind(outcome.sha256.as_deref())
    .bind(outcome.error.as_deref())
    .bind(outcome.lost_ms)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies a change to an incident, one audit row per field that
/// really changed. `None` if there is no such incident.
pub(super) async fn update_incident(
    conn: &mut AnyConnection,
    id: &str,
    change: &IncidentUpdate,
    actor: &str,
    at: i64,
) -> Result<Option<IncidentRow>, StoreError> {
    let q = concat!(
        "SELECT ",
        incident_columns!(),
        " FROM incidents WHERE id = $1"
    );
    let Some(before) = sqlx::query_as::<_, IncidentRow>(q)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut changed = false;
    for (field, new) in change.fields() {
        let old = match field {
            "category" => before.category.clone(),
            "priority" => before.priority.map(|p| p.to_string()),
            "address" => before.address.clone(),
            "notes" => before.notes.clone(),
            "agency" => before.agency.clone(),
            _ => Some(before.status.clone()),
        };
        if old == new || (field == "status" && new.is_none()) {
            continue;
        }
        changed = true;
        // Each column has its own statement: no SQL is built from input.
        let sql = match field {
            "category" => "UPDATE incidents SET category = $1 WHERE id = $2",
            "address" => "UPDATE incidents SET address = $1 WHERE id = $2",
            "notes" => "UPDATE incidents SET notes = $1 WHERE id = $2",
            "agency" => "UPDATE incidents SET agency = $1 WHERE id = $2",
            "status" => "UPDATE incidents SET status = $1 WHERE id = $2",
            _ => "",
        };
        if field == "priority" {
            sqlx::query("UPDATE incidents SET priority = $1 WHERE id = $2")
                .bind(change.priority)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query(sql)
                .bind(&new)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        audit(conn, id, at, actor, "update", Some(field), old, new).await?;
    }
    if changed {
        sqlx::query("UPDATE incidents SET updated_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let after = sqlx::query_as::<_, IncidentRow>(q)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(after))
}

/// siaga's own classification of an incident (a ghost call): its
/// category set and the incident closed, both audited as "system", only
/// while it is new and no one has given it a category.
pub(super) async fn classified(
    conn: &mut AnyConnection,
    id: &str,
    category: &str,
    at: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE incidents SET category = $1, status = 'closed', updated_at = $2 \
         WHERE id = $3 AND status = 'new' AND category IS NULL",
    )
    .bind(category)
    .bind(at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        let changes = [
            ("category", None, category),
            ("status", Some("new".to_string()), "closed"),
        ];
        for (field, old, new) in changes {
            let new = Some(new.to_string());
            audit(conn, id, at, "system", "classify", Some(field), old, new).await?;
        }
    }
    Ok(())
}

/// The caller pressed 5 twice: the call says when, and the incident's
/// trail says it once (a journal replay finds it done).
pub(super) async fn silent_emergency(
    conn: &mut AnyConnection,
    id: &CallId,
    incident: &str,
    at: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE calls SET silent_at = $1 WHERE id = $2 AND silent_at IS NULL")
        .bind(at)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 1 {
        let new = Some("55".to_string());
        audit(
            conn,
            incident,
            at,
            "system",
            "silent",
            Some("silent"),
            None,
            new,
        )
        .await?;
    }
    Ok(())
}

/// Notes that the database holds journal `journal` up to record `seq`.
pub(super) async fn journal_applied(
    conn: &mut AnyConnection,
    journal: &str,
    seq: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO journal_state (journal, applied_seq) VALUES ($1, $2) \
         ON CONFLICT (journal) DO UPDATE SET applied_seq = excluded.applied_seq",
    )
    .bind(journal)
    .bind(seq as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A change to an incident; `None` leaves a field as it is. A field set
/// to an empty text is cleared.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentUpdate {
    pub category: Option<String>,
    pub priority: Option<i64>,
    pub address: Option<String>,
    pub notes: Option<String>,
    pub agency: Option<String>,
    pub status: Option<String>,
}

impl IncidentUpdate {
    /// The fields named in this change, as (column, new text value).
    pub(super) fn fields(&self) -> Vec<(&'static str, Option<String>)> {
        let text = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .map(|s| (!s.is_empty()).then_some(s))
        };
        let mut out = Vec::new();
        let mut push = |name: &'static str, v: Option<Option<String>>| {
            if let Some(v) = v {
                out.push((name, v));
            }
        };
        push("category", text(&self.category));
        push("priority", self.priority.map(|p| Some(p.to_string())));
        push("address", text(&self.address));
        push("notes", text(&self.notes));
        push("agency", text(&self.agency));
        push("status", text(&self.status));
        out
    }
}

/// A warm transfer as it begins, for the record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewTransfer {
    pub id: String,
    pub call_id: String,
    pub incident_id: String,
    pub from_agent: Option<String>,
    pub agency: String,
    pub requested_by: String,
    pub at: i64,
}

/// One row of an incident's audit trail.
#[allow(clippy::too_many_arguments)]
pub(super) async fn audit(
    tx: &mut sqlx::AnyConnection,
    incident: &str,
    at: i64,
    actor: &str,
    action: &str,
    field: Option<&str>,
    old: Option<String>,
    new: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incident_audit (incident_id, at, actor, action, field, old_value, new_value) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(incident)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(field)
    .bind(old)
    .bind(new)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
