//! Call recording: stereo WAV, 8 kHz, 16-bit; caller on the left channel,
//! what the system or agent sends on the right.
//!
//! One thread owns every open file, so disk I/O never runs on the media
//! path. Each second it writes out what it holds and rewrites every WAV
//! header, so a crash (even `kill -9`) leaves a playable file that is at
//! most a second short; and every 250 ms a second thread makes what was
//! written durable, all files at once (`syncfs`), so a power cut loses at
//! most the last second and a quarter. A recording that cannot be written
//! is reported loudly, never silently lost.
//!
//! Each file's second comes round at its own moment (a second after it
//! was opened, then every second), not all files at once: with 1,000
//! open recordings, writing out every file's second together was 32 MB
//! in one burst, once a second, on a thread sharing the cores with the
//! media; spread out, the same writes go evenly.
//!
//! One `syncfs` for all files, not an `fdatasync` per file: at 1,500 open
//! recordings, 1,500 syncs a second on the one thread that also takes
//! every frame left it behind, and its queue (frames waiting) grew by
//! hundreds of megabytes.
//!
//! The thread takes its work in batches, every `BATCH_EVERY`: a frame
//! queued for it wakes nothing (with a thousand calls, a wake-up per frame
//! was 50,000 context switches a second). A batch that has taken messages
//! for `CUT_AFTER` stops there, rewrites the headers that are due and
//! says how far behind it is, then goes on without sleeping: a queue the
//! thread cannot empty (the cores or the disk too slow) must not stop the
//! headers being kept current. Files are created off the async
//! runtime (`open` runs on the blocking pool): creating a file can wait on
//! the filesystem, and a runtime thread waiting there stalls every call's
//! SIP and media with it. Nor does the call wait: its media starts at the
//! answer, and `Held` keeps its frames until the file exists, however
//! late (a busy disk made one wait over 5 s beside a loaded machine; a
//! call that gave up on it then lost its whole recording), counted
//! against the same bound as the queue below.
//!
//! Frames wait in memory until the thread takes them, so a thread that
//! falls behind (a slow disk, or cores busy with the media threads, which
//! run favoured) costs memory, not recordings. It says so: each frame
//! carries the moment its tick made it, and once the oldest frame a batch
//! takes is `BEHIND_WARN` old the thread warns, and says again when it has
//! caught up (`Recorder::behind` reads the figure).
//!
//! That memory has a bound (`[media] recording_queue_mib`): a disk that
//! hangs would otherwise fill memory at 32 KB a second per call until the
//! kernel killed the process, and every call with it. Once the queue
//! holds that much, a call's frames are left out instead of queued: its
//! `Recording` counts them, and when there is room again it queues one
//! `Gap` in their place, which the thread writes as silence, so the file
//! keeps the call's timeline. The first frame left out is logged as an
//! error; every recording says how much of it was left out
//! (`Closed::lost_samples`, stored with the call), and `Recorder::lost`
//! sums it for `/healthz`. Losing audio from a recording is bad; losing
//! the calls is worse.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Samples per channel in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// How long one frame lasts, in ms.
const FRAME_MS: u64 = 20;
/// How often each file's buffered audio is written out and its header
/// rewritten.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the recordings' filesystem is synced: often, so that each
/// sync writes back little at a time (a burst of a second's recordings
/// made prompts late).
const DURABLE_EVERY: Duration = Duration::from_millis(250);
/// How long creating a recording's file may take before the recorder
/// says the disk is failing (`Recorder::failing`); the call goes on
/// waiting for it (see `Recorder::open_within`).
pub const OPEN_WITHIN: Duration = Duration::from_secs(5);
/// How often the thread takes what was queued for it.
const BATCH_EVERY: Duration = Duration::from_millis(10);
/// How far behind the calls the thread may write before it warns; it
/// says it has caught up below `CAUGHT_UP`.
pub const BEHIND_WARN: Duration = Duration::from_secs(2);
/// How long since the last sync that succeeded before the thread says
/// recordings are not durable (eight syncs missed).
pub const UNSYNCED_WARN: Duration = Duration::from_secs(2);
const CAUGHT_UP: Duration = Duration::from_millis(500);

/// One 20 ms stereo frame: left (caller) and right (us/agent).
pub type StereoFrame = ([i16; FRAME_SAMPLES], [i16; FRAME_SAMPLES]);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create recording {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write WAV header for {path}: {source}")]
    Header { path: PathBuf, source: hound::Error },
    #[error("recording {path} failed while writing: {message} ({unwritten_ms} ms not recorded)")]
    Write {
        path: PathBuf,
        message: String,
        /// Audio that came after the failure, not in the file.
        unwritten_ms: u64,
    },
    #[error("the recorder thread is gone")]
    RecorderGone,
    #[error("cannot checksum {path}: {source}")]
    Checksum {
        path: PathBuf,
        source: std::io::Error,
    },
}

// Frames are nearly every message: carried inline they cost no allocation
// each (the channel allocates a block per 31 messages).
#[allow(clippy::large_enum_variant)]
enum Msg {
    Adopt {
        id: u64,
        writer: Box<Open>,
    },
    Frame {
        id: u64,
        frame: StereoFrame,
        /// When the session's tick made it.
        at: Instant,
    },
    /// This many frames were left out (the queue was full): silence
    /// stands in for them.
    Gap {
        id: u64,
        frames: u64,
    },
    Close {
        id: u64,
        reply: Option<tokio::sync::oneshot::Sender<Result<Closed, RecordError>>>,
    },
}

struct Open {
    path: PathBuf,
    wav: hound::WavWriter<BufWriter<File>>,
    frames: u64,
    /// Of `frames`, those written as silence for frames left out.
    lost: u64,
    dirty: bool,
    failed: Option<String>,
    /// Frames that came after the file failed: audio not recorded.
    unwritten: u64,
    /// Whether `Queue::failing` counts this file.
    counted_failing: bool,
    /// When this file is next written out (`sync`).
    due: Instant,
}

