//! What the panel keeps: users, sessions, the incident form with its audit
//! trail, linking calls to incidents, searches, and today's figures.

use super::records::audit;
pub use super::records::{IncidentUpdate, NewTransfer};
use super::{CallRow, IncidentRow, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

/// Incident categories, with the terms operators use.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("medical", "Medis / kesehatan"),
    ("fire", "Kebakaran"),
    ("crime", "Kriminalitas"),
    ("traffic_accident", "Kecelakaan lalu lintas"),
    ("disaster", "Bencana"),
    ("public_order", "Ketertiban umum"),
    ("animal_rescue", "Evakuasi hewan"),
    ("information", "Permintaan informasi"),
    ("prank", "Panggilan iseng (prank)"),
    ("ghost", "Panggilan kosong (ghost call)"),
    ("silent", "Penelepon diam (tidak dapat bicara)"),
    ("wrong_number", "Salah sambung"),
    ("test", "Panggilan tes"),
    ("other", "Lainnya"),
];

/// Incident statuses, in the order an incident moves through them.
pub const STATUSES: &[(&str, &str)] = &[
    ("new", "Baru"),
    ("received", "Diterima"),
    ("unit_sent", "Unit dikirim"),
    ("on_scene", "Di lokasi"),
    ("closed", "Selesai"),
    ("merged", "Digabung"),
];

/// Priorities: 1 is the most urgent.
pub const PRIORITIES: &[(i64, &str)] =
    &[(1, "Darurat"), (2, "Tinggi"), (3, "Sedang"), (4, "Rendah")];

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub agency: Option<String>,
    pub agent_id: Option<String>,
    #[serde(skip)]
    pub password_hash: String,
    pub disabled: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub agency: Option<String>,
    pub agent_id: Option<String>,
    pub password_hash: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct AuditRow {
    pub incident_id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub field: Option<String>,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

/// Filters of the incident list; all optional, all combined.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IncidentFilter {
    pub status: Option<String>,
    pub service: Option<String>,
    pub agency: Option<String>,
    pub category: Option<String>,
    pub caller_number: Option<String>,
    /// Created at or after (ms since the epoch).
    pub from: Option<i64>,
    /// Created before (ms since the epoch).
    pub to: Option<i64>,
    pub limit: Option<i64>,
}

/// What became of a request to link a call to another incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    Linked {
        from: String,
        /// Whether the incident the call left had no other call and was
        /// merged into the target.
        merged: bool,
    },
    AlreadyThere,
    NoCall,
    NoIncident,
    /// The target is closed or itself merged.
    TargetNotOpen,
}

/// Today's figures for the supervisor.
#[derive(Debug, Clone, Default, Serialize, FromRow, PartialEq)]
pub struct DayCounts {
    pub calls: i64,
    pub answered: i64,
    pub answered_10s: i64,
    pub answered_20s: i64,
    /// Sum of arrival-to-agent times of the answered calls.
    pub answer_ms_total: i64,
    pub abandoned: i64,
    pub prank: i64,
    pub ghost: i64,
}

macro_rules! user_columns {
    () => {
        "id, username, display_name, role, agency, agent_id, password_hash, disabled, created_at, updated_at"
    };
}

