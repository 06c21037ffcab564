//! The store writer: applies call records in order, off the call path.
//!
//! A record the database refuses for good (a constraint it breaks) is
//! logged and skipped; while the database is down or busy, the writer waits
//! and tries the same record again, so nothing is lost and order is kept.

use super::{now_ms, records, NewCall, NewIncident, Store, StoreError};
use crate::ids::CallId;
use crate::media::recorder::sha256_file;
use sqlx::AnyConnection;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

#[derive(Debug, Clone)]
pub enum StoreCmd {
    NewCall(Box<(NewCall, NewIncident)>),
    Answered {
        id: CallId,
        at: i64,
        codec: String,
        recording_path: Option<String>,
        recording_error: Option<String>,
    },
    Queue {
        id: CallId,
        queue: String,
    },
    AgentAnswered {
        id: CallId,
        agent: String,
        at: i64,
    },
    Event {
        id: CallId,
        at: i64,
        kind: String,
        detail: Option<String>,
    },
    Ended {
        id: CallId,
        at: i64,
        wait_ms: Option<i64>,
        cause: String,
    },
    /// The call's recording could not be made after all: no file, and why.
    RecordingFailed {
        id: CallId,
        error: String,
    },
    RecordingClosed {
        id: CallId,
        outcome: RecordingOutcome,
    },
    TransferStarted(Box<super::NewTransfer>),
    TransferAnswered {
        id: String,
        agent: String,
        at: i64,
        recording_path: Option<String>,
        recording_error: Option<String>,
    },
    TransferEnded {
        id: String,
        at: i64,
        outcome: String,
        actor: String,
    },
    TransferRecording {
        id: String,
        outcome: RecordingOutcome,
    },
    /// The incident goes to an agency (a transfer from the phone).
    AssignAgency {
        incident_id: String,
        agency: String,
        actor: String,
        at: i64,
    },
}

/// What a write changed, for those who show it live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Call records (the day's figures count them).
    Calls,
    Incident(String),
}

enum Queued {
    Cmd(StoreCmd),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// How a recording ended: its checksum, or why it has none, and how much
/// audio was left out of it (the recorder's queue was full).
#[derive(Debug, Clone, Default)]
pub struct RecordingOutcome {
    pub sha256: Option<String>,
    pub error: Option<String>,
    /// None when nothing was left out.
    pub lost_ms: Option<i64>,
}

/// Where call tasks send their records; never blocks.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Queued>,
}

impl StoreWriter {
    /// Starts the writer. It first runs migrations and closes the records
    /// of calls a previous process left open, then applies commands.
    /// `on_change` runs after each write that changes what the day's
    /// figures count (a call arrived, was answered, ended) or an incident.
    pub fn spawn(store: Store, on_change: impl Fn(Changed) + Send + 'static) -> StoreWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx, on_change));
        StoreWriter { tx }
    }

    pub fn send(&self, cmd: StoreCmd) {
        if self.tx.send(Queued::Cmd(cmd)).is_err() {
            error!("store writer is gone; a call record was not written");
        }
    }