/// What a finished recording looks like.
#[derive(Debug, Clone)]
pub struct Closed {
    pub path: PathBuf,
    /// Samples per channel written.
    pub samples: u64,
    /// Of `samples`, those that are silence standing in for audio left
    /// out while the recorder's queue was full.
    pub lost_samples: u64,
}

impl Closed {
    /// `lost_samples` in milliseconds.
    pub fn lost_ms(&self) -> u64 {
        self.lost_samples / 8
    }
}

/// Handle to the recorder thread; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    next_id: Arc<AtomicU64>,
    progress: Arc<Progress>,
    queue: Arc<Queue>,
}

/// How many frames wait for the thread, against the bound.
struct Queue {
    /// Frames queued and not yet taken (the thread takes its count off
    /// once per batch).
    frames: AtomicUsize,
    limit: usize,
    /// Set by the first frame left out, cleared by the thread once the
    /// queue has room again: one error per episode, not per frame.
    full: AtomicBool,
    /// Frames left out of recordings since the start, or not written
    /// because their file failed (a full or broken disk).
    lost: AtomicU64,
    /// Open recordings whose writes failed.
    failing: AtomicU64,
}

impl Queue {
    fn new(limit_bytes: usize) -> Queue {
        Queue {
            frames: AtomicUsize::new(0),
            limit: (limit_bytes / std::mem::size_of::<Msg>()).max(1),
            full: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            failing: AtomicU64::new(0),
        }
    }

