//! What the caller's side says without words: whether they speak (a
//! voice-activity detector), whether anything at all comes from their
//! line, and the keys they press, sent as RFC 4733 telephone-events or as
//! in-band DTMF tones in the audio. A caller who cannot speak (an intruder
//! in the house, a stroke) can still press 5 twice: the UK's Silent
//! Solution, which siaga follows. Pure: frames and packets in, findings
//! out, no clock and no I/O.
//!
//! The detector works on the decoded 8 kHz caller audio, one 20 ms frame
//! (160 samples) at a time. A frame is voiced when it is loud enough
//! (RMS at least `VOICE_RMS`, about -40 dBFS; a phone's speech is -30 to
//! -15) and its zero crossings are those of speech rather than hiss (at
//! most `VOICE_CROSSINGS` a frame: white noise crosses about 80 times, a
//! vowel a few times to a few dozen).
//! Speech starts with three voiced frames among the last five, and stops
//! after `QUIET_FRAMES` (1 s) without one, so the pauses between words
//! are not silence. "Something heard" is far lower (RMS `SOUND_RMS`,
//! about -55 dBFS, for five frames): breathing, a room, traffic; a line
//! with nothing on it (a pocket dial's dead microphone, a fax line gone
//! quiet) never reaches it.
//!
//! In-band DTMF: Goertzel filters at the eight DTMF frequencies, over the
//! same frame. A frame holds a digit when its strongest row and column
//! tones carry most of the frame's energy, each clearly above the others
//! of its group, and neither more than 10 dB above the other (twist).
//! A digit counts once it holds for two frames (40 ms, ITU-T Q.24's
//! shortest), and again only after a frame without it.

use super::recorder::FRAME_SAMPLES;

/// RMS of a voiced frame, at least (of 32,768: about -40 dBFS).
pub const VOICE_RMS: f64 = 330.0;
/// Zero crossings of a voiced frame, at most.
pub const VOICE_CROSSINGS: u32 = 50;
/// RMS of a frame in which something was heard (about -55 dBFS).
pub const SOUND_RMS: f64 = 60.0;
/// Frames without a voiced one before speech is over (1 s).
pub const QUIET_FRAMES: u32 = 50;
/// Frames with sound, in a row, before the line is taken to carry any.
const SOUND_FRAMES: u32 = 5;

/// A change the detector saw in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The caller began speaking.
    Speaking,
    /// The caller has not spoken for `QUIET_FRAMES`.
    Quiet,
}

/// The caller's voice, frame by frame.
#[derive(Debug, Default)]
pub struct Vad {
    speaking: bool,
    /// The last five frames, voiced or not (bit 0 the newest).
    recent: u8,
    /// Frames since the last voiced one.
    quiet_for: u32,
    /// Frames with sound in a row, up to `SOUND_FRAMES`.
    sound_run: u32,
    sound: bool,
}

