//! Agents as every node sees them: their phones' bindings (`sip::registrar`
//! keeps the live copy), written after each REGISTER, and their desk
//! states (the ACD keeps the live ones), written by the leader when they
//! change; both read by a node that starts leading.

use super::{Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

/// One binding as stored. `path`: the Path values joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Registration {
    pub agent: String,
    pub contact: String,
    pub source: String,
    pub transport: String,
    pub path: String,
    /// Wall clock, ms since the epoch.
    pub expires_at: i64,
}

/// An agent's desk as the leader last set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AgentDesk {
    pub agent: String,
    /// `ready`, `not_ready` or `logged_out`.
    pub state: String,
    pub reason: Option<String>,
    pub changed_at: i64,
}

impl Store {
    /// Every agent's desk on record.
    pub async fn agent_desks(&self) -> Result<Vec<AgentDesk>, StoreError> {
        Ok(sqlx::query_as::<_, AgentDesk>(
            "SELECT agent, state, reason, changed_at FROM agent_desks ORDER BY agent",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The bindings unexpired at `now_ms`; expired ones are deleted.
    pub async fn registrations(&self, now_ms: i64) -> Result<Vec<Registration>, StoreError> {
        sqlx::query("DELETE FROM registrations WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as::<_, Registration>(
            "SELECT agent, contact, source, transport, path, expires_at FROM registrations \
             WHERE expires_at > $1 ORDER BY agent, expires_at",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// `agent`'s bindings are now `bindings` (none: unregistered).
pub(super) async fn replace(
    conn: &mut AnyConnection,
    agent: &str,
    bindings: &[Registration],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM registrations WHERE agent = $1")
        .bind(agent)
        .execute(&mut *conn)
        .await?;
    for b in bindings {
        sqlx::query(
            "INSERT INTO registrations (agent, contact, source, transport, path, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(agent)
        .bind(&b.contact)
        .bind(&b.source)
        .bind(&b.transport)
        .bind(&b.path)
        .bind(b.expires_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn set_desk(conn: &mut AnyConnection, desk: &AgentDesk) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_desks (agent, state, reason, changed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (agent) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
         changed_at = excluded.changed_at",
    )
    .bind(&desk.agent)
    .bind(&desk.state)
    .bind(&desk.reason)
    .bind(desk.changed_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
