//! The media reactor: a few threads (one per core), each driving many
//! calls' sessions, instead of a tokio task and timer per call.
//!
//! Each thread keeps its sessions on a wheel of twenty 1 ms slots: a
//! session ticks every 20 ms in its own slot, so a thousand callers'
//! prompts go out spread over the 20 ms, not in one burst, and a waiting
//! caller costs no timer and no task wake-up of its own. Its socket is
//! not even registered for readiness: the tick reads what queued. Only
//! the sockets whose packets are relayed as they arrive (the caller's in
//! talk, the agent's and the dispatcher's) are registered with the
//! thread's epoll (`Session::relayed`), so relay adds no tick's wait.
//! While those packets come faster than one per `NAP` (200 µs), the
//! thread naps that long between turns and reads what came in one
//! turn: woken per packet, the wake-ups cost more than the relay. At
//! 1,000 bridged calls that took siaga from 87–90 % of a core to 67–79 %
//! and the loss at the peers from 21,214–32,528 packets to 0–1,692 (4
//! runs; 0 in two), for about 0.1 ms more relay latency at p50.
//!
//! Commands from the call are taken at the session's tick (at most 20 ms
//! late, far below any SIP round trip); a new session wakes its thread at
//! once. The call's `MediaControl` leaves its session's key with the
//! thread as it sends, and only a session so marked looks at its command
//! channel: with 2,000 callers waiting, looking at every channel at every
//! tick was 5.7 % of the media threads' time, for channels nearly always
//! empty. A session that panics is dropped alone, as its task would have
//! been: the call sees its media end, the other calls on the thread go on.

use super::ports::RtpSocket;
use super::session::{
    CallRecording, Finished, Leg, MediaCommand, MediaEvent, MediaParams, Scratch, Session,
};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// The wheel: a session ticks once per turn, in its own slot.
const SLOTS: usize = 20;
const SLOT: Duration = Duration::from_millis(1);
const WAKE: Token = Token(usize::MAX);
/// While relayed packets come faster than this, the thread naps this
/// long after each turn, so the packets of that time are read in one
/// turn instead of each waking it (see `Reactor::nap`).
const NAP: Duration = Duration::from_micros(200);

/// The threads, started on first use and kept for the process.
static REACTORS: OnceLock<Vec<Arc<Shared>>> = OnceLock::new();

/// What the call side of a thread sees.
struct Shared {
    inbox: Mutex<Vec<New>>,
    waker: Waker,
    /// Sessions on this thread, started and not yet finished.
    sessions: AtomicUsize,
    /// False once the thread has ended (it never should): it takes no new
    /// session. Changed and read under `inbox`'s lock.
    alive: AtomicBool,
    /// Keys of the sessions whose call sent a command (or went away)
    /// since the thread last looked.
    called: Mutex<Vec<u64>>,
}

impl Shared {
    fn new(poll: &Poll) -> std::io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKE)?,
            sessions: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            called: Mutex::new(Vec::new()),
        }))
    }
}

struct New {
    session: Session,
    key: u64,
    done: oneshot::Sender<Finished>,
}

/// The session a command was sent to has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the media session has stopped")]
pub struct MediaGone;

/// Names sessions for `MediaControl`; never reused.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// The call's side of its media session: commands, taken at the
/// session's next tick. Dropping it stops the session, as `Stop` does.
pub struct MediaControl {
    /// `None` only while dropping: the channel closes before the session
    /// is told to look.
    tx: Option<mpsc::UnboundedSender<MediaCommand>>,
    key: u64,
    /// The thread the session runs on (none if no media thread runs).
    shared: Option<Arc<Shared>>,
}

impl MediaControl {
    /// Queues a command for the session; an error once it has stopped.
    pub fn send(&self, cmd: MediaCommand) -> Result<(), MediaGone> {
        let tx = self.tx.as_ref().ok_or(MediaGone)?;
        tx.send(cmd).map_err(|_| MediaGone)?;
        // After the send: the thread that sees the key finds the command.
        self.mark();
        Ok(())
    }

    fn mark(&self) {
        if let Some(shared) = &self.shared {
            // A stopped thread's keys would pile up unread.
            if shared.alive.load(Ordering::Relaxed) {
                crate::lock(&shared.called).push(self.key);
            }
        }
    }
}