    /// Takes a place for one frame, unless the queue is at its bound.
    fn admit(&self) -> bool {
        if self.frames.load(Ordering::Relaxed) >= self.limit {
            self.left_out(1);
            // Read first: every frame left out need not write the flag.
            if !self.full.load(Ordering::Relaxed) && !self.full.swap(true, Ordering::Relaxed) {
                error!(
                    limit_mib = (self.limit * std::mem::size_of::<Msg>()) >> 20,
                    "the recorder's queue is full (the disk or the cores cannot keep up): audio is left out of recordings, silence stands in for it, and each call's record says how much"
                );
            }
            return false;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Counts a file whose writes failed in `failing`, once.
    fn note_failing(&self, w: &mut Open) {
        if w.failed.is_some() && !w.counted_failing {
            w.counted_failing = true;
            self.failing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `frames` left out of a recording, for `lost`.
    fn left_out(&self, frames: u64) {
        self.lost.fetch_add(frames, Ordering::Relaxed);
    }

    /// Audio left out so far, summed over recordings.
    fn lost(&self) -> Duration {
        Duration::from_millis(FRAME_MS * self.lost.load(Ordering::Relaxed))
    }

    /// The thread took `n` frames off the queue.
    fn taken(&self, n: usize) {
        if n == 0 {
            return;
        }
        let left = self.frames.fetch_sub(n, Ordering::Relaxed) - n;
        if left < self.limit / 2 && self.full.swap(false, Ordering::Relaxed) {
            warn!(
                lost = ?self.lost(),
                "the recorder's queue has room again; recordings are whole from here"
            );
        }
    }
}

/// What the thread last said about itself, for `Recorder::behind`.
struct Progress {
    /// What the millisecond figures count from.
    epoch: Instant,
    /// How old, in ms, the oldest frame of the thread's last batch was.
    lag_ms: AtomicU64,
    /// When (ms after `epoch`) the thread last finished a batch.
    done_ms: AtomicU64,
    /// When (ms after `epoch`) the last sync that succeeded began: what
    /// was written before then is on the disk.
    synced_ms: AtomicU64,
    /// When (ms after `epoch`, plus one; 0: never) a recording's file
    /// last could not be made.
    open_failed_ms: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            lag_ms: AtomicU64::new(0),
            done_ms: AtomicU64::new(0),
            synced_ms: AtomicU64::new(0),
            open_failed_ms: AtomicU64::new(0),
        }
    }

    fn open_failed(&self) {
        let at = self.epoch.elapsed().as_millis() as u64 + 1;
        self.open_failed_ms.store(at, Ordering::Relaxed);
    }

    /// How long since a file last could not be made (None: never).
    fn since_open_failed(&self) -> Option<Duration> {
        match self.open_failed_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }

    fn synced(&self, began: Instant) {
        let at = began.saturating_duration_since(self.epoch).as_millis() as u64;
        self.synced_ms.store(at, Ordering::Relaxed);
    }

    fn unsynced(&self) -> Duration {
        let synced = Duration::from_millis(self.synced_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(synced)
    }

    fn batch_done(&self, lag: Duration) {
        self.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        self.done_ms.store(now, Ordering::Relaxed);
    }

    fn behind(&self) -> Duration {
        let lag = Duration::from_millis(self.lag_ms.load(Ordering::Relaxed));
        let done = Duration::from_millis(self.done_ms.load(Ordering::Relaxed));
        lag.max(self.epoch.elapsed().saturating_sub(done))
    }
}

impl Recorder {
    /// Starts the recorder thread, and the thread that syncs the
    /// filesystem holding `dir` (the recordings folder) every
    /// `DURABLE_EVERY`.
    /// At most `queue_bytes` of frames wait for it in memory; past that,
    /// audio is left out of recordings (see the module's comment).
    pub fn start(dir: &Path, queue_bytes: usize) -> Recorder {
        let (tx, rx) = mpsc::channel();
        let progress = Arc::new(Progress::new());
        let queue = Arc::new(Queue::new(queue_bytes));
        let told = progress.clone();
        let durable = progress.clone();
        let taken = queue.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let syncer = Syncer {
            dir: dir.to_path_buf(),
        };
        let stopped = stop.clone();
        let periodic = syncer.clone();
        std::thread::Builder::new()
            .name("siaga-rec-sync".into())
            .spawn(move || {
                let mut failing = false;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(DURABLE_EVERY);
                    let began = Instant::now();
                    let synced = periodic.sync();
                    if synced.is_ok() {
                        durable.synced(began);
                    }
                    match synced {
                        Err(e) if !failing => {
                            failing = true;
                            error!(folder = %periodic.dir.display(), error = %e, "recordings cannot be synced to disk");
                        }
                        Ok(()) if failing => {
                            failing = false;
                            warn!(folder = %periodic.dir.display(), "recordings are synced to disk again");
                        }
                        _ => {}
                    }
                }
            })
            .expect("spawn recording sync thread");
        std::thread::Builder::new()
            .name("siaga-recorder".into())
            .spawn(move || {
                run(Thread::new(rx, told, taken, CUT_AFTER));
                // Everything is finished: durable before the thread ends.
                if let Err(e) = syncer.sync() {
                    error!(folder = %syncer.dir.display(), error = %e, "recordings cannot be synced to disk");
                }
                stop.store(true, Ordering::Relaxed);
            })
            .expect("spawn recorder thread");
        Recorder {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            progress,
            queue,
        }
    }

    /// Audio left out of recordings since the start (the queue was full),
    /// summed over every recording.
    pub fn lost(&self) -> Duration {
        self.queue.lost()
    }

    /// Whether recordings are failing now: an open recording's writes
    /// failed, or a file could not be made, or took over `OPEN_WITHIN`
    /// to make, in the last `FAILING_FOR` (a full, read-only, broken or
    /// overwhelmed disk).
    pub fn failing(&self) -> bool {
        self.queue.failing.load(Ordering::Relaxed) > 0
            || self
                .progress
                .since_open_failed()
                .is_some_and(|d| d < FAILING_FOR)
    }

    /// Whether audio is being left out now: the queue is at its bound
    /// and has not yet drained to half of it.
    pub fn losing(&self) -> bool {
        self.queue.full.load(Ordering::Relaxed)
    }

    /// How far behind the calls the thread writes: the age of the oldest
    /// frame its last batch took, or, when longer, the time since it last
    /// finished a batch (a thread stuck in a write is behind by as long);
    /// near zero when it keeps up.
    pub fn behind(&self) -> Duration {
        self.progress.behind()
    }

    /// How long since what was written was last made durable: about
    /// `DURABLE_EVERY` when the disk keeps up; growing while a sync
    /// hangs (a dead disk) or fails, when a power cut would lose that
    /// much of every open recording.
    pub fn unsynced(&self) -> Duration {
        self.progress.unsynced()
    }

    /// What a call's media keeps for its recording until `open` is done:
    /// frames held in memory count against the queue's bound.
    pub fn held(&self) -> Held {
        Held {
            frames: Vec::new(),
            missed: 0,
            queue: self.queue.clone(),
        }
    }

    /// Creates the WAV file (and its folders), on the blocking pool, and
    /// hands it to the thread; past `OPEN_WITHIN` the disk is reported
    /// failing while the call goes on waiting.
    pub async fn open(&self, path: &Path) -> Result<Recording, RecordError> {
        self.open_within(path, OPEN_WITHIN).await
    }

    /// Creating a file can hang (a hard NFS mount, a failing drive's
    /// retries) or merely be slow (a journal commit behind a burst of
    /// writes, cores busy elsewhere). The call does not wait on it (its
    /// frames are `Held`), so giving up would only lose a recording that
    /// a slow disk would still have made: past `slow` the recorder says
    /// so (a warning, `failing`), and goes on waiting. A disk that never
    /// answers keeps the recording unfinished, as it keeps the writes of
    /// files already open; the next start finishes what it can
    /// (`media::unfinished`).
    async fn open_within(&self, path: &Path, slow: Duration) -> Result<Recording, RecordError> {
        let this = self.clone();
        let owned = path.to_path_buf();
        self.made_within(path, slow, move || this.create(&owned))
            .await
    }

    /// Runs `create` on the blocking pool, saying so when it is slow.
    async fn made_within(
        &self,
        path: &Path,
        slow: Duration,
        create: impl FnOnce() -> Result<Recording, RecordError> + Send + 'static,
    ) -> Result<Recording, RecordError> {
        let mut created = tokio::task::spawn_blocking(create);
        let done = match tokio::time::timeout(slow, &mut created).await {
            Ok(done) => done,
            Err(_) => {
                warn!(
                    path = %path.display(),
                    waited = ?slow,
                    "creating a recording's file is slow (the disk does not answer); the call's audio is held for it"
                );
                self.progress.open_failed();
                let done = created.await;
                if done.as_ref().is_ok_and(|r| r.is_ok()) {
                    info!(path = %path.display(), "the slow recording's file is made");
                }
                done
            }
        };
        let result = done.map_err(|_| RecordError::RecorderGone)?;
        if result.is_err() {
            self.progress.open_failed();
        }
        result
    }

    fn create(&self, path: &Path) -> Result<Recording, RecordError> {
        let create = |source| RecordError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(create)?;
        }
        let file = File::create(path).map_err(create)?;
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut wav = hound::WavWriter::new(BufWriter::with_capacity(64 * 1024, file), spec)
            .map_err(|source| RecordError::Header {
                path: path.to_path_buf(),
                source,
            })?;
        // A valid (empty) file from the first moment.
        wav.flush().map_err(|source| RecordError::Header {
            path: path.to_path_buf(),
            source,
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let open = Open {
            path: path.to_path_buf(),
            wav,
            frames: 0,
            lost: 0,
            dirty: false,
            failed: None,
            unwritten: 0,
            counted_failing: false,
            due: Instant::now() + SYNC_EVERY,
        };
        self.tx
            .send(Msg::Adopt {
                id,
                writer: Box::new(open),
            })
            .map_err(|_| RecordError::RecorderGone)?;
        Ok(Recording {
            id,
            tx: self.tx.clone(),
            queue: self.queue.clone(),
            path: path.to_path_buf(),
            missing: 0,
            closed: false,
        })
    }
}

/// One call's recording. Dropping it closes the file too (without reply).
pub struct Recording {
    id: u64,
    tx: mpsc::Sender<Msg>,
    queue: Arc<Queue>,
    path: PathBuf,
    /// Frames left out since the last one queued: a `Gap` goes before
    /// the next frame that finds room, or before the close.
    missing: u64,
    closed: bool,
}

impl Recording {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one frame, made by the tick at `at`; never blocks. With the
    /// queue at its bound, the frame is left out and counted.
    pub fn write(&mut self, left: [i16; FRAME_SAMPLES], right: [i16; FRAME_SAMPLES], at: Instant) {
        if !self.queue.admit() {
            self.missing += 1;
            return;
        }
        self.send_gap();
        let _ = self.tx.send(Msg::Frame {
            id: self.id,
            frame: (left, right),
            at,
        });
    }

    fn send_gap(&mut self) {
        if self.missing > 0 {
            let _ = self.tx.send(Msg::Gap {
                id: self.id,
                frames: std::mem::take(&mut self.missing),
            });
        }
    }

    /// Finishes the file and returns what was written.
    pub async fn close(mut self) -> Result<Closed, RecordError> {
        self.closed = true;
        self.send_gap();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Close {
                id: self.id,
                reply: Some(reply),
            })
            .map_err(|_| RecordError::RecorderGone)?;
        rx.await.map_err(|_| RecordError::RecorderGone)?
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.closed {
            self.send_gap();
            let _ = self.tx.send(Msg::Close {
                id: self.id,
                reply: None,
            });
        }
    }
}

/// How long a file that could not be made keeps `Recorder::failing` set.
pub const FAILING_FOR: Duration = Duration::from_secs(30);

/// A call's frames, made while its recording's file is still being
/// created: the call's media starts at the answer, not when the disk has
/// made a file, so a caller never waits in silence for the disk. Frames
/// are kept while the recorder's queue has room (held frames take their
/// places in it, so a thousand calls waiting on a slow disk cost no more
/// memory than the bound) and the ones after that counted as left out;
/// `write_to` hands them to the recording once it exists, so the file
/// starts at the answer and says how much of the call it is missing.
/// Nothing is allocated unless a frame has to wait.
pub struct Held {
    frames: Vec<(StereoFrame, Instant)>,
    missed: u64,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("frames", &self.frames.len())
            .field("missed", &self.missed)
            .finish()
    }
}

impl Held {
    /// One frame, made by the tick at `at`.
    pub fn keep(&mut self, left: [i16; FRAME_SAMPLES], right: [i16; FRAME_SAMPLES], at: Instant) {
        if self.queue.admit() {
            self.frames.push(((left, right), at));
        } else {
            self.missed += 1;
        }
    }

