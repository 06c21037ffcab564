//! Recordings a stopped process left open (killed, or its machine went
//! off): the header says what was on disk when the recorder last rewrote
//! it (once a second), while the file may hold more (written out since)
//! or less (a machine that went off before the data reached the disk).
//! Finishing sets the header to the whole stereo frames on disk and sums
//! the file, so the record's checksum is that of a file that plays to its
//! last frame.
//!
//! It never truncates: a node cut off from the database may still be alive
//! and writing the file on shared storage; its own close then rewrites the
//! header again and its journal brings the real checksum.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What the recorder writes: 16-bit stereo, so a frame is 4 bytes.
const BLOCK_ALIGN: u64 = 4;
const SAMPLE_RATE: u32 = 8000;
/// The chunks before the samples fit in this much of the file.
const HEAD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Stereo frames (one sample per channel) the header now says.
    pub frames: u64,
    /// Whether the header had to be rewritten.
    pub rewrote: bool,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// The file is not there for this node (another node's disk, or gone).
    #[error("recording {path} is not reachable from this node: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording {path} cannot be read or repaired: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording {path} is not a WAV this recorder writes: {why}")]
    NotOurs { path: PathBuf, why: &'static str },
}

/// Where a WAV's sizes are kept and where its samples start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Offset of the `data` chunk's first sample.
    data_start: u64,
    /// The size the `data` chunk's header claims.
    data_claimed: u32,
    riff_claimed: u32,
}