impl Drop for MediaControl {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.mark();
    }
}

/// Starts a call's media session on the least busy media thread, and
/// returns its control and a receiver that yields what the session hands
/// back after `MediaCommand::Stop` (or once the control is dropped); an
/// error there means the session failed.
pub fn start(
    rtp: RtpSocket,
    params: MediaParams,
    recording: CallRecording,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> (MediaControl, oneshot::Receiver<Finished>) {
    let (tx, commands) = mpsc::unbounded_channel();
    let (done, finished) = oneshot::channel();
    let session = Session::new(rtp, params, recording, commands, events, Instant::now());
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let new = New { session, key, done };
    let mut control = MediaControl {
        tx: Some(tx),
        key,
        shared: None,
    };
    let mut threads: Vec<&Arc<Shared>> = REACTORS.get_or_init(spawn_threads).iter().collect();
    threads.sort_by_key(|r| r.sessions.load(Ordering::Relaxed));
    for shared in threads {
        {
            let mut inbox = crate::lock(&shared.inbox);
            if !shared.alive.load(Ordering::Relaxed) {
                continue;
            }
            shared.sessions.fetch_add(1, Ordering::Relaxed);
            inbox.push(new);
        }
        if let Err(e) = shared.waker.wake() {
            // It still picks the session up at its next wake-up.
            warn!(error = %e, "cannot wake a media thread");
        }
        control.shared = Some(Arc::clone(shared));
        return (control, finished);
    }
    // No media thread runs (logged where it stopped): the session is
    // dropped here, and the call is told its media failed, as when a
    // session panics, rather than waiting for it forever.
    drop(new);
    (control, finished)
}

fn spawn_threads() -> Vec<Arc<Shared>> {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let started = Poll::new().and_then(|poll| {
            let shared = Shared::new(&poll)?;
            let theirs = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("siaga-media-{i}"))
                .spawn(move || {
                    crate::priority::favour_this_thread(crate::priority::MEDIA);
                    let reactor = Reactor::new(poll, Arc::clone(&theirs));
                    // A session's panic is caught around the session; this
                    // catches one of the thread's own. Its sessions are
                    // dropped with it (their calls are told), and so are
                    // those still in its inbox; new ones go to the others.
                    let _ = catch_unwind(AssertUnwindSafe(|| reactor.run()));
                    error!("a media thread stopped; its calls lost their media");
                    let mut inbox = crate::lock(&theirs.inbox);
                    theirs.alive.store(false, Ordering::Relaxed);
                    inbox.clear();
                    crate::lock(&theirs.called).clear();
                })?;
            Ok(shared)
        });
        match started {
            Ok(shared) => threads.push(shared),
            Err(e) => error!(error = %e, "cannot start a media thread"),
        }
    }
    threads
}

/// A session and what its thread knows of it.
struct Entry {
    session: Session,
    key: u64,
    done: oneshot::Sender<Finished>,
    /// The sockets registered with this thread's epoll, by leg.
    registered: [Option<RawFd>; 3],
    /// The call may have sent commands since the last tick.
    called: bool,
}

fn token(idx: usize, leg: Leg) -> Token {
    Token(idx * 4 + leg as usize)
}

fn leg_of(t: Token) -> (usize, Leg) {
    let leg = match t.0 % 4 {
        0 => Leg::Caller,
        1 => Leg::Agent,
        _ => Leg::Second,
    };
    (t.0 / 4, leg)
}