impl Store {
    pub async fn create_user(&self, u: &NewUser) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, display_name, role, agency, agent_id, password_hash, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8)",
        )
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.display_name)
        .bind(&u.role)
        .bind(&u.agency)
        .bind(&u.agent_id)
        .bind(&u.password_hash)
        .bind(u.at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE username = $1"
        );
        Ok(sqlx::query_as::<_, UserRow>(q)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        let q = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        Ok(sqlx::query_as::<_, UserRow>(q)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let q = concat!("SELECT ", user_columns!(), " FROM users ORDER BY username");
        Ok(sqlx::query_as::<_, UserRow>(q)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Sets a new password hash; the user's sessions end. False if no such user.
    pub async fn set_password(&self, id: &str, hash: &str, at: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        end_sessions(&mut tx, id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Disables (ending every session) or enables a user. False if no such user.
    pub async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(disabled))
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if disabled {
            end_sessions(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn create_session(
        &self,
        token_sha256: &str,
        user_id: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // Expired sessions go as new ones come: the table stays small.
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(at)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_sha256, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(user_id)
        .bind(at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The enabled user of a session that has not expired.
    pub async fn session_user(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<UserRow>, StoreError> {
        let q = "SELECT u.id, u.username, u.display_name, u.role, u.agency, u.agent_id, u.password_hash, u.disabled, u.created_at, u.updated_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_sha256 = $1 AND s.expires_at > $2 AND u.disabled = 0";
        Ok(sqlx::query_as::<_, UserRow>(q)
            .bind(token_sha256)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn delete_session(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies a change to an incident, one audit row per field that
    /// really changed, in one transaction. `None` if there is no such
    /// incident.
    pub async fn update_incident(
        &self,
        id: &str,
        change: &IncidentUpdate,
        actor: &str,
        at: i64,
    ) -> Result<Option<IncidentRow>, StoreError> {
        let mut tx = self.write_tx().await?;
        let after = super::records::update_incident(&mut tx, id, change, actor, at).await?;
        tx.commit().await?;
        Ok(after)
    }

    pub async fn incident_audit(&self, id: &str) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT incident_id, at, actor, action, field, old_value, new_value FROM incident_audit \
             WHERE incident_id = $1 ORDER BY at, action",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves a call to another (open) incident: several callers reporting
    /// the same fire. The incident the call leaves is merged into the
    /// target when no other call is left on it.
    pub async fn link_call(
        &self,
        call_id: &str,
        target: &str,
        actor: &str,
        at: i64,
    ) -> Result<LinkOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let Some(from): Option<String> =
            sqlx::query_scalar("SELECT incident_id FROM calls WHERE id = $1")
                .bind(call_id)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(LinkOutcome::NoCall);
        };
        if from == target {
            return Ok(LinkOutcome::AlreadyThere);
        }
        let Some(status): Option<String> =
            sqlx::query_scalar("SELECT status FROM incidents WHERE id = $1")
                .bind(target)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(LinkOutcome::NoIncident);
        };
        if status == "closed" || status == "merged" {
            return Ok(LinkOutcome::TargetNotOpen);
        }
        sqlx::query("UPDATE calls SET incident_id = $1 WHERE id = $2")
            .bind(target)
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            target,
            at,
            actor,
            "call_linked",
            None,
            Some(from.clone()),
            Some(call_id.to_string()),
        )
        .await?;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE incident_id = $1")
            .bind(&from)
            .fetch_one(&mut *tx)
            .await?;
        let merged = left == 0;
        if merged {
            let old: String = sqlx::query_scalar("SELECT status FROM incidents WHERE id = $1")
                .bind(&from)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE incidents SET status = 'merged', merged_into = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(target)
            .bind(at)
            .bind(&from)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut tx,
                &from,
                at,
                actor,
                "merged",
                Some("status"),
                Some(old),
                Some(format!("merged into {target}")),
            )
            .await?;
        } else {
            audit(
                &mut tx,
                &from,
                at,
                actor,
                "call_unlinked",
                None,
                Some(call_id.to_string()),
                Some(target.to_string()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(LinkOutcome::Linked { from, merged })
    }

    pub async fn search_incidents(
        &self,
        f: &IncidentFilter,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            incident_columns!(),
            " FROM incidents WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR service = $2)",
            " AND ($3 IS NULL OR agency = $3) AND ($4 IS NULL OR category = $4)",
            " AND ($5 IS NULL OR caller_number = $5) AND ($6 IS NULL OR created_at >= $6)",
            " AND ($7 IS NULL OR created_at < $7)",
            " ORDER BY created_at DESC, id DESC LIMIT $8"
        );
        let blank = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        Ok(sqlx::query_as::<_, IncidentRow>(q)
            .bind(blank(&f.status))
            .bind(blank(&f.service))
            .bind(blank(&f.agency))
            .bind(blank(&f.category))
            .bind(blank(&f.caller_number))
            .bind(f.from)
            .bind(f.to)
            .bind(f.limit.unwrap_or(200).clamp(1, 1000))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Earlier incidents from the same number, newest first; with
    /// `agency`, only that agency's (a dispatcher's view).
    pub async fn incidents_of_number(
        &self,
        number: &str,
        except: &str,
        agency: Option<&str>,
        limit: i64,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            incident_columns!(),
            " FROM incidents WHERE caller_number = $1 AND id <> $2",
            " AND ($3 IS NULL OR agency = $3)",
            " ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        Ok(sqlx::query_as::<_, IncidentRow>(q)
            .bind(number)
            .bind(except)
            .bind(agency)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Incidents a call can be linked to: not closed, not merged, recent.
    pub async fn open_incidents(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            incident_columns!(),
            " FROM incidents WHERE status NOT IN ('closed', 'merged') AND created_at >= $1",
            " ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        Ok(sqlx::query_as::<_, IncidentRow>(q)
            .bind(since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Figures over the inbound calls that arrived in [from, to).
    pub async fn day_counts(&self, from: i64, to: i64) -> Result<DayCounts, StoreError> {
        // CAST: PostgreSQL's SUM of BIGINT is NUMERIC.
        let q = "SELECT COUNT(*) AS calls, \
            CAST(COALESCE(SUM(CASE WHEN c.agent_answered_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered, \
            CAST(COALESCE(SUM(CASE WHEN c.agent_answered_at - c.arrived_at <= 10000 THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered_10s, \
            CAST(COALESCE(SUM(CASE WHEN c.agent_answered_at - c.arrived_at <= 20000 THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered_20s, \
            CAST(COALESCE(SUM(c.agent_answered_at - c.arrived_at), 0) AS BIGINT) AS answer_ms_total, \
            CAST(COALESCE(SUM(CASE WHEN c.agent_answered_at IS NULL AND c.ended_at IS NOT NULL \
                 AND c.end_cause IN ('caller_bye', 'caller_cancel') THEN 1 ELSE 0 END), 0) AS BIGINT) AS abandoned, \
            CAST(COALESCE(SUM(CASE WHEN i.category = 'prank' THEN 1 ELSE 0 END), 0) AS BIGINT) AS prank, \
            CAST(COALESCE(SUM(CASE WHEN i.category = 'ghost' THEN 1 ELSE 0 END), 0) AS BIGINT) AS ghost \
            FROM calls c JOIN incidents i ON i.id = c.incident_id \
            WHERE c.direction = 'inbound' AND c.arrived_at >= $1 AND c.arrived_at < $2";
        Ok(sqlx::query_as::<_, DayCounts>(q)
            .bind(from)
            .bind(to)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The calls of the incidents of one agency (for a dispatcher).
    pub async fn call_agency(&self, call_id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT i.agency FROM calls c JOIN incidents i ON i.id = c.incident_id WHERE c.id = $1",
        )
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// A call siaga places to call an abandoned caller back, on the
    /// incident of the call it answers.
    pub async fn insert_callback(
        &self,
        id: &str,
        of: &CallRow,
        to_uri: &str,
        requested_by: &str,
        at: i64,
        node: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO calls (id, incident_id, sip_call_id, from_uri, to_uri, caller_number, dialed, service, route, queue, source, transport, trunk, status, arrived_at, direction, callback_of, requested_by, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'callback', $16, $17, $18)",
        )
        .bind(id)
        .bind(&of.incident_id)
        .bind(id)
        .bind("")
        .bind(to_uri)
        .bind(&of.caller_number)
        .bind(of.caller_number.as_deref().unwrap_or(""))
        .bind(&of.service)
        .bind(&of.route)
        .bind(&of.queue)
        .bind("")
        .bind("udp")
        .bind(&of.trunk)
        .bind("dialing")
        .bind(at)
        .bind(&of.id)
        .bind(requested_by)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            &of.incident_id,
            at,
            requested_by,
            "callback",
            None,
            Some(of.id.clone()),
            Some(id.to_string()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn end_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A warm transfer of a call to an agency.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct TransferRow {
    pub id: String,
    pub call_id: String,
    pub incident_id: String,
    pub from_agent: Option<String>,
    pub agency: String,
    pub to_agent: Option<String>,
    pub requested_by: String,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub recording_path: Option<String>,
    pub recording_sha256: Option<String>,
    pub recording_error: Option<String>,
    pub recording_lost_ms: Option<i64>,
}

impl Store {
    pub async fn transfers_of_call(&self, call_id: &str) -> Result<Vec<TransferRow>, StoreError> {
        Ok(sqlx::query_as::<_, TransferRow>(
            "SELECT id, call_id, incident_id, from_agent, agency, to_agent, requested_by, started_at, answered_at, ended_at, outcome, recording_path, recording_sha256, recording_error, recording_lost_ms \
             FROM transfers WHERE call_id = $1 ORDER BY started_at",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