    /// Frames made so far, kept or not.
    pub fn len(&self) -> u64 {
        self.frames.len() as u64 + self.missed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues what was kept, then the count of what was not (written as
    /// silence before the next frame, or at the close).
    pub fn write_to(mut self, rec: &mut Recording) {
        let frames = std::mem::take(&mut self.frames);
        // Their places pass to the queue: given back, then taken again
        // one by one as they are queued.
        self.queue.taken(frames.len());
        for ((left, right), at) in frames {
            rec.write(left, right, at);
        }
        // Counted as left out in the recorder's sum when they were.
        rec.missing += std::mem::take(&mut self.missed);
    }
}

impl Drop for Held {
    /// Frames never written (the file could not be made) give their
    /// places back.
    fn drop(&mut self) {
        self.queue.taken(self.frames.len());
    }
}

/// SHA-256 of a file, hex. Blocking: call from a blocking context.
pub fn sha256_file(path: &Path) -> Result<String, RecordError> {
    super::unfinished::sha256_of(path).map_err(|source| RecordError::Checksum {
        path: path.to_path_buf(),
        source,
    })
}

fn run(mut thread: Thread) {
    let mut pause = true;
    loop {
        // Sleeping, not waiting on the channel: senders wake nobody. A
        // batch that was cut goes on at once: the queue is still full.
        if pause {
            std::thread::sleep(BATCH_EVERY);
        }
        match thread.step() {
            Taken::Emptied => pause = true,
            Taken::Cut => pause = false,
            Taken::Gone => return,
        }
    }
}

/// What one batch did with the queue.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    /// It took everything that was queued.
    Emptied,
    /// It stopped at `cut_after`, with messages still queued.
    Cut,
    /// Every sender is gone: the files are finished.
    Gone,
}

/// The recorder thread's state between batches.
struct Thread {
    rx: mpsc::Receiver<Msg>,
    open: HashMap<u64, Box<Open>>,
    behind: Behind,
    /// Where each batch leaves its lag, for `Recorder::behind`.
    progress: Arc<Progress>,
    /// Told how many frames each batch took.
    queue: Arc<Queue>,
    /// The longest a batch takes messages before the thread rewrites
    /// the headers that are due and says how far behind it is: a queue
    /// that never empties must not stop either.
    cut_after: Duration,
}

/// A batch looks at the clock once per this many messages.
const CLOCK_EVERY: u32 = 32;
/// See `Thread::cut_after`.
const CUT_AFTER: Duration = Duration::from_millis(100);

impl Thread {
    fn new(
        rx: mpsc::Receiver<Msg>,
        progress: Arc<Progress>,
        queue: Arc<Queue>,
        cut_after: Duration,
    ) -> Thread {
        Thread {
            rx,
            open: HashMap::new(),
            behind: Behind::default(),
            progress,
            queue,
            cut_after,
        }
    }