impl Entry {
    /// Registers what the session relays now and not before; takes back
    /// what it no longer relays.
    fn watch(&mut self, registry: &Registry, idx: usize) {
        let wanted = self.session.relayed();
        for leg in Leg::ALL {
            let i = leg as usize;
            if self.registered[i] == wanted[i] {
                continue;
            }
            if let Some(fd) = self.registered[i].take() {
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            if let Some(fd) = wanted[i] {
                match registry.register(&mut SourceFd(&fd), token(idx, leg), Interest::READABLE) {
                    Ok(()) => self.registered[i] = Some(fd),
                    Err(e) => {
                        error!(error = %e, ?leg, "cannot watch an RTP socket; its packets wait for the tick")
                    }
                }
            }
        }
    }

    /// Takes back every registration. Done before anything may close a
    /// registered socket: a closed descriptor's number can be reused by
    /// another call's socket, which must not lose its registration.
    fn unwatch(&mut self, registry: &Registry) {
        for fd in self.registered.iter_mut().filter_map(Option::take) {
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
    }
}

struct Reactor {
    poll: Poll,
    shared: Arc<Shared>,
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Where each session's entry is, by key.
    by_key: HashMap<u64, usize>,
    /// `Shared::called`'s contents, swapped out (kept to reuse its room).
    called: Vec<u64>,
    wheel: [Vec<usize>; SLOTS],
    /// The next slot to run, and when.
    slot: usize,
    slot_at: Instant,
    /// Legs whose last read stopped at `MAX_READ`: read again next turn.
    again: Vec<(usize, Leg)>,
    scratch: Box<Scratch>,
    /// Whether the last wait ended in under `NAP` with relayed packets.
    busy: bool,
    /// Naps begun (for tests; one cut to nothing by a slot due counts).
    naps: u64,
}

impl Reactor {
    fn new(poll: Poll, shared: Arc<Shared>) -> Reactor {
        Reactor {
            poll,
            shared,
            entries: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            called: Vec::new(),
            wheel: Default::default(),
            slot: 0,
            slot_at: Instant::now(),
            again: Vec::new(),
            scratch: Scratch::new(),
            busy: false,
            naps: 0,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            self.turn(&mut events);
        }
    }

    /// Waits for packets or the next slot, relays what came, and runs
    /// every slot whose time has come.
    fn turn(&mut self, events: &mut Events) {
        self.nap();
        self.admit();
        let waited = Instant::now();
        let timeout = self.timeout(waited);
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                error!(error = %e, "media thread cannot wait for its sockets");
                std::thread::sleep(SLOT);
            }
            return;
        }
        let now = Instant::now();
        let mut relayed = false;
        for (idx, leg) in std::mem::take(&mut self.again) {
            self.read(idx, leg, now);
        }
        for ev in events.iter() {
            if ev.token() != WAKE {
                relayed = true;
                let (idx, leg) = leg_of(ev.token());
                self.read(idx, leg, now);
            }
        }
        self.busy = relayed && now.duration_since(waited) < NAP;
        // Marks left while the thread waited count for the ticks below.
        self.mark_called();
        // Every slot whose time has come, in order: a thread that fell
        // behind catches up with each session's ticks (as tokio's
        // `MissedTickBehavior::Burst` did), so recordings keep time.
        while self.slot_at <= now {
            self.run_slot(now);
            self.slot = (self.slot + 1) % SLOTS;
            self.slot_at += SLOT;
        }
    }

    /// While relayed packets wake the thread more often than every `NAP`,
    /// it sleeps `NAP` (or until its next slot, if sooner) before it
    /// waits again, and reads what came meanwhile in one turn. Woken per
    /// packet, 500 bridged calls took 61–65 % of a core against 47–50 %
    /// when the thread happened to wait for a core and read in batches;
    /// and each packet relayed to a sleeping peer pays for waking it.
    /// A packet that comes during the nap waits at most `NAP`; one that
    /// comes after a quiet spell is read at once (the thread is not
    /// busy then, and waits in `poll`).
    fn nap(&mut self) {
        if !std::mem::take(&mut self.busy) || !self.again.is_empty() {
            return;
        }
        self.naps += 1;
        let nap = NAP.min(self.slot_at.saturating_duration_since(Instant::now()));
        if !nap.is_zero() {
            std::thread::sleep(nap);
        }
    }

    /// Takes in the sessions started since the last turn.
    fn admit(&mut self) {
        let new = std::mem::take(&mut *crate::lock(&self.shared.inbox));
        if new.is_empty() {
            return;
        }
        if self.entries.len() == self.free.len() {
            // Idle until now: the wheel restarts from the present instead
            // of running every empty slot since the last call.
            self.slot_at = Instant::now();
        }
        for New { session, key, done } in new {
            let entry = Entry {
                session,
                key,
                done,
                registered: [None; 3],
                // Commands sent before the session was taken in may have
                // left their key before it was known here.
                called: true,
            };
            let idx = match self.free.pop() {
                Some(idx) => {
                    self.entries[idx] = Some(entry);
                    idx
                }
                None => {
                    self.entries.push(Some(entry));
                    self.entries.len() - 1
                }
            };
            self.by_key.insert(key, idx);
            // The next slot to run: the first tick comes within 1 ms,
            // and sessions started at different moments spread out.
            self.wheel[self.slot].push(idx);
            if let Some(e) = self.entries[idx].as_mut() {
                e.watch(self.poll.registry(), idx);
            }
        }
    }