impl Vad {
    /// One frame: Some when the caller began or stopped speaking.
    pub fn frame(&mut self, samples: &[i16; FRAME_SAMPLES]) -> Option<Heard> {
        let rms = rms(samples);
        let voiced = rms >= VOICE_RMS && crossings(samples) <= VOICE_CROSSINGS;
        if rms >= SOUND_RMS {
            self.sound_run = (self.sound_run + 1).min(SOUND_FRAMES);
            self.sound |= self.sound_run >= SOUND_FRAMES;
        } else {
            self.sound_run = 0;
        }
        self.recent = ((self.recent << 1) | u8::from(voiced)) & 0b1_1111;
        self.quiet_for = if voiced { 0 } else { self.quiet_for + 1 };
        if !self.speaking && self.recent.count_ones() >= 3 {
            self.speaking = true;
            return Some(Heard::Speaking);
        }
        if self.speaking && self.quiet_for >= QUIET_FRAMES {
            self.speaking = false;
            return Some(Heard::Quiet);
        }
        None
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Whether anything at all has come from the line yet.
    pub fn heard_sound(&self) -> bool {
        self.sound
    }
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

fn crossings(samples: &[i16]) -> u32 {
    samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count() as u32
}

const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];
/// RMS of a frame that may hold a digit, at least.
const DTMF_RMS: f64 = 150.0;
/// Share of the frame's energy the two tones must carry, at least.
const DTMF_SHARE: f64 = 0.7;
/// How much stronger the strongest tone of a group is than the next.
const DTMF_LEAD: f64 = 6.0;
/// Most the two tones' powers may differ (10 dB).
const DTMF_TWIST: f64 = 10.0;

/// In-band DTMF, frame by frame.
#[derive(Debug, Default)]
pub struct ToneKeys {
    /// The digit the last frame held, and for how many frames in a row.
    holding: Option<(char, u32)>,
}

impl ToneKeys {
    /// One frame: Some(digit) when a key press is complete enough to count.
    pub fn frame(&mut self, samples: &[i16; FRAME_SAMPLES]) -> Option<char> {
        let now = digit_in(samples);
        let run = match (now, self.holding) {
            (Some(d), Some((h, n))) if d == h => n + 1,
            (Some(_), _) => 1,
            (None, _) => 0,
        };
        self.holding = now.map(|d| (d, run));
        (run == 2).then_some(now).flatten()
    }
}

/// The DTMF digit one frame holds, if any.
pub fn digit_in(samples: &[i16; FRAME_SAMPLES]) -> Option<char> {
    let n = samples.len() as f64;
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    if (energy / n).sqrt() < DTMF_RMS {
        return None;
    }
    // A sinusoid alone gives a normalised power of 1 (see below).
    let norm = |f: f64| goertzel(samples, f) / (n * energy / 2.0);
    let row = ROWS.map(norm);
    let col = COLS.map(norm);
    let (r, rp, r2) = strongest(&row);
    let (c, cp, c2) = strongest(&col);
    let clear = rp + cp >= DTMF_SHARE
        && rp >= DTMF_LEAD * r2
        && cp >= DTMF_LEAD * c2
        && rp <= DTMF_TWIST * cp
        && cp <= DTMF_TWIST * rp;
    clear.then_some(KEYS[r][c])
}

/// The index of the strongest of four, its power, and the next one's.
fn strongest(p: &[f64; 4]) -> (usize, f64, f64) {
    let mut best = 0;
    for i in 1..4 {
        if p[i] > p[best] {
            best = i;
        }
    }
    let next = (0..4)
        .filter(|&i| i != best)
        .map(|i| p[i])
        .fold(0.0, f64::max);
    (best, p[best], next)
}

/// The power at `freq` over the frame (Goertzel at the exact frequency,
/// not a bin's): (A·N/2)² for a sinusoid of amplitude A at it.
fn goertzel(samples: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// RFC 4733 telephone-events: each key press is one event, sent as
/// several packets with the same RTP timestamp (its start), the last ones
/// (repeated) with the end bit. A press counts once, at its first packet:
/// a new timestamp, or a packet without the end bit after the event had
/// ended (a sender replaying one recorded press keeps its timestamp).
#[derive(Debug, Default)]
pub struct EventKeys {
    /// The timestamp of the event last counted, and whether it has ended.
    last: Option<(u32, bool)>,
    /// Whether the caller's phone sends them at all: then the audio's
    /// tones (which some phones leave in too) are not counted twice.
    pub seen: bool,
}

impl EventKeys {
    /// One telephone-event packet's payload and RTP timestamp.
    pub fn packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let &event = payload.first()?;
        if payload.len() < 4 {
            return None;
        }
        let key = match event {
            0..=9 => char::from(b'0' + event),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + event - 12),
            // Not a key (flash, tones of other kinds).
            _ => return None,
        };
        self.seen = true;
        let end = payload[1] & 0x80 != 0;
        let new = match self.last {
            Some((ts, ended)) if ts == timestamp => ended && !end,
            _ => true,
        };
        if !new {
            if let Some((_, ended)) = &mut self.last {
                *ended |= end;
            }
            return None;
        }
        self.last = Some((timestamp, end));
        Some(key)
    }
}

/// Key presses in order: whether the caller has pressed `key` twice,
/// the second within `within_frames` of the first.
#[derive(Debug, Default)]
pub struct Twice {
    last: Option<(char, u64)>,
}

