//! Call recording: stereo WAV, 8 kHz, 16-bit; caller on the left channel,
//! what the system or agent sends on the right.
//!
//! One thread owns every open file, so disk I/O never runs on the media
//! path. Each second it rewrites the WAV header and syncs the data, so a
//! crash (even `kill -9`) leaves a playable file that is at most a second
//! short. A recording that cannot be written is reported loudly, never
//! silently lost.
//!
//! The thread takes its work in batches, every `BATCH_EVERY`: a frame
//! queued for it wakes nothing (with a thousand calls, a wake-up per frame
//! was 50,000 context switches a second). Files are created off the async
//! runtime (`open` runs on the blocking pool): creating a file can wait on
//! the filesystem, and a runtime thread waiting there stalls every call's
//! SIP and media with it.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Samples per channel in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// How often headers are rewritten and data synced.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the thread takes what was queued for it.
const BATCH_EVERY: Duration = Duration::from_millis(10);

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
    #[error("recording {path} failed while writing: {message}")]
    Write { path: PathBuf, message: String },
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
    },
    Close {
        id: u64,
        reply: Option<tokio::sync::oneshot::Sender<Result<Closed, RecordError>>>,
    },
}

struct Open {
    path: PathBuf,
    wav: hound::WavWriter<BufWriter<File>>,
    /// A second handle on the same file, to fsync after the header rewrite.
    sync_handle: File,
    frames: u64,
    dirty: bool,
    failed: Option<String>,
}

/// What a finished recording looks like.
#[derive(Debug, Clone)]
pub struct Closed {
    pub path: PathBuf,
    /// Samples per channel written.
    pub samples: u64,
}

/// Handle to the recorder thread; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    next_id: std::sync::Arc<AtomicU64>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("siaga-recorder".into())
            .spawn(move || run(rx))
            .expect("spawn recorder thread");
        Recorder {
            tx,
            next_id: std::sync::Arc::new(AtomicU64::new(1)),
        }
    }

    /// Creates the WAV file (and its folders), on the blocking pool, and
    /// hands it to the thread.
    pub async fn open(&self, path: &Path) -> Result<Recording, RecordError> {
        let this = self.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || this.create(&path))
            .await
            .map_err(|_| RecordError::RecorderGone)?
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
        let sync_handle = file.try_clone().map_err(create)?;
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
            sync_handle,
            frames: 0,
            dirty: false,
            failed: None,
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
            path: path.to_path_buf(),
            closed: false,
        })
    }
}

/// One call's recording. Dropping it closes the file too (without reply).
pub struct Recording {
    id: u64,
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    closed: bool,
}

impl Recording {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one frame; never blocks.
    pub fn write(&self, left: [i16; FRAME_SAMPLES], right: [i16; FRAME_SAMPLES]) {
        let _ = self.tx.send(Msg::Frame {
            id: self.id,
            frame: (left, right),
        });
    }

    /// Finishes the file and returns what was written.
    pub async fn close(mut self) -> Result<Closed, RecordError> {
        self.closed = true;
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
            let _ = self.tx.send(Msg::Close {
                id: self.id,
                reply: None,
            });
        }
    }
}

/// SHA-256 of a file, hex. Blocking: call from a blocking context.
pub fn sha256_file(path: &Path) -> Result<String, RecordError> {
    let err = |source| RecordError::Checksum {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn run(rx: mpsc::Receiver<Msg>) {
    let mut open: HashMap<u64, Box<Open>> = HashMap::new();
    let mut last_sync = Instant::now();
    loop {
        // Sleeping, not waiting on the channel: senders wake nobody.
        std::thread::sleep(BATCH_EVERY);
        loop {
            match rx.try_recv() {
                Ok(Msg::Adopt { id, writer }) => {
                    open.insert(id, writer);
                }
                Ok(Msg::Frame { id, frame }) => {
                    if let Some(w) = open.get_mut(&id) {
                        write_frame(w, &frame);
                    }
                }
                Ok(Msg::Close { id, reply }) => {
                    if let Some(w) = open.remove(&id) {
                        let result = finish(*w);
                        if let Err(e) = &result {
                            error!(error = %e, "recording could not be finished");
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    for (_, w) in open.drain() {
                        let _ = finish(*w);
                    }
                    return;
                }
            }
        }
        if last_sync.elapsed() >= SYNC_EVERY {
            last_sync = Instant::now();
            for w in open.values_mut() {
                sync(w);
            }
        }
    }
}

fn write_frame(w: &mut Open, frame: &StereoFrame) {
    if w.failed.is_some() {
        return;
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
        }
        Err(e) => {
            error!(path = %w.path.display(), error = %e, "recording write failed");
            w.failed = Some(e.to_string());
        }
    }
}

fn sync(w: &mut Open) {
    if !w.dirty || w.failed.is_some() {
        return;
    }
    w.dirty = false;
    if let Err(e) = w.wav.flush() {
        error!(path = %w.path.display(), error = %e, "recording flush failed");
        w.failed = Some(e.to_string());
        return;
    }
    if let Err(e) = w.sync_handle.sync_data() {
        warn!(path = %w.path.display(), error = %e, "recording fsync failed");
    }
}

fn finish(w: Open) -> Result<Closed, RecordError> {
    let Open {
        path,
        wav,
        sync_handle,
        frames,
        failed,
        ..
    } = w;
    if let Some(message) = failed {
        return Err(RecordError::Write { path, message });
    }
    wav.finalize().map_err(|e| RecordError::Write {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if let Err(e) = sync_handle.sync_all() {
        warn!(path = %path.display(), error = %e, "recording fsync failed");
    }
    Ok(Closed {
        path,
        samples: frames * FRAME_SAMPLES as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_stereo_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/call.wav");
        let rec = Recorder::start();
        let r = rec.open(&path).await.unwrap();
        for i in 0..50 {
            r.write([i; FRAME_SAMPLES], [-i; FRAME_SAMPLES]);
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
        let rec = Recorder::start();
        let r = rec.open(&path).await.unwrap();
        for _ in 0..10 {
            r.write([1; FRAME_SAMPLES], [2; FRAME_SAMPLES]);
        }
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 2 * 10 * FRAME_SAMPLES as u32);
        drop(r);
    }

    #[tokio::test]
    async fn unwritable_path_is_an_error() {
        let rec = Recorder::start();
        let err = match rec.open(Path::new("/proc/no/such/dir/x.wav")).await {
            Err(e) => e,
            Ok(_) => panic!("opened an impossible path"),
        };
        assert!(matches!(err, RecordError::Create { .. }));
    }
}