    /// Marks the sessions whose call sent something since the last turn.
    fn mark_called(&mut self) {
        std::mem::swap(&mut *crate::lock(&self.shared.called), &mut self.called);
        for key in self.called.drain(..) {
            // A key not here is a session already finished.
            if let Some(&idx) = self.by_key.get(&key) {
                if let Some(entry) = self.entries[idx].as_mut() {
                    entry.called = true;
                }
            }
        }
    }

    /// Until the next slot that has sessions; none while there are none
    /// (a new session wakes the thread); zero while reads are owed.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        (0..SLOTS)
            .find(|k| !self.wheel[(self.slot + k) % SLOTS].is_empty())
            .map(|k| (self.slot_at + SLOT * k as u32).saturating_duration_since(now))
    }

    /// A leg's socket has packets.
    fn read(&mut self, idx: usize, leg: Leg, now: Instant) {
        let Some(entry) = self.entries.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let scratch = &mut self.scratch;
        match catch_unwind(AssertUnwindSafe(|| {
            entry.session.readable(leg, now, scratch)
        })) {
            Ok(true) => self.again.push((idx, leg)),
            Ok(false) => {}
            Err(_) => self.fail(idx),
        }
    }

    /// Every session of the current slot: its commands, then its tick.
    fn run_slot(&mut self, now: Instant) {
        let mut slot = std::mem::take(&mut self.wheel[self.slot]);
        slot.retain(|&idx| {
            let Some(entry) = self.entries.get_mut(idx).and_then(Option::as_mut) else {
                return false;
            };
            let registry = self.poll.registry();
            let scratch = &mut self.scratch;
            let turn = catch_unwind(AssertUnwindSafe(|| {
                while std::mem::take(&mut entry.called) {
                    match entry.session.next_command() {
                        Ok(cmd) => {
                            let moves = cmd.moves_legs();
                            if moves {
                                entry.unwatch(registry);
                            }
                            let go_on = entry.session.apply(cmd);
                            if moves {
                                entry.watch(registry, idx);
                            }
                            if !go_on {
                                return false;
                            }
                            // Perhaps more: look again.
                            entry.called = true;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        // The call is gone without a word: stop all the same.
                        Err(mpsc::error::TryRecvError::Disconnected) => return false,
                    }
                }
                entry.session.tick(now, scratch);
                true
            }));
            match turn {
                Ok(true) => true,
                Ok(false) => {
                    self.finish(idx);
                    false
                }
                Err(_) => {
                    self.fail(idx);
                    false
                }
            }
        });
        self.wheel[self.slot] = slot;
    }

    /// A session stopped: its registrations go, its results to the call.
    fn finish(&mut self, idx: usize) {
        if let Some(mut entry) = self.remove(idx) {
            entry.unwatch(self.poll.registry());
            let _ = entry.done.send(entry.session.finish());
        }
    }

    /// A session panicked: dropped alone. The call's receiver errs, as a
    /// panicked task's handle did.
    fn fail(&mut self, idx: usize) {
        error!("a media session failed; the call ends without its media");
        if let Some(mut entry) = self.remove(idx) {
            entry.unwatch(self.poll.registry());
            for slot in &mut self.wheel {
                slot.retain(|&i| i != idx);
            }
        }
    }

    fn remove(&mut self, idx: usize) -> Option<Entry> {
        let entry = self.entries.get_mut(idx)?.take()?;
        self.by_key.remove(&entry.key);
        self.free.push(idx);
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::Law;
    use crate::media::ports::PortPool;
    use crate::media::prompts::{tone, Segment};
    use std::net::{SocketAddr, UdpSocket};

    /// A G.711 A-law RTP packet whose payload is `fill` repeated.
    fn packet(seq: u16, fill: u8) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&0x5107_u32.to_be_bytes());
        p.extend(std::iter::repeat_n(fill, 160));
        p
    }

    fn peer() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s
    }

    fn params(remote: SocketAddr) -> MediaParams {
        MediaParams {
            law: Law::Alaw,
            pt: 8,
            dtmf_pt: None,
            remote: Some(remote),
            rtp_timeout: Duration::from_secs(30),
        }
    }

    /// Sends `fill` from `from` to `to` every few ms until `at` receives a
    /// packet whose payload is all `fill`; false after two seconds.
    fn relayed(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, fill: u8) -> bool {
        let mut buf = [0u8; 2048];
        for seq in 0..100 {
            from.send_to(&packet(seq, fill), to).unwrap();
            for _ in 0..5 {
                match at.recv(&mut buf) {
                    Ok(n) if n == 172 && buf[12..n].iter().all(|&b| b == fill) => return true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        false
    }

    /// Reads until a silent prompt frame comes (A-law silence is 0xD5):
    /// the session is playing prompts, not relaying.
    fn hears_prompts(caller: &UdpSocket) -> bool {
        let mut buf = [0u8; 2048];
        (0..100).any(
            |_| matches!(caller.recv(&mut buf), Ok(172) if buf[12..172].iter().all(|&b| b == 0xD5)),
        )
    }

    /// A recording called `name` in a folder of its own (gone with the
    /// returned guard), on a recorder of its own.
    fn new_recorder() -> (tempfile::TempDir, crate::media::recorder::Recorder) {
        let dir = tempfile::tempdir().unwrap();
        let recorder = crate::media::recorder::Recorder::start(dir.path(), 64 << 20);
        (dir, recorder)
    }

    /// A session on the reactor for a caller at a fresh socket.
    struct Started {
        pool: PortPool,
        /// Where the session receives the caller's RTP.
        ours: SocketAddr,
        caller: UdpSocket,
        cmd: MediaControl,
        heard: mpsc::UnboundedReceiver<MediaEvent>,
        finished: oneshot::Receiver<Finished>,
    }

    fn started(ports: (u16, u16)) -> Started {
        started_recording(ports, CallRecording::Off)
    }

    fn started_recording(ports: (u16, u16), recording: CallRecording) -> Started {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), ports.0, ports.1);
        let rtp = pool.allocate().unwrap();
        let ours = SocketAddr::from(([127, 0, 0, 1], rtp.port));
        let caller = peer();
        let (events, heard) = mpsc::unbounded_channel();
        let (cmd, finished) = start(rtp, params(caller.local_addr().unwrap()), recording, events);
        Started {
            pool,
            ours,
            caller,
            cmd,
            heard,
            finished,
        }
    }

    #[tokio::test]
    async fn a_waiting_caller_hears_the_prompt_in_sequence_and_stop_hands_back_the_counts() {
        let Started {
            ours,
            caller,
            cmd,
            mut heard,
            finished,
            ..
        } = started((42100, 42199));
        cmd.send(MediaCommand::Play(vec![Segment::Audio(tone(1000.0, 200))]))
            .unwrap();
        for seq in 0..10 {
            caller.send_to(&packet(seq, 0x55), ours).unwrap();
        }
        let drained = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;
        assert!(
            matches!(drained, Ok(Some(MediaEvent::Drained))),
            "the prompt never finished"
        );

        // The tone came out first, as one paced stream: consecutive
        // sequence numbers, loud frames, then the silence that follows.
        let mut buf = [0u8; 2048];
        let mut seqs = Vec::new();
        let mut loud = 0;
        for _ in 0..15 {
            let n = caller.recv(&mut buf).expect("the prompt stopped");
            assert_eq!(n, 172);
            assert_eq!(buf[1] & 0x7f, 8);
            seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
            let mut pcm = [0i16; 160];
            Law::Alaw.decode_into(&buf[12..172], &mut pcm);
            if pcm.iter().map(|s| i64::from(*s).abs()).sum::<i64>() / 160 > 1000 {
                loud += 1;
            }
        }
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{seqs:?}"
        );
        assert!(
            (9..=11).contains(&loud),
            "{loud} loud frames of a 200 ms tone"
        );

        cmd.send(MediaCommand::Stop).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), finished).await;
        let stats = done
            .expect("the session never stopped")
            .expect("the session failed")
            .stats;
        assert_eq!(stats.packets_in, 10);
        assert_eq!(stats.bad_packets, 0);
        assert!(stats.packets_out >= 10);
    }

    /// A call's media starts before its recording's file exists; the
    /// frames made meanwhile are held and go to the file first, so the
    /// recording starts at the answer: here with the whole of a 400 ms
    /// tone that began 200 ms before the file was there.
    #[tokio::test]
    async fn a_recording_made_late_starts_at_the_answer() {
        let (dir, recorder) = new_recorder();
        let Started {
            cmd,
            finished,
            caller,
            ..
        } = started_recording((42500, 42599), CallRecording::Pending(recorder.held()));
        cmd.send(MediaCommand::Play(vec![Segment::Audio(tone(1000.0, 400))]))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let path = dir.path().join("late.wav");
        let rec = recorder.open(&path).await.unwrap();
        cmd.send(MediaCommand::Record(Some(rec))).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        cmd.send(MediaCommand::Stop).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), finished).await;
        let done = done.expect("the session never stopped").unwrap();
        assert!(done.held.is_none());
        let closed = done.recording.expect("no recording").close().await.unwrap();
        assert_eq!(closed.lost_samples, 0);
        assert!(closed.samples >= 28 * 160, "{} samples", closed.samples);

        // What the caller heard, the right channel, frame by frame.
        let mut reader = hound::WavReader::open(&path).unwrap();
        let s: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        let loud: Vec<bool> = s
            .chunks(2 * 160)
            .map(|f| {
                f.iter()
                    .skip(1)
                    .step_by(2)
                    .map(|x| i64::from(*x).abs())
                    .sum::<i64>()
                    / 160
                    > 1000
            })
            .collect();
        // The session may tick once before it takes the `Play`.
        let first = loud.iter().position(|&l| l);
        assert!(
            first <= Some(1),
            "the file does not start with the tone: {loud:?}"
        );
        let n = loud.iter().filter(|&&l| l).count();
        assert!(
            (19..=21).contains(&n),
            "{n} loud frames of a 400 ms tone: {loud:?}"
        );
        drop(caller);
    }

    /// RTP hijack: a stranger who finds a live call's ports and sends
    /// loud audio to both (the caller's and the agent's) is never relayed,
    /// hears nothing, and is not in the recording; the real peers, latched
    /// first, go on as before.
    #[tokio::test]
    async fn a_strangers_rtp_is_neither_relayed_nor_recorded_on_either_leg() {
        let (dir, recorder) = new_recorder();
        let Started {
            pool,
            ours,
            caller,
            cmd,
            finished,
            ..
        } = started_recording((42600, 42699), CallRecording::Pending(recorder.held()));
        let path = dir.path().join("hijack.wav");
        let rec = recorder.open(&path).await.unwrap();
        cmd.send(MediaCommand::Record(Some(rec))).unwrap();
        let agent = peer();
        let rtp = pool.allocate().unwrap();
        let theirs = SocketAddr::from(([127, 0, 0, 1], rtp.port));
        cmd.send(MediaCommand::Bridge {
            rtp,
            params: params(agent.local_addr().unwrap()),
        })
        .unwrap();
        // The real peers speak first (quiet, 0x55) and are latched.
        assert!(relayed(&caller, ours, &agent, 0x55), "caller to agent");
        assert!(relayed(&agent, theirs, &caller, 0x54), "agent to caller");

        // A byte whose A-law value is loud: what the stranger sends.
        let loud = (0..=255u8)
            .find(|&b| {
                let mut x = [0i16; 1];
                Law::Alaw.decode_into(&[b], &mut x);
                x[0].unsigned_abs() > 20_000
            })
            .unwrap();
        let stranger = peer();
        let strange = |seq: u16| {
            let mut p = packet(seq, loud);
            p[8..12].copy_from_slice(&0xBAD_u32.to_be_bytes());
            p
        };
        let mut buf = [0u8; 2048];
        let (mut at_agent, mut at_caller) = (0, 0);
        for seq in 0..50u16 {
            stranger.send_to(&strange(seq), ours).unwrap();
            stranger.send_to(&strange(seq), theirs).unwrap();
            // The stranger forging the real caller's stream (its SSRC)
            // from its own address fares no better.
            stranger.send_to(&packet(seq, loud), ours).unwrap();
            caller.send_to(&packet(200 + seq, 0x55), ours).unwrap();
            agent.send_to(&packet(200 + seq, 0x54), theirs).unwrap();
            for (sock, count) in [(&agent, &mut at_agent), (&caller, &mut at_caller)] {
                while let Ok(n) = sock.recv(&mut buf) {
                    assert!(
                        n < 12 || !buf[12..n].contains(&loud),
                        "the stranger was relayed"
                    );
                    *count += 1;
                }
            }
        }
        assert!(at_agent >= 25 && at_caller >= 25, "{at_agent} {at_caller}");
        assert!(
            stranger.recv(&mut buf).is_err(),
            "the stranger heard the call"
        );

        cmd.send(MediaCommand::Stop).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), finished).await;
        let done = done.expect("the session never stopped").unwrap();
        assert!(
            (1..=150).contains(&done.stats.strangers),
            "{}",
            done.stats.strangers
        );
        let closed = done.recording.expect("no recording").close().await.unwrap();
        assert!(closed.samples >= 50 * 160, "{} samples", closed.samples);
        let mut reader = hound::WavReader::open(&path).unwrap();
        let most = reader
            .samples::<i16>()
            .map(|s| s.unwrap().unsigned_abs())
            .max()
            .unwrap();
        assert!(most < 20_000, "the stranger's audio is in the recording");
    }

    /// The media threads run at `priority::MEDIA` where the process may
    /// raise a thread's priority (root here), at the normal one elsewhere.
    #[tokio::test]
    async fn media_threads_are_favoured_where_allowed() {
        use crate::priority::{expected, nices_of, MEDIA};
        let Started { cmd, .. } = started((42400, 42499));
        let nices = nices_of("siaga-media-");
        assert!(!nices.is_empty(), "no media thread found");
        assert!(nices.iter().all(|&n| n == expected(MEDIA)), "{nices:?}");
        drop(cmd);
    }

    /// A call that goes away without `Stop` still ends its session: the
    /// dropped control marks it, and its tick finds the channel closed.
    /// Likewise a command sent after many idle ticks is taken.
    #[tokio::test]
    async fn a_late_command_is_taken_and_a_dropped_control_ends_the_session() {
        let Started {
            caller,
            cmd,
            mut heard,
            finished,
            ..
        } = started((42300, 42399));
        // Many ticks with nothing sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cmd.send(MediaCommand::Play(vec![Segment::Audio(tone(1000.0, 40))]))
            .unwrap();
        let drained = tokio::time::timeout(Duration::from_secs(2), heard.recv()).await;
        assert!(
            matches!(drained, Ok(Some(MediaEvent::Drained))),
            "a command sent late was not taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(cmd);
        let done = tokio::time::timeout(Duration::from_secs(2), finished).await;
        assert!(
            matches!(done, Ok(Ok(_))),
            "the session went on after its control was dropped"
        );
        drop(caller);
    }

    /// While relayed packets wake the thread faster than `NAP`, it naps
    /// before it waits again; after a turn with none it waits at once, so
    /// a packet after a quiet spell is relayed without a nap's delay.
    /// Driven turn by turn, on a reactor of the test's own.
    #[test]
    fn a_busy_relay_naps_and_a_quiet_one_does_not() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 42300, 42399);
        let poll = Poll::new().unwrap();
        let shared = Shared::new(&poll).unwrap();
        let mut reactor = Reactor::new(poll, Arc::clone(&shared));
        let mut events = Events::with_capacity(64);
        let (caller, agent) = (peer(), peer());
        let rtp = pool.allocate().unwrap();
        let ours = SocketAddr::from(([127, 0, 0, 1], rtp.port));
        let (tx, commands) = mpsc::unbounded_channel();
        let (told, _heard) = mpsc::unbounded_channel();
        let (done, _finished) = oneshot::channel();
        let session = Session::new(
            rtp,
            params(caller.local_addr().unwrap()),
            CallRecording::Off,
            commands,
            told,
            Instant::now(),
        );
        // Bridged at its first tick: a session is taken in as called.
        tx.send(MediaCommand::Bridge {
            rtp: pool.allocate().unwrap(),
            params: params(agent.local_addr().unwrap()),
        })
        .unwrap();
        crate::lock(&shared.inbox).push(New {
            session,
            key: 1,
            done,
        });
        let got = |fill: u8| {
            let mut buf = [0u8; 2048];
            while let Ok(n) = agent.recv(&mut buf) {
                if n == 172 && buf[12..n].iter().all(|&b| b == fill) {
                    return true;
                }
            }
            false
        };
        let bridged = (0..50).any(|seq| {
            caller.send_to(&packet(seq, 0x41), ours).unwrap();
            reactor.turn(&mut events);
            got(0x41)
        });
        assert!(bridged, "the caller's packets never reached the agent");

        // Quiet: a turn that relays nothing (it waits for the slot).
        reactor.turn(&mut events);
        let naps = reactor.naps;
        // A packet after the quiet spell: relayed at once, no nap.
        caller.send_to(&packet(100, 0x51), ours).unwrap();
        reactor.turn(&mut events);
        assert_eq!(reactor.naps, naps, "napped after a quiet spell");
        assert!(got(0x51), "the packet after the quiet spell");
        // That wait ended at once with a relayed packet: busy, so the
        // next turn naps before it waits.
        reactor.turn(&mut events);
        assert_eq!(reactor.naps, naps + 1, "no nap while busy");
        // And relays what came meanwhile.
        caller.send_to(&packet(101, 0x52), ours).unwrap();
        reactor.turn(&mut events);
        assert!(got(0x52), "the packet after the nap");
        drop(tx);
    }

    /// The reactor registers relayed sockets by descriptor, per leg. Legs
    /// come and go (re-bridge) and move (a completed transfer makes the
    /// dispatcher's socket the agent's); relay must follow every time.
    #[tokio::test]
    async fn relay_follows_the_legs_through_rebridges_and_a_completed_transfer() {
        let Started {
            pool,
            ours,
            caller,
            cmd,
            finished,
            ..
        } = started((42200, 42299));
        let leg = |peer: &UdpSocket| {
            let rtp = pool.allocate().unwrap();
            let at = SocketAddr::from(([127, 0, 0, 1], rtp.port));
            (rtp, params(peer.local_addr().unwrap()), at)
        };

        for round in 0..3u8 {
            let agent = peer();
            let (rtp, params, theirs) = leg(&agent);
            cmd.send(MediaCommand::Bridge { rtp, params }).unwrap();
            assert!(
                relayed(&caller, ours, &agent, 0x10 + round),
                "round {round}: caller to agent"
            );
            assert!(
                relayed(&agent, theirs, &caller, 0x20 + round),
                "round {round}: agent to caller"
            );
            cmd.send(MediaCommand::Unbridge).unwrap();
            assert!(
                hears_prompts(&caller),
                "round {round}: no prompts after the agent left"
            );
        }

        let (agent, dispatcher) = (peer(), peer());
        let (rtp, params_a, to_agent) = leg(&agent);
        cmd.send(MediaCommand::Bridge {
            rtp,
            params: params_a,
        })
        .unwrap();
        assert!(relayed(&caller, ours, &agent, 0x31), "caller to agent");
        let (rtp, params_d, to_dispatcher) = leg(&dispatcher);
        cmd.send(MediaCommand::Consult {
            rtp,
            params: params_d,
            recording: None,
            agent_leg: None,
        })
        .unwrap();
        assert!(
            relayed(&agent, to_agent, &dispatcher, 0x32),
            "agent to dispatcher"
        );
        assert!(
            relayed(&dispatcher, to_dispatcher, &agent, 0x33),
            "dispatcher to agent"
        );
        cmd.send(MediaCommand::Complete).unwrap();
        assert!(
            relayed(&dispatcher, to_dispatcher, &caller, 0x34),
            "dispatcher to caller after completion"
        );
        assert!(
            relayed(&caller, ours, &dispatcher, 0x35),
            "caller to dispatcher after completion"
        );
        drop(cmd);
        let done = tokio::time::timeout(Duration::from_secs(5), finished).await;
        assert!(
            matches!(done, Ok(Ok(_))),
            "a dropped command sender stops the session"
        );
    }
}
