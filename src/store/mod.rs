//! Storage: `sqlx` over its `Any` driver, SQLite embedded by default and
//! PostgreSQL as the option. Only this module holds SQL.
//!
//! Calls never wait on the database: they hand records to a `StoreWriter`,
//! which applies them in order and retries while the database is slow or
//! down, so the records catch up afterwards.

mod journal;
mod writer;

pub use writer::{
    close_left_open, orphan_recordings, Changed, Places, RecordingOutcome, StoreCmd, StoreWriter,
    Whose,
};

use crate::ids::{CallId, IncidentId};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, FromRow};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether trying again later can succeed (the database is down or
    /// busy), as opposed to a record it will never take.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                !matches!(
                    e,
                    sqlx::Error::Database(_)
                        | sqlx::Error::ColumnDecode { .. }
                        | sqlx::Error::ColumnNotFound(_)
                        | sqlx::Error::TypeNotFound { .. }
                        | sqlx::Error::Decode(_)
                        | sqlx::Error::Encode(_)
                ) || matches!(e, sqlx::Error::Database(d) if d.message().contains("locked") || d.message().contains("busy"))
            }
            StoreError::Migrate(_) => true,
            StoreError::Folder { .. } => true,
        }
    }

    /// What this error says of the database: it answered and refused
    /// (`Blocked`), or it could not be reached (`Down`).
    pub fn db_state(&self) -> DbState {
        match self {
            StoreError::Db(sqlx::Error::Database(_)) => DbState::Blocked,
            StoreError::Db(
                sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::Encode(_)
                | sqlx::Error::RowNotFound,
            ) => DbState::Ok,
            _ => DbState::Down,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewIncident {
    pub id: IncidentId,
    pub service: String,
    pub caller_number: Option<String>,
    pub location_text: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub geolocation: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewCall {
    pub id: CallId,
    pub incident_id: IncidentId,
    pub sip_call_id: String,
    pub from_uri: String,
    pub to_uri: String,
    pub caller_number: Option<String>,
    pub dialed: String,
    pub service: String,
    pub route: String,
    pub queue: String,
    pub source: String,
    pub transport: String,
    pub trunk: Option<String>,
    pub arrived_at: i64,
    /// The node that took the call (`cluster.node`).
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct CallRow {
    pub id: String,
    pub incident_id: String,
    pub sip_call_id: String,
    pub from_uri: String,
    pub to_uri: String,
    pub caller_number: Option<String>,
    pub dialed: String,
    pub service: String,
    pub route: String,
    pub queue: String,
    pub source: String,
    pub transport: String,
    pub trunk: Option<String>,
    pub status: String,
    pub arrived_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub wait_ms: Option<i64>,
    pub end_cause: Option<String>,
    pub codec: Option<String>,
    pub recording_path: Option<String>,
    pub recording_sha256: Option<String>,
    pub recording_error: Option<String>,
    /// Audio left out of the recording (ms; silence stands in for it).
    pub recording_lost_ms: Option<i64>,
    pub agent_id: Option<String>,
    pub agent_answered_at: Option<i64>,
    /// `inbound`, or `callback` for a call siaga placed to a caller.
    pub direction: String,
    /// For a callback: the abandoned call it answers.
    pub callback_of: Option<String>,
    /// For a callback: the user who asked for it.
    pub requested_by: Option<String>,
    /// When the caller pressed 5 twice: a silent emergency.
    pub silent_at: Option<i64>,
}

/// An abandoned call, and whether its caller got through since.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct AbandonedRow {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub call: CallRow,
    /// When a later call from the same number reached an agent.
    pub got_through_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct IncidentRow {
    pub id: String,
    pub status: String,
    pub service: String,
    pub caller_number: Option<String>,
    pub location_text: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub geolocation: Option<String>,
    pub prior_incidents: i64,
    pub recent_incidents: i64,
    pub created_at: i64,
    /// Filled in by the call-taker (see `panel::CATEGORIES`).
    pub category: Option<String>,
    /// 1 (most urgent) to 4.
    pub priority: Option<i64>,
    /// Where it happened, as the caller said it.
    pub address: Option<String>,
    pub notes: Option<String>,
    /// The agency handling it.
    pub agency: Option<String>,
    /// For a `merged` incident: the one its calls now belong to.
    pub merged_into: Option<String>,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct CallEventRow {
    pub call_id: String,
    pub at: i64,
    pub kind: String,
    pub detail: Option<String>,
}

/// A call that was still open when the previous process stopped.
#[derive(Debug, Clone, FromRow)]
pub struct OpenCall {
    pub id: String,
    pub recording_path: Option<String>,
}

/// "Recent" for the repeat-caller flag.
pub const RECENT: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    health: DbHealth,
}

/// What `/healthz` says of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DbState {
    Ok,
    /// It answers, but writes cannot commit (a lock held, a full disk, a
    /// read-only database).
    Blocked,
    /// It cannot be reached.
    Down,
}

/// The database's state as the parts that use it last saw it: the store
/// writer (its writes) and the prober (`Store::probe`, every few
/// seconds). Read without touching the database, so `/healthz` answers at
/// once whatever the database does.
#[derive(Clone, Debug, Default)]
pub struct DbHealth {
    writer: Arc<AtomicU8>,
    prober: Arc<AtomicU8>,
}

impl DbHealth {
    fn code(s: DbState) -> u8 {
        s as u8
    }

    fn of(code: u8) -> DbState {
        match code {
            0 => DbState::Ok,
            1 => DbState::Blocked,
            _ => DbState::Down,
        }
    }

    /// The worse of what the writer and the prober saw last.
    pub fn state(&self) -> DbState {
        Self::of(self.writer.load(Ordering::Relaxed))
            .max(Self::of(self.prober.load(Ordering::Relaxed)))
    }

    /// What the writer saw: a write that committed, or why it did not.
    pub(crate) fn writer_saw(&self, result: Result<(), &StoreError>) {
        let state = result.map_or_else(StoreError::db_state, |()| DbState::Ok);
        self.writer.store(Self::code(state), Ordering::Relaxed);
    }

    fn prober_saw(&self, state: DbState) {
        self.prober.store(Self::code(state), Ordering::Relaxed);
    }
}

macro_rules! call_columns {
    () => {
        "id, incident_id, sip_call_id, from_uri, to_uri, caller_number, dialed, service, route, queue, source, transport, trunk, status, arrived_at, answered_at, ended_at, wait_ms, end_cause, codec, recording_path, recording_sha256, recording_error, recording_lost_ms, agent_id, agent_answered_at, direction, callback_of, requested_by, silent_at"
    };
}
macro_rules! incident_columns {
    () => {
        "id, status, service, caller_number, location_text, latitude, longitude, geolocation, prior_incidents, recent_incidents, created_at, category, priority, address, notes, agency, merged_into, updated_at"
    };
}

// After the column lists: it uses them.
mod panel;
pub use panel::*;
mod lease;
mod records;
mod registrations;
pub use lease::Held;
pub use registrations::{AgentDesk, Registration};

impl Store {
    /// A pool that connects on first use, so a database that is down at
    /// start-up does not keep the SIP side from serving.
    pub fn lazy(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(path) = sqlite_path(url) {
            if let Some(dir) = Path::new(&path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 10 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(url)?;
        Ok(Store {
            pool,
            sqlite: is_sqlite,
            health: DbHealth::default(),
        })
    }

    /// The database's state as last seen (no query made).
    pub fn health(&self) -> &DbHealth {
        &self.health
    }

    /// Tries a write transaction (begun, then rolled back) within
    /// `within`, and notes what it found: `Ok`; `Blocked` when it answers
    /// reads but no write could begin (SQLite's lock held) or it refused;
    /// `Down` when it cannot be reached. The writer notes its own writes.
    pub async fn probe(&self, within: Duration) -> DbState {
        let attempt = async {
            let tx = self.write_tx().await?;
            tx.rollback().await?;
            Ok::<(), StoreError>(())
        };
        let state = match tokio::time::timeout(within, attempt).await {
            Ok(Ok(())) => DbState::Ok,
            Ok(Err(e)) => e.db_state(),
            Err(_) => match tokio::time::timeout(within, self.ping()).await {
                Ok(Ok(())) => DbState::Blocked,
                _ => DbState::Down,
            },
        };
        self.health.prober_saw(state);
        state
    }

    /// A transaction that writes. On SQLite it takes the write lock at
    /// BEGIN (IMMEDIATE): a transaction that reads first and upgrades later
    /// fails at once with "database is locked" when another connection
    /// wrote meanwhile (WAL), and busy_timeout does not help there.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Callers who hung up before any agent answered, and callers cut off
    /// by a node's failure (first: we cut them off), whom no call-back has
    /// reached yet: the call-back list.
    /// The call-back list: callers who hung up before an agent answered
    /// (and those a node's failure cut off, first), newest first, with
    /// when the same number later reached an agent, if it did. Calls
    /// classified as pranks are not on it.
    pub async fn list_abandoned(&self, limit: i64) -> Result<Vec<AbandonedRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            call_columns!(),
            ", (SELECT MIN(l.agent_answered_at) FROM calls l WHERE l.caller_number = calls.caller_number",
            " AND l.arrived_at > calls.arrived_at AND l.agent_answered_at IS NOT NULL) AS got_through_at",
            " FROM calls WHERE ended_at IS NOT NULL AND direction = 'inbound'",
            " AND ((agent_answered_at IS NULL AND end_cause IN ('caller_bye', 'caller_cancel'))",
            " OR end_cause = 'node_failure')",
            // Once a call-back reached an agent, the caller is served.
            " AND NOT EXISTS (SELECT 1 FROM calls cb WHERE cb.callback_of = calls.id",
            " AND cb.agent_answered_at IS NOT NULL)",
            " AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.id = calls.incident_id",
            " AND i.category = 'prank')",
            " ORDER BY CASE WHEN end_cause = 'node_failure' THEN 0 ELSE 1 END, arrived_at DESC",
            " LIMIT $1"
        );
        Ok(sqlx::query_as::<_, AbandonedRow>(q)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Calls a previous process of `node` left open (it was killed or
    /// crashed); with `unnamed`, also those on record under no node.
    pub async fn open_calls(&self, node: &str, unnamed: bool) -> Result<Vec<OpenCall>, StoreError> {
        Ok(sqlx::query_as::<_, OpenCall>(
            "SELECT id, recording_path FROM calls WHERE ended_at IS NULL AND status <> 'interrupted' \
             AND (node = $1 OR ($2 = 1 AND node IS NULL))",
        )
        .bind(node)
        .bind(i64::from(unnamed))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether a call with this id is on record.
    pub async fn call_exists(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The last record of journal `journal` the database holds (0: none).
    pub async fn journal_applied(&self, journal: &str) -> Result<u64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT applied_seq FROM journal_state WHERE journal = $1")
                .bind(journal)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// Ended calls whose recording has neither a checksum nor an error:
    /// the process stopped between the call's end and its recording's
    /// close (the end is written first).
    pub async fn unchecked_recordings(
        &self,
        node: &str,
        unnamed: bool,
    ) -> Result<Vec<OpenCall>, StoreError> {
        Ok(sqlx::query_as::<_, OpenCall>(
            "SELECT id, recording_path FROM calls WHERE ended_at IS NOT NULL \
             AND recording_path IS NOT NULL AND recording_sha256 IS NULL AND recording_error IS NULL \
             AND (node = $1 OR ($2 = 1 AND node IS NULL))",
        )
        .bind(node)
        .bind(i64::from(unnamed))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Gives a recording found without a checksum its checksum, or why it
    /// has none.
    pub async fn recording_repaired(
        &self,
        id: &str,
        sha256: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET recording_sha256 = $1, recording_error = $2 WHERE id = $3")
            .bind(sha256)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes a call a stop left open. Its recording keeps what it has (an
    /// open call's has no checksum yet; an error stays): `close_left_open`
    /// finishes it next.
    pub async fn mark_interrupted(&self, id: &str, at: i64, cause: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET status = $1, end_cause = $2, ended_at = $3 WHERE id = $4")
            .bind("interrupted")
            .bind(cause)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn list_calls(&self, limit: i64) -> Result<Vec<CallRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls ORDER BY arrived_at DESC, id DESC LIMIT $1"
        );
        Ok(sqlx::query_as::<_, CallRow>(q)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn get_call(&self, id: &str) -> Result<Option<CallRow>, StoreError> {
        let q = concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1");
        Ok(sqlx::query_as::<_, CallRow>(q)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn call_events(&self, id: &str) -> Result<Vec<CallEventRow>, StoreError> {
        Ok(sqlx::query_as::<_, CallEventRow>(
            "SELECT call_id, at, kind, detail FROM call_events WHERE call_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn list_incidents(&self, limit: i64) -> Result<Vec<IncidentRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            incident_columns!(),
            " FROM incidents ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        Ok(sqlx::query_as::<_, IncidentRow>(q)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn get_incident(&self, id: &str) -> Result<Option<IncidentRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            incident_columns!(),
            " FROM incidents WHERE id = $1"
        );
        Ok(sqlx::query_as::<_, IncidentRow>(q)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The caller numbers and times of the incidents classified as pranks
    /// since `since` (ms), and every supervisor's clearing of a number.
    pub async fn pranks_since(
        &self,
        since: i64,
    ) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), StoreError> {
        let pranks = sqlx::query_as::<_, (String, i64)>(
            "SELECT caller_number, created_at FROM incidents \
             WHERE category = 'prank' AND created_at >= $1 AND caller_number IS NOT NULL",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let clears =
            sqlx::query_as::<_, (String, i64)>("SELECT number, cleared_at FROM prank_clears")
                .fetch_all(&self.pool)
                .await?;
        Ok((pranks, clears))
    }

    /// A supervisor clears a number: its pranks so far no longer count.
    pub async fn clear_pranks(&self, number: &str, at: i64, by: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO prank_clears (number, cleared_at, cleared_by) VALUES ($1, $2, $3) \
             ON CONFLICT (number) DO UPDATE SET cleared_at = excluded.cleared_at, cleared_by = excluded.cleared_by",
        )
        .bind(number)
        .bind(at)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn calls_of_incident(&self, id: &str) -> Result<Vec<CallRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE incident_id = $1 ORDER BY arrived_at"
        );
        Ok(sqlx::query_as::<_, CallRow>(q)
            .bind(id)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The file of a `sqlite:` URL, if it names one.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::unfinished::sha256_of;

    /// A call and its incident, as tests elsewhere in the crate record them.
    pub(crate) fn call(id: &str, inc: &str, number: &str, at: i64) -> (NewCall, NewIncident) {
        (
            NewCall {
                id: CallId(id.into()),
                incident_id: IncidentId(inc.into()),
                sip_call_id: format!("sip-{id}"),
                from_uri: "sip:0812@127.0.0.1".into(),
                to_uri: "sip:112@127.0.0.1".into(),
                caller_number: Some(number.into()),
                dialed: "112".into(),
                service: "112".into(),
                route: "ntpd-112".into(),
                queue: "ntpd-112".into(),
                source: "127.0.0.1:5070".into(),
                transport: "udp".into(),
                trunk: Some("t".into()),
                arrived_at: at,
                node: None,
            },
            NewIncident {
                id: IncidentId(inc.into()),
                service: "112".into(),
                caller_number: Some(number.into()),
                location_text: None,
                latitude: Some(-6.4),
                longitude: Some(106.8),
                geolocation: None,
                created_at: at,
            },
        )
    }

    #[tokio::test]
    async fn call_lifecycle_and_repeat_caller_counts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db/s.db?mode=rwc", dir.path().display());
        lifecycle(&url).await;
    }

    /// An agent's bindings are replaced whole by each REGISTER's outcome
    /// (none: unregistered); reading them drops the expired. A desk is one
    /// row per agent, the last written.
    #[tokio::test]
    async fn bindings_on_record_are_replaced_whole_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db/s.db?mode=rwc", dir.path().display());
        let store = Store::lazy(&url).unwrap();
        store.migrate().await.unwrap();
        let row = |agent: &str, contact: &str, expires_at: i64| Registration {
            agent: agent.into(),
            contact: contact.into(),
            source: "10.0.0.7:5060".into(),
            transport: "udp".into(),
            path: "<sip:10.0.0.10;lr>".into(),
            expires_at,
        };
        let bind = |agent: &str, now: Vec<Registration>| StoreCmd::Bindings {
            agent: agent.into(),
            now,
        };
        let cmds = [
            bind(
                "a",
                vec![row("a", "sip:a@1", 1_000), row("a", "sip:a@2", 5_000)],
            ),
            bind("b", vec![row("b", "sip:b@1", 5_000)]),
            bind(
                "a",
                vec![row("a", "sip:a@3", 6_000), row("a", "sip:a@1", 500)],
            ),
            bind("b", vec![]),
        ];
        store.apply_marked(&cmds, None).await.unwrap();
        let desk = |state: &str, reason: Option<&str>, at: i64| AgentDesk {
            agent: "a".into(),
            state: state.into(),
            reason: reason.map(Into::into),
            changed_at: at,
        };
        store
            .apply_marked(
                &[
                    StoreCmd::Desk(desk("ready", None, 1)),
                    StoreCmd::Desk(desk("not_ready", Some("istirahat"), 2)),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            store.agent_desks().await.unwrap(),
            vec![desk("not_ready", Some("istirahat"), 2)]
        );
        assert_eq!(
            store.registrations(0).await.unwrap(),
            vec![row("a", "sip:a@1", 500), row("a", "sip:a@3", 6_000)]
        );
        assert_eq!(
            store.registrations(500).await.unwrap(),
            vec![row("a", "sip:a@3", 6_000)]
        );
        assert_eq!(
            store.registrations(0).await.unwrap().len(),
            1,
            "the expired went"
        );
    }

    /// At start, a recording in a recent day folder whose call has no
    /// record is found (a transfer's too); one whose call is on record is
    /// not, nor one in a folder untouched for longer than asked.
    #[tokio::test]
    async fn recordings_no_record_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db/s.db?mode=rwc", dir.path().display());
        let store = Store::lazy(&url).unwrap();
        store.migrate().await.unwrap();
        let (c, i) = call("known", "ik", "0812", now_ms());
        store
            .apply(&[StoreCmd::NewCall(Box::new((c, i)))])
            .await
            .unwrap();
        let rec = dir.path().join("recordings");
        let today = rec.join("2026/12/03");
        let old = rec.join("2025/01/01");
        for d in [&today, &old] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in [
            "known.wav",
            "known-transfer-1.wav",
            "stray.wav",
            "stray-transfer-2.wav",
            "notes.txt",
        ] {
            std::fs::write(today.join(f), b"RIFF").unwrap();
        }
        std::fs::write(old.join("ancient.wav"), b"RIFF").unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let found = orphan_recordings(&store, &rec, Duration::from_secs(2 * 24 * 3600))
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![today.join("stray-transfer-2.wav"), today.join("stray.wav")]
        );
    }

    /// A database made for this test on the PostgreSQL `scripts/test`
    /// starts (SIAGA_TEST_POSTGRES: a URL whose user may create databases;
    /// SIAGA_REQUIRE_POSTGRES makes its absence a failure), given to `run`
    /// and dropped after.
    async fn on_postgres<F: std::future::Future<Output = ()>>(run: impl FnOnce(String) -> F) {
        let Ok(admin_url) = std::env::var("SIAGA_TEST_POSTGRES") else {
            assert!(
                std::env::var("SIAGA_REQUIRE_POSTGRES").is_err(),
                "SIAGA_REQUIRE_POSTGRES is set but SIAGA_TEST_POSTGRES is not"
            );
            eprintln!("skipped: set SIAGA_TEST_POSTGRES to run against PostgreSQL");
            return;
        };
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let name = format!("siaga_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::AnyConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap();
        run(format!("{base}/{name}")).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }

    /// The same against PostgreSQL.
    #[tokio::test]
    async fn call_lifecycle_on_postgres() {
        on_postgres(|url| async move { lifecycle(&url).await }).await;
    }

    /// One node leads; another takes the lease only once it has run out,
    /// and only when it may (it has been in touch with the database for a
    /// lease's length), under a higher term; until then the holder renews
    /// even a lapsed lease. The new holder closes the calls the first left
    /// open, and none of anyone else's.
    #[tokio::test]
    async fn the_lease_changes_hands_only_when_it_runs_out() {
        on_postgres(|url| async move {
            let store = Store::lazy(&url).unwrap();
            store.migrate().await.unwrap();
            assert_eq!(store.lease_left_ms().await.unwrap(), None, "never held");
            // Nobody held it: taken even by a node that may not take.
            let a = store
                .try_lead("a", "a1", 400, false)
                .await
                .unwrap()
                .expect("a leads");
            assert_eq!(
                a,
                Held {
                    term: 1,
                    previous: None
                }
            );
            assert_eq!(store.try_lead("b", "b1", 400, true).await.unwrap(), None);
            let left = store.lease_left_ms().await.unwrap().unwrap();
            assert!((0..=400).contains(&left), "{left}");
            assert_eq!(
                store.try_lead("a", "a1", 400, false).await.unwrap(),
                Some(a.clone())
            );
            // A second process under a's name (a restart, or a name given
            // twice by mistake) does not lead beside the first.
            assert_eq!(store.try_lead("a", "a2", 400, true).await.unwrap(), None);
            assert_eq!(store.try_lead("b", "b1", 400, true).await.unwrap(), None);
            // Run out, but b may not take it yet; a, back from an outage,
            // renews its lapsed lease under the same term.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let left = store.lease_left_ms().await.unwrap().unwrap();
            assert!(left < 0, "ran out {} ms ago", -left);
            assert_eq!(store.try_lead("b", "b1", 400, false).await.unwrap(), None);
            assert_eq!(
                store.try_lead("a", "a1", 400, false).await.unwrap(),
                Some(a.clone())
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let b = store
                .try_lead("b", "b1", 10_000, true)
                .await
                .unwrap()
                .expect("b takes over");
            assert_eq!(
                b,
                Held {
                    term: 2,
                    previous: Some("a".into())
                }
            );
            assert_eq!(
                store.try_lead("a", "a1", 400, false).await.unwrap(),
                None,
                "never two"
            );

            let t = now_ms();
            // a's recordings: one on storage b shares, one on a's own disk.
            let shared = tempfile::tempdir().unwrap();
            let own_disk = tempfile::tempdir().unwrap();
            let reachable = shared.path().join("ca.wav");
            let away = own_disk.path().join("ca2.wav");
            let mut w = hound::WavWriter::create(
                &reachable,
                hound::WavSpec {
                    channels: 2,
                    sample_rate: 8000,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                },
            )
            .unwrap();
            for _ in 0..320 {
                w.write_sample(3i16).unwrap();
            }
            w.finalize().unwrap();
            std::fs::copy(&reachable, &away).unwrap();
            let parked = own_disk.path().with_extension("unmounted");
            std::fs::rename(own_disk.path(), &parked).unwrap();
            for (id, node, rec) in [
                ("ca", Some("a"), Some(&reachable)),
                ("ca2", Some("a"), Some(&away)),
                ("cb", Some("b"), None),
                ("c0", None, None),
            ] {
                let (mut c, i) = call(id, &format!("i-{id}"), "0812", t);
                c.node = node.map(Into::into);
                let mut cmds = vec![StoreCmd::NewCall(Box::new((c, i)))];
                if let Some(path) = rec {
                    cmds.push(StoreCmd::Answered {
                        id: CallId(id.into()),
                        at: t + 1,
                        codec: "PCMA".into(),
                        recording_path: Some(path.display().to_string()),
                        recording_error: None,
                    });
                }
                store.apply(&cmds).await.unwrap();
            }
            close_left_open(&store, Whose::Gone("a")).await.unwrap();
            let recording = |id: &'static str| {
                let store = store.clone();
                async move {
                    let c = store.get_call(id).await.unwrap().unwrap();
                    (c.recording_sha256, c.recording_error)
                }
            };
            assert_eq!(
                recording("ca").await,
                (Some(sha256_of(&reachable).unwrap()), None),
                "on shared storage: finished by the node taking over"
            );
            assert_eq!(
                recording("ca2").await,
                (None, None),
                "on the gone node's disk: left for its next start"
            );
            let ended = |id: &'static str| {
                let store = store.clone();
                async move {
                    store
                        .get_call(id)
                        .await
                        .unwrap()
                        .unwrap()
                        .ended_at
                        .is_some()
                }
            };
            assert!(ended("ca").await, "the gone node's call is closed");
            assert!(ended("ca2").await, "closed even with its recording away");
            let listed = store.list_abandoned(10).await.unwrap();
            let mut first: Vec<&str> = listed[..2].iter().map(|c| c.call.id.as_str()).collect();
            first.sort();
            assert_eq!(first, ["ca", "ca2"], "cut off by us: first to call back");
            assert!(listed[..2]
                .iter()
                .all(|c| c.call.end_cause.as_deref() == Some("node_failure")));
            assert!(!ended("cb").await, "the leader's own call goes on");
            assert!(
                !ended("c0").await,
                "an unnamed call is its own node's to close"
            );
            close_left_open(&store, Whose::Own("b")).await.unwrap();
            assert!(ended("c0").await && ended("cb").await);
            // a starts again, its disk back: it finishes its recording.
            std::fs::rename(&parked, own_disk.path()).unwrap();
            close_left_open(&store, Whose::Own("a")).await.unwrap();
            assert_eq!(
                recording("ca2").await,
                (Some(sha256_of(&away).unwrap()), None)
            );
        })
        .await;
    }

    async fn lifecycle(url: &str) {
        let store = Store::lazy(url).unwrap();
        store.migrate().await.unwrap();
        let day = RECENT.as_millis() as i64;
        let t = now_ms();
        let new_call = |c: NewCall, i: NewIncident| StoreCmd::NewCall(Box::new((c, i)));
        let (c1, i1) = call("c1", "i1", "0812", t - 2 * day);
        store.apply(&[new_call(c1, i1)]).await.unwrap();
        // Two in one transaction: the second counts the first.
        let (c2, i2) = call("c2", "i2", "0812", t - 1000);
        let (c3, i3) = call("c3", "i3", "0812", t);
        let c3_id = c3.id.clone();
        store
            .apply(&[new_call(c2, i2), new_call(c3, i3)])
            .await
            .unwrap();
        let inc = store.get_incident("i3").await.unwrap().unwrap();
        assert_eq!((inc.prior_incidents, inc.recent_incidents), (2, 1));
        assert_eq!(inc.latitude, Some(-6.4));

        store
            .apply_marked(
                &[
                    StoreCmd::Answered {
                        id: c3_id.clone(),
                        at: t + 5,
                        codec: "PCMA".into(),
                        recording_path: Some("/r/c3.wav".into()),
                        recording_error: None,
                    },
                    StoreCmd::Event {
                        id: c3_id.clone(),
                        at: t + 6,
                        kind: "overflow".into(),
                        detail: Some("a -> b".into()),
                    },
                    StoreCmd::Ended {
                        id: c3_id.clone(),
                        at: t + 10,
                        wait_ms: Some(5),
                        cause: "caller_bye".into(),
                    },
                ],
                Some(("j1", 7)),
            )
            .await
            .unwrap();
        // Ended, its recording not closed yet: what a stop between the two
        // leaves, and the start-up repair looks for.
        let unchecked: Vec<String> = store
            .unchecked_recordings("", true)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(unchecked, vec!["c3".to_string()]);
        assert_eq!(store.journal_applied("j1").await.unwrap(), 7);
        assert_eq!(store.journal_applied("j2").await.unwrap(), 0);
        store
            .apply_marked(
                &[StoreCmd::RecordingClosed {
                    id: c3_id.clone(),
                    outcome: RecordingOutcome {
                        sha256: Some("ab".into()),
                        error: None,
                        lost_ms: Some(1_240),
                    },
                }],
                Some(("j1", 8)),
            )
            .await
            .unwrap();
        assert!(store
            .unchecked_recordings("", true)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.journal_applied("j1").await.unwrap(), 8);
        let row = store.get_call("c3").await.unwrap().unwrap();
        assert_eq!(row.status, "ended");
        assert_eq!(row.recording_sha256.as_deref(), Some("ab"));
        assert_eq!(row.recording_lost_ms, Some(1_240));
        assert_eq!(row.recording_path.as_deref(), Some("/r/c3.wav"));
        assert_eq!(store.call_events("c3").await.unwrap().len(), 1);

        let open: Vec<String> = store
            .open_calls("", true)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(open, vec!["c1".to_string(), "c2".to_string()]);
        store
            .mark_interrupted("c1", t, "interrupted_by_restart")
            .await
            .unwrap();
        assert_eq!(store.open_calls("", true).await.unwrap().len(), 1);

        let calls = store.list_calls(10).await.unwrap();
        assert_eq!(calls[0].id, "c3");
        assert_eq!(
            store.list_abandoned(10).await.unwrap()[0].call.id,
            "c3",
            "no agent answered c3"
        );
        store
            .apply(&[StoreCmd::AgentAnswered {
                id: c3_id.clone(),
                agent: "ct-01".into(),
                at: t + 7,
            }])
            .await
            .unwrap();
        assert!(store.list_abandoned(10).await.unwrap().is_empty());
        assert_eq!(
            store
                .get_call("c3")
                .await
                .unwrap()
                .unwrap()
                .agent_id
                .as_deref(),
            Some("ct-01")
        );
        assert_eq!(store.calls_of_incident("i1").await.unwrap().len(), 1);
        assert!(store.get_call("nope").await.unwrap().is_none());
        panel(&store, t).await;
        batch_with_a_refused_record(&store, t).await;
    }

    /// The writer puts what queued up into one transaction; a record the
    /// database refuses for good (here a second call with the same id) is
    /// skipped alone, and what came before and after it is written.
    async fn batch_with_a_refused_record(store: &Store, t: i64) {
        let writer = StoreWriter::spawn(store.clone(), Places::default(), |_| {});
        let (c9, i9) = call("c9", "i9", "0899", t);
        let (dup, dup_inc) = call("c9", "i9b", "0899", t);
        writer.send(StoreCmd::NewCall(Box::new((c9, i9))));
        writer.send(StoreCmd::NewCall(Box::new((dup, dup_inc))));
        writer.send(StoreCmd::Event {
            id: CallId("c9".into()),
            at: t + 1,
            kind: "after".into(),
            detail: None,
        });
        writer.flush().await;
        assert!(store.get_call("c9").await.unwrap().is_some());
        assert!(
            store.get_incident("i9b").await.unwrap().is_none(),
            "the refused record is not half written"
        );
        let events = store.call_events("c9").await.unwrap();
        assert_eq!(
            events.len(),
            1,
            "the record after the refused one is written"
        );
    }

    /// Users, sessions, the incident form with its audit trail, linking,
    /// filters and the day's figures.
    async fn panel(store: &Store, t: i64) {
        let user = NewUser {
            id: "u1".into(),
            username: "siti".into(),
            display_name: "Siti".into(),
            role: "call_taker".into(),
            agency: Some("ntpd".into()),
            agent_id: Some("ct-01".into()),
            password_hash: "h".into(),
            at: t,
        };
        store.create_user(&user).await.unwrap();
        assert!(store.create_user(&user).await.is_err(), "names are unique");
        store
            .create_session("tok", "u1", t, t + 1000)
            .await
            .unwrap();
        assert_eq!(
            store
                .session_user("tok", t)
                .await
                .unwrap()
                .unwrap()
                .username,
            "siti"
        );
        assert!(
            store.session_user("tok", t + 1000).await.unwrap().is_none(),
            "expired"
        );
        assert!(store.session_user("other", t).await.unwrap().is_none());
        assert!(store.set_disabled("u1", true, t).await.unwrap());
        assert!(
            store.session_user("tok", t).await.unwrap().is_none(),
            "disabling ends sessions"
        );
        store.set_disabled("u1", false, t).await.unwrap();

        let change = IncidentUpdate {
            category: Some("fire".into()),
            priority: Some(1),
            agency: Some("damkar".into()),
            address: Some("Jl. Margonda Raya 100".into()),
            ..Default::default()
        };
        let after = store
            .update_incident("i3", &change, "siti", t + 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.category.as_deref(), Some("fire"));
        assert_eq!(after.priority, Some(1));
        assert_eq!(after.updated_at, Some(t + 20));
        // The same again changes nothing and adds no audit row.
        store
            .update_incident("i3", &change, "siti", t + 21)
            .await
            .unwrap();
        let clear = IncidentUpdate {
            address: Some("  ".into()),
            ..Default::default()
        };
        let after = store
            .update_incident("i3", &clear, "budi", t + 22)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.address, None, "an empty text clears");
        let audit = store.incident_audit("i3").await.unwrap();
        let fields: Vec<_> = audit
            .iter()
            .map(|a| (a.actor.as_str(), a.field.as_deref().unwrap()))
            .collect();
        assert_eq!(fields.len(), 5, "{fields:?}");
        assert!(fields.contains(&("siti", "category")));
        assert_eq!(
            audit.last().unwrap().old_value.as_deref(),
            Some("Jl. Margonda Raya 100")
        );
        assert!(store
            .update_incident("none", &change, "x", t)
            .await
            .unwrap()
            .is_none());

        let damkar = IncidentFilter {
            agency: Some("damkar".into()),
            ..Default::default()
        };
        assert_eq!(store.search_incidents(&damkar).await.unwrap().len(), 1);
        let since = IncidentFilter {
            from: Some(t - 5000),
            caller_number: Some("0812".into()),
            ..Default::default()
        };
        assert_eq!(store.search_incidents(&since).await.unwrap().len(), 2);
        assert_eq!(
            store
                .incidents_of_number("0812", "i3", None, 10)
                .await
                .unwrap()
                .len(),
            2
        );
        // A dispatcher's view: only their agency's, none of another's.
        // (i3 is damkar's.)
        for (except, agency, n) in [
            ("i3", "damkar", 0),
            ("i2", "damkar", 1),
            ("i2", "polri", 0),
            ("i2", "(none)", 0),
        ] {
            let rows = store
                .incidents_of_number("0812", except, Some(agency), 10)
                .await
                .unwrap();
            assert_eq!(rows.len(), n, "{except} {agency}");
        }

        // c2 joins i3: i2 has no call left and is merged into i3.
        let out = store.link_call("c2", "i3", "siti", t + 30).await.unwrap();
        assert_eq!(
            out,
            LinkOutcome::Linked {
                from: "i2".into(),
                merged: true
            }
        );
        let i2 = store.get_incident("i2").await.unwrap().unwrap();
        assert_eq!(
            (i2.status.as_str(), i2.merged_into.as_deref()),
            ("merged", Some("i3"))
        );
        assert_eq!(store.calls_of_incident("i3").await.unwrap().len(), 2);
        assert_eq!(
            store.link_call("c2", "i3", "siti", t).await.unwrap(),
            LinkOutcome::AlreadyThere
        );
        assert_eq!(
            store.link_call("c3", "i2", "siti", t).await.unwrap(),
            LinkOutcome::TargetNotOpen
        );
        assert_eq!(
            store.link_call("nope", "i3", "siti", t).await.unwrap(),
            LinkOutcome::NoCall
        );
        assert_eq!(
            store.link_call("c3", "nope", "siti", t).await.unwrap(),
            LinkOutcome::NoIncident
        );

        // c2 (i3 now, fire) and c3 (answered after 7 ms, i3) arrived in
        // the last seconds; c1 two days ago is outside.
        let day = store.day_counts(t - 5000, t + 5000).await.unwrap();
        assert_eq!(
            day,
            DayCounts {
                calls: 2,
                answered: 1,
                answered_10s: 1,
                answered_20s: 1,
                answer_ms_total: 7,
                abandoned: 0,
                prank: 0,
                ghost: 0,
            }
        );
        let empty = store.day_counts(0, 1).await.unwrap();
        assert_eq!(empty, DayCounts::default());
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://data/x.db?mode=rwc").as_deref(),
            Some("data/x.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }
}
