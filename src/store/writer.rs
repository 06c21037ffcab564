//! The store writer: applies call records in order, off the call path.
//!
//! Two stages. The first appends each batch to the journal and makes it
//! durable (`journal`), whatever the database does; the second writes
//! the batch to the database. A record the database refuses for good (a
//! constraint it breaks) is logged and skipped; while the database is down
//! or busy, the second stage waits and tries the same record again, so
//! order is kept, and the records behind it wait in the journal: a process
//! killed or stopped meanwhile loses none of them, the next start replays
//! them.

use super::journal::{Journal, Pending};
use super::{now_ms, records, NewCall, NewIncident, Store, StoreError};
use crate::ids::CallId;
use crate::media::unfinished::{self, FinishError};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// siaga classified the incident by itself (a ghost call): its
    /// category, and closed, if no one has classified it yet.
    Classified {
        incident: String,
        category: String,
        at: i64,
    },
    /// The caller pressed 5 twice: a silent emergency, on the call and on
    /// its incident's audit trail (once).
    SilentEmergency {
        id: CallId,
        incident: String,
        at: i64,
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
    /// An agent's phone bindings are now these (after a REGISTER).
    Bindings {
        agent: String,
        now: Vec<super::Registration>,
    },
    /// An agent's desk changed (the leader writes it).
    Desk(super::AgentDesk),
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
    /// Answered once everything queued before it is journaled.
    Journaled(tokio::sync::oneshot::Sender<()>),
}

/// How a recording ended: its checksum, or why it has none, and how much
/// audio was left out of it (the recorder's queue was full).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordingOutcome {
    pub sha256: Option<String>,
    pub error: Option<String>,
    /// None when nothing was left out.
    pub lost_ms: Option<i64>,
}

/// Where the writer keeps what is not in the database.
#[derive(Debug, Clone, Default)]
pub struct Places {
    /// The records journal's folder (None: no journal; store tests).
    pub journal: Option<PathBuf>,
    /// The recordings folder, looked through at start for recordings no
    /// record names (None: not looked at).
    pub recordings: Option<PathBuf>,
    /// This node (`cluster.node`): at start it closes only its own calls
    /// left open, and those on record under no node.
    pub node: String,
}

/// Where call tasks send their records; never blocks.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Queued>,
}

impl StoreWriter {
    /// Starts the writer with its journal in `places.journal` (None: no
    /// journal, records wait in memory only; for tests of the store). It
    /// first runs migrations, replays what the journal holds that the
    /// database lacks, closes the records of calls a previous process left
    /// open, repairs recordings left without a checksum and tells those in
    /// `places.recordings` no record names, then applies commands. `on_change` runs after each write that changes what the
    /// day's figures count (a call arrived, was answered, ended) or an
    /// incident. A journal that cannot be opened is logged; the calls go
    /// on, their records then wait in memory only.
    pub fn spawn(
        store: Store,
        places: Places,
        on_change: impl Fn(Changed) + Send + 'static,
    ) -> StoreWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let (journal, pending) = match places.journal.as_deref().map(Journal::open) {
            Some(Ok((j, pending))) => {
                info!(path = %j.path().display(), waiting = pending.len(), "records journal open");
                (Some(j), pending)
            }
            Some(Err(e)) => {
                error!(error = %e, "the records journal cannot be opened; records wait in memory only");
                (None, Vec::new())
            }
            None => (None, Vec::new()),
        };
        let applied = Arc::new(AtomicU64::new(0));
        let id = journal.as_ref().map(|j| j.id().to_string());
        let (staged_tx, staged) = mpsc::unbounded_channel();
        tokio::spawn(journal_stage(rx, journal, Arc::clone(&applied), staged_tx));
        tokio::spawn(run(store, staged, id, pending, applied, places, on_change));
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