    /// Waits until every record sent before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Queued::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Most records in one transaction. A batch is whatever has queued up
/// while the last one was written, so at a calm hour it is one record,
/// and in a surge one commit (one fsync) carries hundreds.
const BATCH: usize = 256;

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    on_change: impl Fn(Changed) + Send + 'static,
) {
    if let Err(e) = retry("start-up", || startup(&store)).await {
        error!(error = %e, "closing interrupted calls failed; going on");
    }
    let mut batch: Vec<StoreCmd> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut flush = None;
        match first {
            Queued::Cmd(cmd) => batch.push(cmd),
            Queued::Flush(done) => flush = Some(done),
        }
        // Take what else is waiting, up to a flush (answered once all
        // before it is written).
        while flush.is_none() && batch.len() < BATCH {
            match rx.try_recv() {
                Ok(Queued::Cmd(cmd)) => batch.push(cmd),
                Ok(Queued::Flush(done)) => flush = Some(done),
                Err(_) => break,
            }
        }
        write(&store, &batch).await;
        for cmd in batch.drain(..) {
            match &cmd {
                StoreCmd::NewCall(_) | StoreCmd::AgentAnswered { .. } | StoreCmd::Ended { .. } => {
                    on_change(Changed::Calls)
                }
                StoreCmd::AssignAgency { incident_id, .. } => {
                    on_change(Changed::Incident(incident_id.clone()))
                }
                _ => {}
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// Writes a batch in one transaction, waiting out a database that is
/// down or busy. Should the database refuse one record for good, the
/// batch is written again one record at a time, so only that one is
/// skipped and the order holds.
async fn write(store: &Store, batch: &[StoreCmd]) {
    if batch.is_empty() {
        return;
    }
    if retry("call records", || store.apply(batch)).await.is_ok() {
        return;
    }
    for cmd in batch {
        if let Err(e) = retry("call record", || store.apply(std::slice::from_ref(cmd))).await {
            error!(error = %e, "database refused a record; skipped");
        }
    }
}

impl Store {
    /// Applies records in order, in one transaction: all or none.
    pub async fn apply(&self, cmds: &[StoreCmd]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for cmd in cmds {
            apply_on(&mut tx, cmd).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Tries `op` until it succeeds or fails for good (that error is returned).
async fn retry<F, Fut>(what: &str, mut op: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        let result = match tokio::time::timeout(Duration::from_secs(10), op()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
        };
        match result {
            Ok(()) => {
                if attempts > 0 {
                    info!(what, attempts, "database is back; records written");
                }
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                attempts += 1;
                if attempts == 1 || attempts.is_power_of_two() {
                    warn!(what, attempts, error = %e, "database unavailable; will retry");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn startup(store: &Store) -> Result<(), StoreError> {
    store.migrate().await?;
    for call in store.open_calls().await? {
        let path = call.recording_path.map(PathBuf::from);
        let (sha, note) = match path {
            Some(p) => match tokio::task::spawn_blocking(move || sha256_file(&p)).await {
                Ok(Ok(sum)) => (
                    Some(sum),
                    "process stopped during the call; recording playable up to its last sync",
                ),
                _ => (None, "process stopped during the call; recording missing"),
            },
            None => (None, "process stopped during the call before answer"),
        };
        warn!(call_id = %call.id, "closing the record of a call interrupted by a restart");
        store
            .mark_interrupted(&call.id, now_ms(), sha.as_deref(), note)
            .await?;
    }
    Ok(())
}

async fn apply_on(conn: &mut AnyConnection, cmd: &StoreCmd) -> Result<(), StoreError> {
    match cmd {
        StoreCmd::NewCall(b) => records::insert_call(conn, &b.0, &b.1).await,
        StoreCmd::Answered {
            id,
            at,
            codec,
            recording_path,
            recording_error,
        } => {
            records::call_answered(
                conn,
                id,
                *at,
                codec,
                recording_path.as_deref(),
                recording_error.as_deref(),
            )
            .await
        }
        StoreCmd::Queue { id, queue } => records::call_queue(conn, id, queue).await,
        StoreCmd::AgentAnswered { id, agent, at } => {
            records::agent_answered(conn, id, agent, *at).await
        }
        StoreCmd::Event {
            id,
            at,
            kind,
            detail,
        } => records::call_event(conn, id, *at, kind, detail.as_deref()).await,
        StoreCmd::Ended {
            id,
            at,
            wait_ms,
            cause,
        } => records::call_ended(conn, id, *at, *wait_ms, cause).await,
        StoreCmd::RecordingFailed { id, error } => records::recording_failed(conn, id, error).await,
        StoreCmd::RecordingClosed { id, outcome } => {
            records::recording_closed(conn, id, outcome).await
        }
        StoreCmd::TransferStarted(t) => records::transfer_started(conn, t).await,
        StoreCmd::TransferAnswered {
            id,
            agent,
            at,
            recording_path,
            recording_error,
        } => {
            records::transfer_answered(
                conn,
                id,
                agent,
                *at,
                recording_path.as_deref(),
                recording_error.as_deref(),
            )
            .await
        }
        StoreCmd::TransferEnded {
            id,
            at,
            outcome,
            actor,
        } => records::transfer_ended(conn, id, *at, outcome, actor).await,
        StoreCmd::AssignAgency {
            incident_id,
            agency,
            actor,
            at,
        } => {
            let change = super::IncidentUpdate {
                agency: Some(agency.clone()),
                ..Default::default()
            };
            records::update_incident(conn, incident_id, &change, actor, *at)
                .await
                .map(|_| ())
        }
        StoreCmd::TransferRecording { id, outcome } => {
            records::transfer_recording(conn, id, outcome).await
        }
    }
}