/// Reads the chunk layout of the start of a WAV file (pure: bounds
/// checked, linear in `head`).
fn layout(head: &[u8]) -> Result<Layout, &'static str> {
    let u32_at = |at: usize| -> Option<u32> {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.get(0..4) != Some(b"RIFF") || head.get(8..12) != Some(b"WAVE") {
        return Err("no RIFF/WAVE header");
    }
    let riff_claimed = u32_at(4).ok_or("header cut short")?;
    let mut at = 12usize;
    let mut format_ok = false;
    loop {
        let id = head.get(at..at + 4).ok_or("no data chunk in the header")?;
        let size = u32_at(at + 4).ok_or("no data chunk in the header")?;
        let body = at + 8;
        match id {
            b"fmt " => {
                let tag = head.get(body..body + 2).ok_or("fmt chunk cut short")?;
                let tag = u16::from_le_bytes([tag[0], tag[1]]);
                let field = |o: usize| head.get(body + o..body + o + 2);
                let channels = field(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let rate = u32_at(body + 4);
                let align = field(12).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let bits = field(14).map(|b| u16::from_le_bytes([b[0], b[1]]));
                if !(tag == 1 || tag == 0xFFFE)
                    || channels != Some(2)
                    || rate != Some(SAMPLE_RATE)
                    || align != Some(BLOCK_ALIGN as u16)
                    || bits != Some(16)
                {
                    return Err("not 16-bit stereo PCM at 8 kHz");
                }
                format_ok = true;
            }
            b"data" if format_ok => {
                return Ok(Layout {
                    data_start: body as u64,
                    data_claimed: size,
                    riff_claimed,
                });
            }
            b"data" => return Err("data before fmt"),
            _ => {}
        }
        // Chunks are padded to an even length.
        let next = (size as usize)
            .checked_add(size as usize & 1)
            .and_then(|s| body.checked_add(s))
            .ok_or("chunk size out of range")?;
        if next >= head.len() {
            return Err("no data chunk in the header");
        }
        at = next;
    }
}

/// The sizes the header should carry for a file of `len` bytes laid out
/// as `l`: whole frames only, within what a WAV header can say.
fn sizes(l: Layout, len: u64) -> (u32, u32) {
    let on_disk = len.saturating_sub(l.data_start);
    let most = u64::from(u32::MAX) - l.data_start;
    let data = on_disk.min(most);
    let data = data - data % BLOCK_ALIGN;
    let riff = l.data_start - 8 + data;
    (data as u32, riff as u32)
}

/// Finishes the recording at `path` (blocking: call it off the runtime).
pub fn finish(path: &Path) -> Result<Finished, FinishError> {
    let io = |source: std::io::Error| FinishError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FinishError::Unreachable {
                path: path.to_path_buf(),
                source: e,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let mut head = vec![0u8; HEAD.min(len as usize)];
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let l = layout(&head).map_err(|why| FinishError::NotOurs {
        path: path.to_path_buf(),
        why,
    })?;
    let (data, riff) = sizes(l, len);
    let rewrote = (data, riff) != (l.data_claimed, l.riff_claimed);
    if rewrote {
        file.write_all_at(&riff.to_le_bytes(), 4).map_err(io)?;
        file.write_all_at(&data.to_le_bytes(), l.data_start - 4)
            .map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    drop(file);
    let sha256 = sha256_of(path).map_err(io)?;
    Ok(Finished {
        frames: u64::from(data) / BLOCK_ALIGN,
        rewrote,
        sha256,
    })
}

/// SHA-256 of a file, hex (blocking).
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> hound::WavSpec {
        hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        }
    }

    /// A WAV as the recorder leaves it at a rewrite of its header:
    /// `frames` frames, the header current.
    fn recorded(path: &Path, frames: u32) {
        let mut w = hound::WavWriter::create(path, spec()).unwrap();
        for i in 0..frames {
            w.write_sample(i as i16).unwrap();
            w.write_sample(-(i as i16)).unwrap();
        }
        w.flush().unwrap();
        // Dropped without finalize, as a kill leaves it: the header says
        // what the last flush wrote.
        std::mem::forget(w);
    }

    fn frames_read(path: &Path) -> Vec<i16> {
        hound::WavReader::open(path)
            .unwrap()
            .samples::<i16>()
            .map(|s| s.unwrap())
            .collect()
    }

    #[test]
    fn frames_written_after_the_last_header_join_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.wav");
        recorded(&path, 800);
        // Written out after the header's last rewrite, then the kill: 80
        // frames and half of one more.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        for i in 800..880i16 {
            f.write_all(&i.to_le_bytes()).unwrap();
            f.write_all(&(-i).to_le_bytes()).unwrap();
        }
        f.write_all(&[1, 2]).unwrap();
        drop(f);
        assert_eq!(frames_read(&path).len(), 2 * 800, "the stale header");

        let done = finish(&path).unwrap();
        assert_eq!((done.frames, done.rewrote), (880, true));
        let s = frames_read(&path);
        assert_eq!(s.len(), 2 * 880);
        assert_eq!((s[2 * 879], s[2 * 879 + 1]), (879, -879));
        assert_eq!(done.sha256, sha256_of(&path).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            44 + 880 * 4 + 2,
            "nothing cut"
        );
        // Finishing twice changes nothing.
        let again = finish(&path).unwrap();
        assert_eq!((again.frames, again.rewrote), (880, false));
        assert_eq!(again.sha256, done.sha256);
    }

    #[test]
    fn a_header_claiming_more_than_the_disk_kept_is_brought_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("off.wav");
        recorded(&path, 800);
        // The machine went off: the header reached the disk, the last
        // 300 frames and a half did not.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(44 + 500 * 4 + 3).unwrap();
        drop(f);
        let done = finish(&path).unwrap();
        assert_eq!((done.frames, done.rewrote), (500, true));
        assert_eq!(frames_read(&path).len(), 2 * 500);
    }

    #[test]
    fn a_current_header_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whole.wav");
        let mut w = hound::WavWriter::create(&path, spec()).unwrap();
        for _ in 0..320 {
            w.write_sample(7i16).unwrap();
        }
        w.finalize().unwrap();
        let before = std::fs::read(&path).unwrap();
        let done = finish(&path).unwrap();
        assert_eq!((done.frames, done.rewrote), (160, false));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // An empty recording (the caller hung up at once) too.
        let empty = dir.path().join("empty.wav");
        recorded(&empty, 0);
        let done = finish(&empty).unwrap();
        assert_eq!((done.frames, done.rewrote), (0, false));
    }

    #[test]
    fn a_file_that_is_not_there_or_not_ours_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("elsewhere/x.wav");
        assert!(matches!(
            finish(&gone),
            Err(FinishError::Unreachable { .. })
        ));
        for (bytes, why) in [
            (&b""[..], "no RIFF/WAVE header"),
            (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", "data before fmt"),
            (
                b"RIFF\0\0\0\0WAVELIST\xff\xff\xff\xff",
                "no data chunk in the header",
            ),
        ] {
            let path = dir.path().join("bad.wav");
            std::fs::write(&path, bytes).unwrap();
            match finish(&path) {
                Err(FinishError::NotOurs { why: w, .. }) => assert_eq!(w, why),
                other => panic!("{other:?} for {bytes:?}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
        }
        // Mono or another rate: never rewritten as ours.
        let path = dir.path().join("mono.wav");
        let mono = hound::WavSpec {
            channels: 1,
            ..spec()
        };
        let mut w = hound::WavWriter::create(&path, mono).unwrap();
        w.write_sample(1i16).unwrap();
        w.finalize().unwrap();
        assert!(matches!(finish(&path), Err(FinishError::NotOurs { .. })));
    }

    /// Every prefix of a header, and every byte of it changed, reads
    /// without a panic: the layout reader is bounds-checked throughout.
    #[test]
    fn any_damage_to_the_header_is_refused_or_read_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.wav");
        recorded(&path, 4);
        let good = std::fs::read(&path).unwrap();
        assert!(layout(&good).is_ok());
        for n in 0..good.len() {
            let _ = layout(&good[..n]);
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[n] = v;
                if let Ok(l) = layout(&bad) {
                    let _ = sizes(l, bad.len() as u64);
                }
            }
        }
    }
}