    /// Waits until every record sent before this call is durable: in the
    /// journal, or in the database where there is no journal.
    pub async fn journaled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Queued::Journaled(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Most records in one transaction. A batch is whatever has queued up
/// while the last one was written, so at a calm hour it is one record,
/// and in a surge one commit (one fsync) carries hundreds.
const BATCH: usize = 256;

/// A batch on its way to the database: its records, the journal's number
/// of the first (None: not journaled), and who waits for it.
enum Staged {
    Batch {
        cmds: Vec<StoreCmd>,
        first: Option<u64>,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The first stage: takes what queued (up to `BATCH`), appends it to the
/// journal durably (on the blocking pool), hands it to the database stage.
async fn journal_stage(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut journal: Option<Journal>,
    applied: Arc<AtomicU64>,
    out: mpsc::UnboundedSender<Staged>,
) {
    let mut batch: Vec<StoreCmd> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut wait = None;
        match first {
            Queued::Cmd(cmd) => batch.push(cmd),
            other => wait = Some(other),
        }
        while wait.is_none() && batch.len() < BATCH {
            match rx.try_recv() {
                Ok(Queued::Cmd(cmd)) => batch.push(cmd),
                Ok(other) => wait = Some(other),
                Err(_) => break,
            }
        }
        let mut cmds = std::mem::take(&mut batch);
        let mut first = None;
        if let Some(j) = journal.take_if(|_| !cmds.is_empty()) {
            let done = applied.load(Ordering::Acquire);
            // The file's writes and fsync go to the blocking pool; the
            // journal and the batch come back with the outcome.
            let (back, cmds_back, result) = tokio::task::spawn_blocking(move || {
                let mut j = j;
                let r = j.append(&cmds, done);
                (j, cmds, r)
            })
            .await
            .expect("journal append does not panic");
            journal = Some(back);
            cmds = cmds_back;
            match result {
                Ok(n) => first = Some(n),
                Err(e) => {
                    error!(error = %e, "records could not be journaled; they wait in memory only")
                }
            }
        }
        if out.send(Staged::Batch { cmds, first }).is_err() {
            return;
        }
        match wait {
            Some(Queued::Flush(done)) => {
                let _ = out.send(Staged::Flush(done));
            }
            Some(Queued::Journaled(done)) if journal.is_some() => {
                let _ = done.send(());
            }
            Some(Queued::Journaled(done)) => {
                let _ = out.send(Staged::Flush(done));
            }
            _ => {}
        }
    }
}

/// The second stage: the database.
async fn run(
    store: Store,
    mut staged: mpsc::UnboundedReceiver<Staged>,
    journal: Option<String>,
    pending: Pending,
    applied: Arc<AtomicU64>,
    places: Places,
    on_change: impl Fn(Changed) + Send + 'static,
) {
    let Places {
        recordings, node, ..
    } = places;
    if let Err(e) = retry(&store, "migrations", || store.migrate()).await {
        error!(error = %e, "migrations failed; going on");
    }
    // What a previous process journaled that the database lacks, first,
    // in order: before the interrupted calls are closed (a call that ended
    // while the database was away has its end in here).
    if let Some(id) = &journal {
        let held = match retry(&store, "journal", || store.journal_applied(id)).await {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "cannot tell what the database holds of the journal; replaying it all");
                0
            }
        };
        let todo: Vec<&(u64, StoreCmd)> = pending.iter().filter(|(s, _)| *s > held).collect();
        if !todo.is_empty() {
            info!(
                records = todo.len(),
                "replaying journaled records the database lacks"
            );
        }
        for chunk in todo.chunks(BATCH) {
            let cmds: Vec<StoreCmd> = chunk.iter().map(|(_, c)| c.clone()).collect();
            write(&store, &cmds, Some((id, chunk[0].0))).await;
        }
        applied.store(
            pending.last().map_or(0, |(s, _)| *s).max(held),
            Ordering::Release,
        );
    }
    let own = Whose::Own(&node);
    if let Err(e) = retry(&store, "start-up", || close_left_open(&store, own)).await {
        error!(error = %e, "closing interrupted calls failed; going on");
    }
    if let Some(dir) = recordings {
        match orphan_recordings(&store, &dir, RECENT_FOLDERS).await {
            Ok(found) => {
                for path in found.iter().take(50) {
                    error!(path = %path.display(), "a recording on disk that no call record names");
                }
                if found.len() > 50 {
                    error!(
                        more = found.len() - 50,
                        "more recordings that no call record names"
                    );
                }
            }
            Err(e) => warn!(error = %e, "recordings not checked against the records"),
        }
    }
    while let Some(next) = staged.recv().await {
        let (cmds, first) = match next {
            Staged::Batch { cmds, first } => (cmds, first),
            Staged::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mark = journal.as_deref().zip(first);
        write(&store, &cmds, mark).await;
        if let Some(first) = first {
            applied.store(first + cmds.len() as u64 - 1, Ordering::Release);
        }
        for cmd in &cmds {
            match cmd {
                StoreCmd::NewCall(_) | StoreCmd::AgentAnswered { .. } | StoreCmd::Ended { .. } => {
                    on_change(Changed::Calls)
                }
                StoreCmd::AssignAgency { incident_id, .. } => {
                    on_change(Changed::Incident(incident_id.clone()))
                }
                StoreCmd::Classified { incident, .. }
                | StoreCmd::SilentEmergency { incident, .. } => {
                    on_change(Changed::Incident(incident.clone()))
                }
                _ => {}
            }
        }
    }
}

/// Writes a batch in one transaction, waiting out a database that is
/// down or busy; with `mark` (the journal and the number of the batch's
/// first record), the database notes in the same transaction that it
/// holds the journal up to the batch's last. Should the database refuse
/// one record for good, the batch is written again one record at a time,
/// so only that one is skipped and the order holds.
async fn write(store: &Store, batch: &[StoreCmd], mark: Option<(&str, u64)>) {
    if batch.is_empty() {
        return;
    }
    let last = mark.map(|(id, first)| (id, first + batch.len() as u64 - 1));
    if retry(store, "call records", || store.apply_marked(batch, last))
        .await
        .is_ok()
    {
        return;
    }
    for (i, cmd) in batch.iter().enumerate() {
        let one = mark.map(|(id, first)| (id, first + i as u64));
        if let Err(e) = retry(store, "call record", || {
            store.apply_marked(std::slice::from_ref(cmd), one)
        })
        .await
        {
            error!(error = %e, "database refused a record; skipped");
        }
    }
}

impl Store {
    /// Applies records in order, in one transaction: all or none.
    pub async fn apply(&self, cmds: &[StoreCmd]) -> Result<(), StoreError> {
        self.apply_marked(cmds, None).await
    }

    /// `apply`, and with `journal` notes in the same transaction that the
    /// database holds that journal up to that record.
    pub async fn apply_marked(
        &self,
        cmds: &[StoreCmd],
        journal: Option<(&str, u64)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for cmd in cmds {
            apply_on(&mut tx, cmd).await?;
        }
        if let Some((id, seq)) = journal {
            records::journal_applied(&mut tx, id, seq).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Tries `op` until it succeeds or fails for good (that error is returned).
async fn retry<T, F, Fut>(store: &Store, what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        let result = match tokio::time::timeout(Duration::from_secs(10), op()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
        };
        // A record refused for good says nothing against the database.
        store.health().writer_saw(match &result {
            Err(e) if e.is_transient() => Err(e),
            _ => Ok(()),
        });
        match result {
            Ok(v) => {
                if attempts > 0 {
                    info!(what, attempts, "database is back; records written");
                }
                return Ok(v);
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

/// Whose calls a node closes when it finds them open.
#[derive(Debug, Clone, Copy)]
pub enum Whose<'a> {
    /// This node's own, at its start, and those on record under no node.
    Own(&'a str),
    /// A node whose lease this node took over: it is gone.
    Gone(&'a str),
}

/// Closes the calls a stopped process left open, then finishes the
/// recordings a stop left without a checksum (those calls', and those of
/// calls that ended just before the stop). The records come first, all of
/// them: the callers are on the call-back list at once, however long the
/// files take to read.
pub async fn close_left_open(store: &Store, whose: Whose<'_>) -> Result<(), StoreError> {
    let (node, unnamed) = match whose {
        Whose::Own(n) => (n, true),
        Whose::Gone(n) => (n, false),
    };
    let cause = match whose {
        Whose::Own(_) => "interrupted_by_restart",
        Whose::Gone(_) => "node_failure",
    };
    for call in store.open_calls(node, unnamed).await? {
        warn!(call_id = %call.id, ?whose, "closing the record of a call interrupted by a stop");
        store.mark_interrupted(&call.id, now_ms(), cause).await?;
    }
    for call in store.unchecked_recordings(node, unnamed).await? {
        let Some(path) = call.recording_path.map(PathBuf::from) else {
            continue;
        };
        let shown = path.display().to_string();
        let reading = tokio::task::spawn_blocking(move || unfinished::finish(&path));
        let (sha, error) = match tokio::time::timeout(FINISH_WITHIN, reading).await {
            Ok(Ok(Ok(done))) => {
                if done.rewrote {
                    info!(call_id = %call.id, path = %shown, frames = done.frames, "a recording left open by a stop: header set to the frames on disk");
                }
                (Some(done.sha256), None)
            }
            Ok(Ok(Err(e @ FinishError::Unreachable { .. }))) if matches!(whose, Whose::Gone(_)) => {
                // Not on storage this node shares: its own node finishes
                // it when it starts again.
                warn!(call_id = %call.id, ?whose, error = %e, "a recording of the node taken over is left for that node's next start");
                continue;
            }
            Ok(Ok(Err(e))) => (
                None,
                Some(format!("recording not finished after a stop: {e}")),
            ),
            Ok(Err(e)) => (
                None,
                Some(format!("recording not finished after a stop: {e}")),
            ),
            Err(_) => {
                error!(path = %shown, waited = ?FINISH_WITHIN, "the recordings' storage does not answer; the recordings left by the stop wait for the next start");
                break;
            }
        };
        warn!(call_id = %call.id, path = %shown, ok = sha.is_some(), "a recording left without its checksum by a stop; finished now");
        store
            .recording_repaired(&call.id, sha.as_deref(), error.as_deref())
            .await?;
    }
    Ok(())
}

/// How long finishing one recording may take before the storage is taken
/// for hung (a dead NFS server): the rest wait for the next start.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// Day folders (YYYY/MM/DD) changed this recently are looked through at
/// start: a stop leaves its orphans in the last day's folder or two.
const RECENT_FOLDERS: Duration = Duration::from_secs(2 * 24 * 3600);

/// The recordings in day folders changed within `recent` whose call (the
/// file's name, before any `-transfer-N`) has no record: after a replay of
/// the journal there should be none, so each is told at error.
pub async fn orphan_recordings(
    store: &Store,
    dir: &std::path::Path,
    recent: Duration,
) -> Result<Vec<PathBuf>, StoreError> {
    let root = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || recent_recordings(&root, recent))
        .await
        .unwrap_or_default();
    let mut orphans = Vec::new();
    for path in files {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let call = stem.split("-transfer-").next().unwrap_or(stem);
        if !store.call_exists(call).await? {
            orphans.push(path);
        }
    }
    Ok(orphans)
}

/// `*.wav` in the day folders (three levels down) changed within `recent`.
fn recent_recordings(root: &std::path::Path, recent: Duration) -> Vec<PathBuf> {
    let fresh = |p: &std::path::Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().map_or(true, |age| age < recent))
    };
    let subdirs = |p: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for year in subdirs(root) {
        for month in subdirs(&year) {
            for day in subdirs(&month).into_iter().filter(|d| fresh(d)) {
                if let Ok(rd) = std::fs::read_dir(&day) {
                    out.extend(
                        rd.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "wav")),
                    );
                }
            }
        }
    }
    out.sort();
    out
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
        StoreCmd::Classified {
            incident,
            category,
            at,
        } => records::classified(conn, incident, category, *at).await,
        StoreCmd::SilentEmergency { id, incident, at } => {
            records::silent_emergency(conn, id, incident, *at).await
        }
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
        StoreCmd::Bindings { agent, now } => super::registrations::replace(conn, agent, now).await,
        StoreCmd::Desk(desk) => super::registrations::set_desk(conn, desk).await,
    }
}
