//! Prompts in Bahasa Indonesia: loaded once into memory, played by a
//! `Player` one 20 ms frame at a time.

use super::recorder::FRAME_SAMPLES;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Audio shared between every call that plays it.
pub type Clip = Arc<[i16]>;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{file}: cannot read prompt: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}: expected 8000 Hz mono 16-bit PCM WAV, found {found}")]
    Format { file: PathBuf, found: String },
    #[error("{dir}: missing prompt `{name}.wav` (run scripts/make-prompts)")]
    Missing { dir: PathBuf, name: String },
}

/// Prompts every deployment must have.
pub const REQUIRED: &[&str] = &[
    "greeting-112",
    "greeting-119",
    "queue-position",
    "queue-wait",
    "hold-music",
    "silent",
    "silent-ack",
];

#[derive(Debug, Clone, Default)]
pub struct Prompts {
    clips: HashMap<String, Clip>,
}

impl Prompts {
    /// Loads every `*.wav` of `dir` and checks that the required prompts
    /// and the number words are there.
    pub fn load(dir: &Path) -> Result<Prompts, PromptError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PromptError::Read {
            file: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut clips = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wav") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            clips.insert(name.to_string(), load_clip(&path)?);
        }
        let prompts = Prompts { clips };
        let words = NUMBER_WORDS.iter().map(|w| format!("num-{w}"));
        for name in REQUIRED.iter().map(|s| s.to_string()).chain(words) {
            if !prompts.clips.contains_key(&name) {
                return Err(PromptError::Missing {
                    dir: dir.to_path_buf(),
                    name,
                });
            }
        }
        Ok(prompts)
    }

    pub fn get(&self, name: &str) -> Option<Clip> {
        self.clips.get(name).cloned()
    }

    /// "Mohon tetap di saluran. Anda berada di antrean nomor N. Petugas kami
    /// akan segera melayani Anda." as a list of segments.
    pub fn queue_announcement(&self, position: u32) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut push = |name: &str| {
            if let Some(c) = self.get(name) {
                out.push(Segment::Audio(c));
            }
        };
        push("queue-position");
        for w in indonesian_number(position) {
            push(&format!("num-{w}"));
        }
        out.push(Segment::Silence(FRAME_SAMPLES * 10));
        if let Some(c) = self.get("queue-wait") {
            out.push(Segment::Audio(c));
        }
        out.push(Segment::Silence(FRAME_SAMPLES * 25));
        out
    }
}

fn load_clip(path: &Path) -> Result<Clip, PromptError> {
    let reader = hound::WavReader::open(path).map_err(|e| PromptError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let spec = reader.spec();
    if spec.sample_rate != 8000
        || spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(PromptError::Format {
            file: path.to_path_buf(),
            found: format!(
                "{} Hz, {} channel(s), {}-bit {:?}",
                spec.sample_rate, spec.channels, spec.bits_per_sample, spec.sample_format
            ),
        });
    }
    let samples: Result<Vec<i16>, _> = reader.into_samples::<i16>().collect();
    let samples = samples.map_err(|e| PromptError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(samples.into())
}

/// The words every number up to 9,999 is built from (file `num-WORD.wav`).
pub const NUMBER_WORDS: &[&str] = &[
    "satu", "dua", "tiga", "empat", "lima", "enam", "tujuh", "delapan", "sembilan", "sepuluh",
    "sebelas", "belas", "puluh", "seratus", "ratus", "seribu", "ribu",
];

const UNITS: [&str; 10] = [
    "", "satu", "dua", "tiga", "empat", "lima", "enam", "tujuh", "delapan", "sembilan",
];

/// Spells `n` (1..=9999; larger is capped) in Indonesian words.
pub fn indonesian_number(n: u32) -> Vec<&'static str> {
    let n = n.clamp(1, 9999);
    let mut w = Vec::new();
    let thousands = n / 1000;
    let hundreds = n / 100 % 10;
    let rest = n % 100;
    match thousands {
        0 => {}
        1 => w.push("seribu"),
        t => w.extend([UNITS[t as usize], "ribu"]),
    }
    match hundreds {
        0 => {}
        1 => w.push("seratus"),
        h => w.extend([UNITS[h as usize], "ratus"]),
    }
    match rest {
        0 => {}
        10 => w.push("sepuluh"),
        11 => w.push("sebelas"),
        12..=19 => w.extend([UNITS[(rest - 10) as usize], "belas"]),
        1..=9 => w.push(UNITS[rest as usize]),
        _ => {
            w.extend([UNITS[(rest / 10) as usize], "puluh"]);
            if !rest.is_multiple_of(10) {
                w.push(UNITS[(rest % 10) as usize]);
            }
        }
    }
    w
}

