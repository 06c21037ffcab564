//! Audio checks: a Goertzel filter to find a tone, and a G.711 A-law WAV
//! writer for SIPp's rtp_stream.

use siaga::media::g711::Law;
use std::path::Path;

/// Power of `freq` in `samples` relative to their total power (0..1).
pub fn tone_ratio(samples: &[i16], freq: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let n = samples.len() as f64;
    let k = (0.5 + n * freq / 8000.0).floor();
    let w = 2.0 * std::f64::consts::PI * k / n;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        return 0.0;
    }
    // A pure tone puts energy * n / 2 into its bin.
    (power / (energy * n / 2.0)).min(1.0)
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Reads a stereo recording into (left, right).
pub fn read_stereo(path: &Path) -> (Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path).expect("recording is a readable WAV");
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left = s.iter().step_by(2).copied().collect();
    let right = s.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

/// One 20 ms RTP packet (PCMA, payload type 8) of a sine at `freq`, its
/// phase taken from the timestamp `ts` (samples since the start).
pub fn alaw_tone_packet(seq: u16, ts: u32, ssrc: u32, freq: f64) -> Vec<u8> {
    let mut pkt = vec![0x80, 8];
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(&ts.to_be_bytes());
    pkt.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..160 {
        let t = f64::from(ts.wrapping_add(i)) / 8000.0;
        let v = (2.0 * std::f64::consts::PI * freq * t).sin() * 12000.0;
        pkt.push(Law::Alaw.encode(v as i16));
    }
    pkt
}

/// A mono 8 kHz A-law WAV (format tag 6) holding a sine at `freq`.
pub fn write_alaw_tone(path: &Path, freq: f64, seconds: f64) {
    let n = (8000.0 * seconds) as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| ((2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin() * 12000.0) as i16)
        .collect();
    write_alaw(path, &samples);
}

/// Key presses as in-band DTMF: each key's two tones for `tone_ms`, then
/// `gap_ms` of quiet, after `lead_ms` of quiet; 8 kHz samples.
pub fn dtmf_samples(keys: &str, lead_ms: u32, tone_ms: u32, gap_ms: u32) -> Vec<i16> {
    let freqs = |k: char| -> (f64, f64) {
        let rows = [697.0, 770.0, 852.0, 941.0];
        let cols = [1209.0, 1336.0, 1477.0, 1633.0];
        let pad = ["123A", "456B", "789C", "*0#D"];
        let r = pad.iter().position(|row| row.contains(k)).unwrap();
        let c = pad[r].find(k).unwrap();
        (rows[r], cols[c])
    };
    let mut out = vec![0i16; 8 * lead_ms as usize];
    for k in keys.chars() {
        let (a, b) = freqs(k);
        for i in 0..8 * tone_ms as usize {
            let t = i as f64 / 8000.0;
            let v = 5000.0
                * ((2.0 * std::f64::consts::PI * a * t).sin()
                    + (2.0 * std::f64::consts::PI * b * t).sin());
            out.push(v as i16);
        }
        out.extend(std::iter::repeat_n(0, 8 * gap_ms as usize));
    }
    out
}

/// A mono 8 kHz A-law WAV (format tag 6) of `samples`, as SIPp's
/// `rtp_stream` plays it.
pub fn write_alaw(path: &Path, samples: &[i16]) {
    let n = samples.len();
    let data: Vec<u8> = samples.iter().map(|&v| Law::Alaw.encode(v)).collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(4 + 26 + 12 + 8 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&18u32.to_le_bytes());
    wav.extend_from_slice(&6u16.to_le_bytes()); // WAVE_FORMAT_ALAW
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8u16.to_le_bytes());
    wav.extend_from_slice(&0u16.to_le_bytes());
    wav.extend_from_slice(b"fact");
    wav.extend_from_slice(&4u32.to_le_bytes());
    wav.extend_from_slice(&(n as u32).to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).unwrap();
}

/// Loads a committed prompt as the caller hears it (through A-law).
pub fn prompt_through_alaw(name: &str) -> Vec<i16> {
    let path = super::repo().join("prompts").join(format!("{name}.wav"));
    let mut r = hound::WavReader::open(path).unwrap();
    r.samples::<i16>()
        .map(|s| Law::Alaw.decode(Law::Alaw.encode(s.unwrap())))
        .collect()
}

/// Where `needle` starts in `hay` (exactly), searching the first `within`
/// samples.
pub fn find_exact(hay: &[i16], needle: &[i16], within: usize) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..within.min(hay.len() - needle.len() + 1))
        .find(|&off| hay[off..off + needle.len()] == *needle)
}