    /// Takes one batch, then writes out every file whose second is due.
    fn step(&mut self) -> Taken {
        let taken = Instant::now();
        let until = taken + self.cut_after;
        let mut oldest: Option<Instant> = None;
        let mut count = 0u32;
        let mut frames = 0usize;
        let outcome = loop {
            count = count.wrapping_add(1);
            if count.is_multiple_of(CLOCK_EVERY) && Instant::now() >= until {
                break Taken::Cut;
            }
            match self.rx.try_recv() {
                Ok(Msg::Adopt { id, writer }) => {
                    self.open.insert(id, writer);
                }
                Ok(Msg::Frame { id, frame, at }) => {
                    frames += 1;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    if let Some(w) = self.open.get_mut(&id) {
                        if !write_frame(w, &frame) {
                            self.queue.left_out(1);
                        }
                        self.queue.note_failing(w);
                    }
                }
                Ok(Msg::Gap {
                    id,
                    frames: left_out,
                }) => {
                    if let Some(w) = self.open.get_mut(&id) {
                        write_silence(w, left_out);
                        self.queue.note_failing(w);
                    }
                }
                Ok(Msg::Close { id, reply }) => {
                    if let Some(w) = self.open.remove(&id) {
                        if w.counted_failing {
                            self.queue.failing.fetch_sub(1, Ordering::Relaxed);
                        }
                        let result = finish(*w);
                        if let Err(e) = &result {
                            error!(error = %e, "recording could not be finished");
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break Taken::Emptied,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.queue.taken(frames);
                    for (_, w) in self.open.drain() {
                        let _ = finish(*w);
                    }
                    return Taken::Gone;
                }
            }
        };
        self.queue.taken(frames);
        let lag = oldest.map_or(Duration::ZERO, |o| taken.saturating_duration_since(o));
        self.behind.update(lag, self.open.len());
        self.behind
            .durable(self.progress.unsynced(), self.open.len());
        self.progress.batch_done(lag);
        let now = Instant::now();
        for w in self.open.values_mut() {
            if w.due <= now {
                w.due = now + SYNC_EVERY;
                sync(w);
                self.queue.note_failing(w);
            }
        }
        outcome
    }
}

/// Whether the thread has said it is behind, or that recordings have
/// not been made durable for a while.
#[derive(Default)]
struct Behind {
    lag: Alarm,
    unsynced: Alarm,
}

impl Behind {
    fn update(&mut self, lag: Duration, open: usize) {
        match self.lag.crossed(lag, BEHIND_WARN, CAUGHT_UP) {
            Some(true) => {
                warn!(behind = ?lag, open, "recordings are written behind the calls: the disk or the cores cannot keep up, and frames wait in memory")
            }
            Some(false) => info!(open, "recordings have caught up with the calls"),
            None => {}
        }
    }

    /// Told by the recorder thread, not the syncing one: a sync that
    /// hangs holds its own thread.
    fn durable(&mut self, unsynced: Duration, open: usize) {
        match self.unsynced.crossed(unsynced, UNSYNCED_WARN, CAUGHT_UP) {
            Some(true) => {
                error!(unsynced = ?unsynced, open, "recordings have not been made durable for a while (the disk does not finish its syncs): a power cut would lose that much of every open recording")
            }
            Some(false) => info!(open, "recordings are made durable again"),
            None => {}
        }
    }
}

/// A warning said once when a figure reaches its mark, and the all-clear
/// once it has fallen well below.
#[derive(Default)]
struct Alarm {
    on: bool,
}

impl Alarm {
    /// `Some(true)` when `value` has just reached `high`, `Some(false)`
    /// when it has just fallen below `low`.
    fn crossed(&mut self, value: Duration, high: Duration, low: Duration) -> Option<bool> {
        if !self.on && value >= high {
            self.on = true;
            Some(true)
        } else if self.on && value < low {
            self.on = false;
            Some(false)
        } else {
            None
        }
    }
}

/// Returns false when the frame is not in the file (the file failed, now
/// or before): that much audio is lost.
fn write_frame(w: &mut Open, frame: &StereoFrame) -> bool {
    if w.failed.is_some() {
        w.unwritten += 1;
        return false;
    }
    let mut samples = w.wav.get_i16_writer(2 * FRAME_SAMPLES as u32);
    for i in 0..FRAME_SAMPLES {
        samples.write_sample(frame.0[i]);
        samples.write_sample(frame.1[i]);
    }
    match samples.flush() {
        Ok(()) => {
            w.frames += 1;
            w.dirty = true;
            true
        }
        Err(e) => {
            error!(path = %w.path.display(), error = %e, "recording write failed");
            w.failed = Some(e.to_string());
            w.unwritten += 1;
            false
        }
    }
}

/// Silence for `frames` frames left out, so the file keeps the call's
/// timeline.
fn write_silence(w: &mut Open, frames: u64) {
    const SILENCE: StereoFrame = ([0; FRAME_SAMPLES], [0; FRAME_SAMPLES]);
    let before = w.frames;
    for _ in 0..frames {
        if w.failed.is_some() {
            // Already counted as left out; not written either.
            break;
        }
        write_frame(w, &SILENCE);
    }
    w.lost += w.frames - before;
}

/// Writes out what is buffered and rewrites the header: the file is
/// playable as it stands (`Syncer` makes it durable).
fn sync(w: &mut Open) {
    if !w.dirty || w.failed.is_some() {
        return;
    }
    w.dirty = false;
    if let Err(e) = w.wav.flush() {
        error!(path = %w.path.display(), error = %e, "recording flush failed");
        w.failed = Some(e.to_string());
    }
}

/// Makes the recordings' filesystem durable: one `syncfs(2)` for every
/// file on it, however many are open.
#[derive(Clone)]
struct Syncer {
    dir: PathBuf,
}

impl Syncer {
    fn sync(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = File::open(&self.dir)?;
        // SAFETY: syncfs takes a file descriptor and nothing else; `dir`
        // keeps it open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn finish(w: Open) -> Result<Closed, RecordError> {
    let Open {
        path,
        wav,
        frames,
        lost,
        failed,
        unwritten,
        ..
    } = w;
    if let Some(message) = failed {
        return Err(RecordError::Write {
            path,
            message,
            unwritten_ms: unwritten * FRAME_MS,
        });
    }
    // Durable at the next sync (`Syncer`), as the open files are.
    wav.finalize().map_err(|e| RecordError::Write {
        path: path.clone(),
        message: e.to_string(),
        unwritten_ms: 0,
    })?;
    if lost > 0 {
        warn!(path = %path.display(), lost_ms = lost * FRAME_MS, "recording finished with audio left out");
    }
    Ok(Closed {
        path,
        samples: frames * FRAME_SAMPLES as u64,
        lost_samples: lost * FRAME_SAMPLES as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_stereo_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/call.wav");
        let rec = Recorder::start(dir.path(), 64 << 20);
        let mut r = rec.open(&path).await.unwrap();
        for i in 0..50 {
            r.write([i; FRAME_SAMPLES], [-i; FRAME_SAMPLES], Instant::now());
        }
        let closed = r.close().await.unwrap();
        assert_eq!(closed.samples, 50 * FRAME_SAMPLES as u64);
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().channels, 2);
        assert_eq!(reader.spec().sample_rate, 8000);
        let s: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(s.len(), 2 * 50 * FRAME_SAMPLES);
        assert_eq!((s[2 * 160 * 7], s[2 * 160 * 7 + 1]), (7, -7));
        let sum = sha256_file(&path).unwrap();
        assert_eq!(sum.len(), 64);
        assert_eq!(sum, sha256_file(&path).unwrap());
    }

    /// While a recording is open, its header is kept current: a reader
    /// that opens the file mid-call (as after a crash) sees the frames.
    #[tokio::test]
    async fn header_is_current_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.wav");
        let rec = Recorder::start(dir.path(), 64 << 20);
        let mut r = rec.open(&path).await.unwrap();
        for _ in 0..10 {
            r.write([1; FRAME_SAMPLES], [2; FRAME_SAMPLES], Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 2 * 10 * FRAME_SAMPLES as u32);
        drop(r);
    }

    /// The thread tells how far behind the calls it writes: the age of
    /// the oldest frame of its last batch, back to zero once it keeps up.
    #[tokio::test]
    async fn says_how_far_behind_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::start(dir.path(), 64 << 20);
        let mut r = rec.open(&dir.path().join("late.wav")).await.unwrap();
        assert!(
            rec.behind() < Duration::from_millis(500),
            "{:?}",
            rec.behind()
        );
        // Frames their ticks made three seconds ago, as when the thread
        // could not run for that long, for a while.
        let mut seen = Duration::ZERO;
        for _ in 0..100 {
            let then = Instant::now().checked_sub(Duration::from_secs(3)).unwrap();
            r.write([1; FRAME_SAMPLES], [2; FRAME_SAMPLES], then);
            std::thread::sleep(Duration::from_millis(2));
            seen = seen.max(rec.behind());
        }
        assert!(
            (Duration::from_secs(3)..Duration::from_secs(10)).contains(&seen),
            "{seen:?}"
        );
        // Caught up: frames as fresh as they come.
        r.write([1; FRAME_SAMPLES], [2; FRAME_SAMPLES], Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rec.behind() < Duration::from_secs(1), "{:?}", rec.behind());
        r.close().await.unwrap();
    }

    /// A thread that has not finished a batch for three seconds (stuck
    /// in a write to a hung disk) is three seconds behind, whatever its
    /// last batch said.
    #[test]
    fn a_thread_that_does_not_come_round_is_behind() {
        let progress = Progress {
            epoch: Instant::now().checked_sub(Duration::from_secs(3)).unwrap(),
            lag_ms: AtomicU64::new(0),
            done_ms: AtomicU64::new(0),
            synced_ms: AtomicU64::new(0),
            open_failed_ms: AtomicU64::new(0),
        };
        assert!(progress.behind() >= Duration::from_secs(3));
        progress.batch_done(Duration::ZERO);
        assert!(progress.behind() < Duration::from_millis(100));
        progress.batch_done(Duration::from_secs(4));
        assert!(progress.behind() >= Duration::from_secs(4));
        // Likewise a sync that has not come back for three seconds.
        assert!(progress.unsynced() >= Duration::from_secs(3));
        progress.synced(Instant::now());
        assert!(progress.unsynced() < Duration::from_millis(100));
    }

    /// A file whose writes start failing (here a disk that fills up: a
    /// 64 KiB tmpfs, two seconds of a call) is told, not hidden: `failing`
    /// while it is open, the audio after the failure counted as lost (in
    /// `lost` and on the close's error), and `failing` clears once the
    /// file is closed. Mounting needs root, which the suite runs as.
    #[tokio::test]
    async fn a_disk_that_fills_up_is_told_and_its_lost_audio_counted() {
        struct Mounted(PathBuf);
        impl Drop for Mounted {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::create_dir(&small).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        // SAFETY: geteuid has no preconditions.
        if !mounted && unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small disk needs root");
            return;
        }
        assert!(mounted, "root could not mount a tmpfs");
        let _unmount = Mounted(small.clone());
        let recorder = Recorder::start(&small, 64 << 20);
        let mut rec = recorder.open(&small.join("full.wav")).await.unwrap();
        assert!(!recorder.failing());
        let frame = [1000i16; FRAME_SAMPLES];
        // Frames until the file's first write-out (once a second) fails.
        let mut sent = 0u64;
        for _ in 0..200 {
            for _ in 0..5 {
                rec.write(frame, frame, Instant::now());
                sent += 1;
            }
            if recorder.failing() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recorder.failing(), "a failed write is not told");
        for _ in 0..10 {
            rec.write(frame, frame, Instant::now());
            sent += 1;
        }
        let err = rec.close().await.unwrap_err();
        let RecordError::Write { unwritten_ms, .. } = err else {
            panic!("{err}");
        };
        assert!(unwritten_ms >= 10 * FRAME_MS, "{unwritten_ms} ms");
        assert!(unwritten_ms <= sent * FRAME_MS);
        assert_eq!(recorder.lost(), Duration::from_millis(unwritten_ms));
        assert!(!recorder.failing(), "the failed file is closed");
    }

    /// A file that cannot be made keeps `failing` set for FAILING_FOR.
    #[tokio::test]
    async fn a_file_that_cannot_be_made_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(dir.path(), 64 << 20);
        let blocked = dir.path().join("plain-file");
        std::fs::write(&blocked, b"x").unwrap();
        assert!(recorder.open(&blocked.join("a.wav")).await.is_err());
        assert!(recorder.failing());
        assert!(recorder
            .progress
            .since_open_failed()
            .is_some_and(|d| d < FAILING_FOR));
    }

    /// The syncing thread keeps telling when it last made the files
    /// durable: about every `DURABLE_EVERY`, never near the warning.
    #[tokio::test]
    async fn says_when_it_last_made_recordings_durable() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::start(dir.path(), 64 << 20);
        let mut r = rec.open(&dir.path().join("durable.wav")).await.unwrap();
        // Longer than the warning: a thread that never told would fail.
        let mut worst = Duration::ZERO;
        for _ in 0..25 {
            r.write([1; FRAME_SAMPLES], [2; FRAME_SAMPLES], Instant::now());
            tokio::time::sleep(Duration::from_millis(100)).await;
            worst = worst.max(rec.unsynced());
        }
        assert!(worst < UNSYNCED_WARN, "{worst:?}");
        // A time since, not a constant: samples 100 ms apart over syncs
        // 250 ms apart catch one at least 150 ms old.
        assert!(worst >= Duration::from_millis(100), "{worst:?}");
        r.close().await.unwrap();
    }