/// A sine tone (for beeps), with 5 ms fades so it does not click.
pub fn tone(freq: f64, ms: u32) -> Clip {
    let n = (8 * ms) as usize;
    let fade = 40usize.min(n / 2);
    (0..n)
        .map(|i| {
            let edge = i.min(n - 1 - i);
            let gain = if edge < fade {
                edge as f64 / fade as f64
            } else {
                1.0
            };
            let v = (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin();
            (v * gain * 12000.0) as i16
        })
        .collect::<Vec<i16>>()
        .into()
}

/// A piece of what a caller hears.
#[derive(Debug, Clone)]
pub enum Segment {
    Audio(Clip),
    /// This many samples of silence.
    Silence(usize),
}

/// Plays queued segments frame by frame; when nothing is queued it loops the
/// background clip (hold music), so a caller never waits in silence.
#[derive(Default)]
pub struct Player {
    queue: VecDeque<Segment>,
    /// Offset into the front segment.
    offset: usize,
    background: Option<Clip>,
    background_offset: usize,
}

impl Player {
    pub fn enqueue(&mut self, segments: impl IntoIterator<Item = Segment>) {
        self.queue.extend(segments);
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.offset = 0;
    }

    pub fn set_background(&mut self, clip: Option<Clip>) {
        self.background = clip;
        self.background_offset = 0;
    }

    /// Whether queued (foreground) segments remain.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Fills one frame. Returns true if the frame came from the queue.
    pub fn next_frame(&mut self, out: &mut [i16; FRAME_SAMPLES]) -> bool {
        let mut filled = 0;
        let foreground = !self.queue.is_empty();
        while filled < FRAME_SAMPLES {
            let Some(seg) = self.queue.front() else { break };
            let len = match seg {
                Segment::Audio(c) => c.len(),
                Segment::Silence(n) => *n,
            };
            let take = (len - self.offset).min(FRAME_SAMPLES - filled);
            match seg {
                Segment::Audio(c) => {
                    out[filled..filled + take].copy_from_slice(&c[self.offset..self.offset + take])
                }
                Segment::Silence(_) => out[filled..filled + take].fill(0),
            }
            filled += take;
            self.offset += take;
            if self.offset >= len {
                self.queue.pop_front();
                self.offset = 0;
            }
        }
        if filled < FRAME_SAMPLES {
            if foreground {
                // The queue ran out mid-frame: finish it with silence.
                out[filled..].fill(0);
                return true;
            }
            match &self.background {
                Some(bg) if !bg.is_empty() => {
                    for s in out.iter_mut() {
                        *s = bg[self.background_offset];
                        self.background_offset = (self.background_offset + 1) % bg.len();
                    }
                }
                _ => out.fill(0),
            }
        }
        foreground
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_indonesian() {
        let s = |n| indonesian_number(n).join(" ");
        assert_eq!(s(1), "satu");
        assert_eq!(s(10), "sepuluh");
        assert_eq!(s(11), "sebelas");
        assert_eq!(s(12), "dua belas");
        assert_eq!(s(20), "dua puluh");
        assert_eq!(s(37), "tiga puluh tujuh");
        assert_eq!(s(100), "seratus");
        assert_eq!(s(111), "seratus sebelas");
        assert_eq!(s(250), "dua ratus lima puluh");
        assert_eq!(s(1000), "seribu");
        assert_eq!(s(1019), "seribu sembilan belas");
        assert_eq!(s(2407), "dua ribu empat ratus tujuh");
        assert_eq!(s(0), "satu");
        assert_eq!(
            s(123456),
            "sembilan ribu sembilan ratus sembilan puluh sembilan"
        );
    }

    #[test]
    fn every_number_uses_known_words() {
        for n in 1..=9999 {
            for w in indonesian_number(n) {
                assert!(NUMBER_WORDS.contains(&w), "{n}: {w}");
            }
        }
    }

    #[test]
    fn player_plays_queue_then_background() {
        let mut p = Player::default();
        let clip: Clip = (1..=200).collect::<Vec<i16>>().into();
        p.enqueue([Segment::Audio(clip), Segment::Silence(100)]);
        p.set_background(Some(vec![7i16; 3].into()));
        let mut f = [0i16; FRAME_SAMPLES];
        assert!(p.next_frame(&mut f));
        assert_eq!(f[0], 1);
        assert_eq!(f[159], 160);
        assert!(p.next_frame(&mut f));
        assert_eq!(f[39], 200);
        assert_eq!(f[40], 0);
        assert!(!p.busy());
        assert!(!p.next_frame(&mut f));
        assert!(f.iter().all(|&s| s == 7));
    }

    /// The committed prompts load and satisfy every requirement.
    #[test]
    fn committed_prompts_load() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let p = Prompts::load(&dir).expect("prompts");
        let a = p.queue_announcement(23);
        assert!(a.len() >= 5);
    }
}