impl Twice {
    /// A key pressed at `at` (any steady count, e.g. ms): true on the
    /// second of two presses of `key` at most `within` apart.
    pub fn pressed(&mut self, key: char, at: u64, target: char, within: u64) -> bool {
        let twice = key == target
            && self
                .last
                .is_some_and(|(k, t)| k == target && at.saturating_sub(t) <= within);
        self.last = if twice { None } else { Some((key, at)) };
        twice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(signal: impl Fn(usize) -> f64, n: usize) -> Vec<[i16; FRAME_SAMPLES]> {
        (0..n)
            .map(|f| {
                let mut out = [0i16; FRAME_SAMPLES];
                for (i, s) in out.iter_mut().enumerate() {
                    *s = signal(f * FRAME_SAMPLES + i).round() as i16;
                }
                out
            })
            .collect()
    }

    fn sine(freq: f64, amp: f64) -> impl Fn(usize) -> f64 {
        move |i| amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()
    }

    /// A voiced sound: the harmonics of `f0` up to 3.4 kHz, falling off
    /// as 1/n from `amp`.
    fn voice(f0: f64, amp: f64) -> impl Fn(usize) -> f64 {
        move |i| {
            (1..)
                .take_while(|h| f64::from(*h) * f0 <= 3400.0)
                .map(|h: u32| sine(f0 * f64::from(h), amp / f64::from(h))(i))
                .sum()
        }
    }

    fn dtmf(key: char, amp: f64) -> impl Fn(usize) -> f64 {
        let (r, c) = (0..4)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .find(|&(r, c)| KEYS[r][c] == key)
            .unwrap();
        let (a, b) = (sine(ROWS[r], amp), sine(COLS[c], amp));
        move |i| a(i) + b(i)
    }

    /// A deterministic noise (xorshift), uniform in [-amp, amp].
    fn noise(amp: f64, seed: u64) -> impl Fn(usize) -> f64 {
        move |i| {
            let mut x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 20001) as f64 / 10000.0 - 1.0) * amp
        }
    }

    /// Every key of the pad, at every level a phone sends and at a twist
    /// of 6 dB either way, is found in every frame it fills.
    #[test]
    fn every_key_is_found_at_the_levels_phones_send() {
        for row in KEYS {
            for key in row {
                for amp in [300.0, 1000.0, 4000.0, 12000.0] {
                    for f in frames_of(dtmf(key, amp), 6) {
                        assert_eq!(digit_in(&f), Some(key), "{key} at {amp}");
                    }
                }
                // Twist: the column tone 6 dB under the row's, and over.
                let (r, c) = (0..16)
                    .map(|i| (i / 4, i % 4))
                    .find(|&(r, c)| KEYS[r][c] == key)
                    .unwrap();
                for (ra, ca) in [(2000.0, 1000.0), (1000.0, 2000.0)] {
                    let (a, b) = (sine(ROWS[r], ra), sine(COLS[c], ca));
                    for f in frames_of(|i| a(i) + b(i), 4) {
                        assert_eq!(digit_in(&f), Some(key), "{key} with twist");
                    }
                }
            }
        }
    }

    /// Silence, one tone alone, noise, speech-like sweeps and a tone a
    /// little off the pad are not keys.
    #[test]
    fn what_is_not_a_key_is_not_found() {
        let quiet = frames_of(|_| 0.0, 3);
        let one_tone = frames_of(sine(852.0, 3000.0), 3);
        let hiss = frames_of(noise(3000.0, 7), 20);
        let off_pad = frames_of(|i| sine(1000.0, 2000.0)(i) + sine(500.0, 2000.0)(i), 3);
        // A vowel-like sound: a 120 Hz voice's harmonics up to 3.4 kHz.
        let vowel = frames_of(voice(120.0, 4000.0), 20);
        for (name, frames) in [
            ("silence", quiet),
            ("one tone", one_tone),
            ("hiss", hiss),
            ("off the pad", off_pad),
            ("a vowel", vowel),
        ] {
            for f in &frames {
                assert_eq!(digit_in(f), None, "{name}");
            }
        }
    }

    /// A press counts once when it has held 40 ms, however long it lasts;
    /// the same key again counts after a gap, and a single frame's blip
    /// (speech passing through a digit's tones) does not count.
    #[test]
    fn a_press_counts_once_and_a_blip_not_at_all() {
        let five = frames_of(dtmf('5', 2000.0), 1)[0];
        let gap = [0i16; FRAME_SAMPLES];
        let mut keys = ToneKeys::default();
        let seq = [five, five, five, five, gap, gap, five, five, gap, five, gap];
        let found: Vec<Option<char>> = seq.iter().map(|f| keys.frame(f)).collect();
        assert_eq!(
            found,
            [
                None,
                Some('5'),
                None,
                None,
                None,
                None,
                None,
                Some('5'),
                None,
                None,
                None
            ]
        );
    }

    /// Telephone-events: one press, however many packets (and repeated
    /// end packets) carry it, by its timestamp; keys beyond the pad are
    /// not presses; a short payload is ignored.
    #[test]
    fn telephone_events_count_each_press_once() {
        let mut ev = EventKeys::default();
        let pkt = |event: u8, end: bool, dur: u16| {
            let mut p = vec![event, if end { 0x80 } else { 0 } | 10];
            p.extend_from_slice(&dur.to_be_bytes());
            p
        };
        let mut got = Vec::new();
        for (ts, event, end) in [
            (1000, 5, false),
            (1000, 5, false),
            (1000, 5, true),
            (1000, 5, true),
            (1000, 5, true),
            (2600, 5, false),
            (2600, 5, true),
            (4000, 11, true),
            (5000, 16, false),
            // One recorded press played twice: the same timestamp, a
            // start after an end.
            (7000, 5, false),
            (7000, 5, true),
            (7000, 5, true),
            (7000, 5, false),
            (7000, 5, true),
        ] {
            got.extend(ev.packet(ts, &pkt(event, end, 800)));
        }
        assert_eq!(got, ['5', '5', '#', '5', '5']);
        assert!(ev.seen);
        assert_eq!(ev.packet(9000, &[5, 0]), None);
        for e in 0..=15u8 {
            let mut fresh = EventKeys::default();
            let want = "0123456789*#ABCD".chars().nth(e as usize);
            assert_eq!(fresh.packet(1, &pkt(e, false, 160)), want);
        }
    }

    /// Speech starts within 60 ms of a voice and ends a second after it;
    /// hiss, however loud, is not a voice; and a line carrying nothing
    /// never counts as heard, while a quiet room does.
    #[test]
    fn the_voice_detector_tells_speech_from_silence_and_hiss() {
        let mut vad = Vad::default();
        let silence = frames_of(|_| 0.0, 100);
        for f in &silence {
            assert_eq!(vad.frame(f), None);
        }
        assert!(!vad.heard_sound(), "digital silence is not sound");
        // A vowel at a speaking level.
        let vowel = frames_of(voice(140.0, 3000.0), 10);
        let said: Vec<Option<Heard>> = vowel.iter().map(|f| vad.frame(f)).collect();
        assert_eq!(said[2], Some(Heard::Speaking), "{said:?}");
        assert!(said.iter().filter(|s| s.is_some()).count() == 1);
        assert!(vad.heard_sound());
        // A pause between words (half a second) is not silence...
        for f in &silence[..25] {
            assert_eq!(vad.frame(f), None);
        }
        // ...a second without a voiced frame is.
        let after: Vec<Option<Heard>> = silence[..25].iter().map(|f| vad.frame(f)).collect();
        assert_eq!(after.last(), Some(&Some(Heard::Quiet)), "{after:?}");
        assert!(!vad.speaking());

        let mut hissing = Vad::default();
        for f in &frames_of(noise(8000.0, 3), 200) {
            assert_eq!(hissing.frame(f), None, "hiss taken for a voice");
        }
        assert!(hissing.heard_sound());

        let mut room = Vad::default();
        for f in &frames_of(noise(150.0, 11), 10) {
            assert_eq!(room.frame(f), None);
        }
        assert!(room.heard_sound(), "a quiet room is something heard");
    }

    /// 5 twice within the window is the sign; too far apart, another key
    /// between, or 5 once is not; after a sign, it takes two more.
    #[test]
    fn five_twice_is_the_sign() {
        let mut t = Twice::default();
        let presses = |t: &mut Twice, seq: &[(char, u64)]| -> Vec<bool> {
            seq.iter()
                .map(|&(k, at)| t.pressed(k, at, '5', 3000))
                .collect()
        };
        assert_eq!(
            presses(&mut t, &[('5', 0), ('5', 500)]),
            [false, true],
            "55"
        );
        assert_eq!(presses(&mut t, &[('5', 600)]), [false], "one more 5");
        assert_eq!(
            presses(&mut t, &[('5', 10_000), ('5', 14_000)]),
            [false, false],
            "too far apart"
        );
        assert_eq!(
            presses(&mut t, &[('5', 20_000), ('1', 20_200), ('5', 20_400)]),
            [false, false, false],
            "another key between"
        );
        assert_eq!(presses(&mut t, &[('5', 20_600)]), [true]);
    }
}