    /// A queue that never empties does not hold up the thread's other
    /// work: the batch is cut, the headers that are due are rewritten
    /// and the lag is told, and the next batch takes the rest.
    #[test]
    fn a_batch_that_cannot_empty_the_queue_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.wav");
        let (tx, rx) = mpsc::channel();
        let rec = Recorder {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            progress: Arc::new(Progress::new()),
            queue: Arc::new(Queue::new(64 << 20)),
        };
        let mut r = rec.create(&path).unwrap();
        let mut thread = Thread::new(rx, rec.progress.clone(), rec.queue.clone(), Duration::ZERO);
        assert_eq!(thread.step(), Taken::Emptied);
        for w in thread.open.values_mut() {
            w.due = Instant::now();
        }
        let then = Instant::now().checked_sub(Duration::from_secs(3)).unwrap();
        for i in 0..1000 {
            r.write([i as i16; FRAME_SAMPLES], [0; FRAME_SAMPLES], then);
        }
        assert_eq!(thread.step(), Taken::Cut);
        let frames = hound::WavReader::open(&path).unwrap().len() / 2 / FRAME_SAMPLES as u32;
        assert!((1..1000).contains(&frames), "{frames} frames in the header");
        assert!(rec.behind() >= Duration::from_secs(3), "{:?}", rec.behind());
        let mut batches = 1;
        while thread.step() == Taken::Cut {
            batches += 1;
        }
        assert!(batches > 2, "{batches} batches");
        drop(r);
        assert_eq!(thread.step(), Taken::Emptied);
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 2 * 1000 * FRAME_SAMPLES as u32);
        let last = reader
            .samples::<i16>()
            .nth(2 * 999 * FRAME_SAMPLES)
            .unwrap();
        assert_eq!(last.unwrap(), 999);
        drop(rec);
        assert_eq!(thread.step(), Taken::Gone);
    }

    /// A recorder whose thread the test drives by hand (`Thread::step`),
    /// with a queue of `queue_bytes`.
    fn by_hand(queue_bytes: usize) -> (Recorder, Thread) {
        let (tx, rx) = mpsc::channel();
        let rec = Recorder {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            progress: Arc::new(Progress::new()),
            queue: Arc::new(Queue::new(queue_bytes)),
        };
        let thread = Thread::new(rx, rec.progress.clone(), rec.queue.clone(), CUT_AFTER);
        (rec, thread)
    }

    /// A queue at its bound leaves frames out instead of growing: the
    /// recording counts them, silence stands in for them (the file keeps
    /// the call's length and timeline), the close says how much, and the
    /// recorder tells it while it lasts.
    #[tokio::test]
    async fn a_full_queue_leaves_frames_out_and_silence_keeps_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounded.wav");
        let (rec, mut thread) = by_hand(10 * std::mem::size_of::<Msg>());
        let mut r = rec.create(&path).unwrap();
        let frame = |v: i16| ([v; FRAME_SAMPLES], [-v; FRAME_SAMPLES]);
        // The thread takes nothing (a hung disk) while 100 frames come:
        // 10 are queued, 90 left out.
        for v in 1..=100 {
            let (left, right) = frame(v);
            r.write(left, right, Instant::now());
        }
        assert!(rec.losing());
        assert_eq!(rec.lost(), Duration::from_millis(90 * 20));
        assert_eq!(thread.step(), Taken::Emptied);
        assert!(!rec.losing(), "the queue has room again");
        // Room again: the gap goes first, then 10 frames; then the queue
        // fills once more and the call's last 5 frames are left out.
        for v in 101..=115 {
            let (left, right) = frame(v);
            r.write(left, right, Instant::now());
        }
        assert!(rec.losing());
        let closing = tokio::spawn(r.close());
        tokio::task::yield_now().await;
        assert_eq!(thread.step(), Taken::Emptied);
        let closed = closing.await.unwrap().unwrap();
        assert_eq!(closed.samples, 115 * FRAME_SAMPLES as u64);
        assert_eq!(closed.lost_samples, 95 * FRAME_SAMPLES as u64);
        assert_eq!(closed.lost_ms(), 1_900);
        assert_eq!(rec.lost(), Duration::from_millis(1_900));

        let mut reader = hound::WavReader::open(&path).unwrap();
        let s: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(s.len(), 2 * 115 * FRAME_SAMPLES);
        // Each frame's first left and right sample, in the file's order.
        let at = |f: usize| (s[2 * FRAME_SAMPLES * f], s[2 * FRAME_SAMPLES * f + 1]);
        let expected: Vec<(i16, i16)> = (1..=10)
            .map(|v| (v, -v))
            .chain(std::iter::repeat_n((0, 0), 90))
            .chain((101..=110).map(|v| (v, -v)))
            .chain(std::iter::repeat_n((0, 0), 5))
            .collect();
        let found: Vec<(i16, i16)> = (0..115).map(at).collect();
        assert_eq!(found, expected);
        assert!(s[2 * FRAME_SAMPLES * 10..2 * FRAME_SAMPLES * 100]
            .iter()
            .all(|&x| x == 0));
    }

    /// A file made late: the frames held for it come first, as many as
    /// the queue's bound had room for (held frames take places in it);
    /// silence stands for those after them (counted as left out, in the
    /// recording and in the recorder's sum), then the rest. The places
    /// held frames took are given back, written or dropped.
    #[tokio::test]
    async fn held_frames_start_the_file_within_the_queues_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.wav");
        let room = 60;
        let (rec, mut thread) = by_hand(room * std::mem::size_of::<Msg>());
        let frame = |v: i16| ([v; FRAME_SAMPLES], [-v; FRAME_SAMPLES]);
        let mut held = rec.held();
        assert!(held.is_empty());
        let made = room as i16 + 7;
        for v in 1..=made {
            let (left, right) = frame(v);
            held.keep(left, right, Instant::now());
        }
        assert_eq!(held.len(), made as u64);
        assert!(rec.losing(), "frames beyond the bound are not held");
        assert_eq!(rec.lost(), Duration::from_millis(7 * 20));
        // A second call's held frames find no room either.
        let mut other = rec.held();
        let (left, right) = frame(1);
        other.keep(left, right, Instant::now());
        assert_eq!(rec.lost(), Duration::from_millis(8 * 20));
        drop(other);

        let mut r = rec.create(&path).unwrap();
        held.write_to(&mut r);
        // The held frames fill the queue until the thread takes them.
        assert_eq!(rec.queue.frames.load(Ordering::Relaxed), room);
        assert_eq!(thread.step(), Taken::Emptied);
        for v in 1001..=1003 {
            let (left, right) = frame(v);
            r.write(left, right, Instant::now());
        }
        let closing = tokio::spawn(r.close());
        tokio::task::yield_now().await;
        assert_eq!(thread.step(), Taken::Emptied);
        let closed = closing.await.unwrap().unwrap();
        let frames = room + 7 + 3;
        assert_eq!(closed.samples, (frames * FRAME_SAMPLES) as u64);
        assert_eq!(closed.lost_ms(), 7 * 20);
        assert_eq!(rec.lost(), Duration::from_millis(8 * 20), "counted once");
        assert!(!rec.losing(), "the held frames' places were given back");
        assert_eq!(rec.queue.frames.load(Ordering::Relaxed), 0);

        let mut reader = hound::WavReader::open(&path).unwrap();
        let s: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        let at = |f: usize| (s[2 * FRAME_SAMPLES * f], s[2 * FRAME_SAMPLES * f + 1]);
        let expected: Vec<(i16, i16)> = (1..=room as i16)
            .map(|v| (v, -v))
            .chain(std::iter::repeat_n((0, 0), 7))
            .chain((1001..=1003).map(|v| (v, -v)))
            .collect();
        assert_eq!((0..frames).map(at).collect::<Vec<_>>(), expected);
    }

    /// Frames held for a file that is never made give their places back.
    #[test]
    fn held_frames_dropped_give_their_places_back() {
        let (rec, _thread) = by_hand(10 * std::mem::size_of::<Msg>());
        let mut held = rec.held();
        for _ in 0..10 {
            held.keep([1; FRAME_SAMPLES], [1; FRAME_SAMPLES], Instant::now());
        }
        assert_eq!(rec.queue.frames.load(Ordering::Relaxed), 10);
        drop(held);
        assert_eq!(rec.queue.frames.load(Ordering::Relaxed), 0);
    }

    /// A warning once at the mark, quiet while the figure hovers between
    /// the marks, the all-clear once below the lower one.
    #[test]
    fn an_alarm_says_each_crossing_once() {
        let ms = Duration::from_millis;
        let mut alarm = Alarm::default();
        let seen: Vec<Option<bool>> = [100, 2000, 3000, 1000, 2500, 400, 300, 2000]
            .into_iter()
            .map(|v| alarm.crossed(ms(v), ms(2000), ms(500)))
            .collect();
        let (on, off) = (Some(true), Some(false));
        assert_eq!(seen, [None, on, None, None, None, off, None, on]);
    }

    /// A file whose creation hangs (here held back until the test lets
    /// it go, as a dead or overwhelmed disk would) makes the recorder say
    /// it is failing once past the limit, and is still waited for: when
    /// the disk answers, the call has its recording.
    #[tokio::test]
    async fn a_file_slow_to_create_is_reported_and_still_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.wav");
        let rec = Recorder::start(dir.path(), 64 << 20);
        let (answer, disk) = std::sync::mpsc::channel::<()>();
        let opening = {
            let (rec, path) = (rec.clone(), path.clone());
            tokio::spawn(async move {
                let this = rec.clone();
                let create = move || {
                    disk.recv().unwrap();
                    this.create(&path)
                };
                rec.made_within(Path::new("slow.wav"), Duration::from_millis(200), create)
                    .await
            })
        };
        let began = Instant::now();
        while !rec.failing() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "a hung creation is not reported"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!opening.is_finished(), "the call gave up on its file");
        answer.send(()).unwrap();
        let made = tokio::time::timeout(Duration::from_secs(30), opening).await;
        let made = made.expect("the file was not made once the disk answered");
        let r = made.unwrap().expect("the late file was refused");
        assert_eq!(r.close().await.unwrap().samples, 0);
        assert!(path.exists());
    }

    #[tokio::test]
    async fn unwritable_path_is_an_error() {
        let rec = Recorder::start(Path::new("/tmp"), 64 << 20);
        let err = match rec.open(Path::new("/proc/no/such/dir/x.wav")).await {
            Err(e) => e,
            Ok(_) => panic!("opened an impossible path"),
        };
        assert!(matches!(err, RecordError::Create { .. }));
    }
}
