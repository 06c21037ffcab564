//! The records' journal: where call records wait, durable, until the
//! database has them.
//!
//! Every batch the writer takes is appended here (one JSON line a record,
//! numbered) and made durable (`fdatasync`) before it goes to the
//! database, whether the database is there or not. The database stores,
//! in the same transaction as the records, the number of the last record
//! of this journal it holds (`journal_state`), so a restart replays, in
//! order, exactly the records it lacks: those taken while the database was
//! away, then the process killed or stopped. Once the database holds all
//! that is here, the next append starts the file again.
//!
//! The file starts with a header line that names the journal (a random
//! id, kept across truncations, so two nodes' journals never mix in one
//! database) and the number the records go on from. A line cut short by
//! a crash ends the reading there: what it held was never acknowledged as
//! durable.

use super::writer::StoreCmd;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "records.journal";

/// One line of the journal: a header (`journal` set) or a record.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cmd: Option<StoreCmd>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    id: String,
    /// The number of the last record written (0: none yet, ever).
    last: u64,
    /// Whether the file holds records (not only its header).
    holds_records: bool,
}

/// What a previous process left in the journal, to replay.
pub type Pending = Vec<(u64, StoreCmd)>;

impl Journal {
    /// Opens the journal in `dir` (made if missing), and returns with it
    /// the records found there, in order.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Pending)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let (mut id, mut last, mut pending) = (None, 0u64, Vec::new());
        let mut valid_len = 0u64;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut text = String::new();
            loop {
                text.clear();
                let n = reader.read_line(&mut text)?;
                if n == 0 || !text.ends_with('\n') {
                    break;
                }
                let Ok(line) = serde_json::from_str::<Line>(&text) else {
                    tracing::error!(path = %path.display(), "a journal line cannot be read; what follows it is not replayed");
                    break;
                };
                valid_len += n as u64;
                last = last.max(line.seq);
                match (line.journal, line.cmd) {
                    (Some(j), _) if id.is_none() => id = Some(j),
                    (_, Some(cmd)) => pending.push((line.seq, cmd)),
                    _ => {}
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        // A torn tail (a crash mid-line) is cut, so appends start clean.
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
        }
        let mut journal = Journal {
            path,
            file,
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            last,
            holds_records: !pending.is_empty(),
        };
        if valid_len == 0 {
            journal.restart()?;
        }
        Ok((journal, pending))
    }

    /// This journal's name in the database's `journal_state`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `cmds` and makes them durable; returns the number of the
    /// first. `applied` is the last record the database is known to hold:
    /// when that is all this file holds, the file starts again first.
    pub fn append(&mut self, cmds: &[StoreCmd], applied: u64) -> std::io::Result<u64> {
        if self.holds_records && applied >= self.last {
            self.restart()?;
        }
        let first = self.last + 1;
        let mut out = Vec::with_capacity(cmds.len() * 256);
        for (i, cmd) in cmds.iter().enumerate() {
            let line = Line {
                seq: first + i as u64,
                journal: None,
                cmd: Some(cmd.clone()),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        self.file.write_all(&out)?;
        self.file.sync_data()?;
        self.last += cmds.len() as u64;
        self.holds_records |= !cmds.is_empty();
        Ok(first)
    }

    /// Empties the file down to a fresh header (the id, and the number
    /// records go on from), durably.
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        let header = Line {
            seq: self.last,
            journal: Some(self.id.clone()),
            cmd: None,
        };
        let mut out = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        out.push(b'\n');
        self.file.write_all(&out)?;
        self.file.sync_data()?;
        self.holds_records = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CallId;

    fn event(n: i64) -> StoreCmd {
        StoreCmd::Event {
            id: CallId(format!("c{n}")),
            at: n,
            kind: "k".into(),
            detail: None,
        }
    }

    fn at(cmd: &StoreCmd) -> i64 {
        match cmd {
            StoreCmd::Event { at, .. } => *at,
            _ => panic!("not an event"),
        }
    }

    /// Records survive a reopen in order with their numbers; once the
    /// database holds them all the file starts again, and numbering goes
    /// on (never back, or a replay would skip records); a torn last line
    /// is dropped, not the journal.
    #[test]
    fn records_wait_in_order_and_numbering_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        assert!(pending.is_empty());
        let id = j.id().to_string();
        assert_eq!(j.append(&[event(1), event(2)], 0).unwrap(), 1);
        assert_eq!(j.append(&[event(3)], 0).unwrap(), 3);
        drop(j);

        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.id(), id);
        let got: Vec<(u64, i64)> = pending.iter().map(|(s, c)| (*s, at(c))).collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (3, 3)]);
        // The database has all three: the file starts again.
        assert_eq!(j.append(&[event(4)], 3).unwrap(), 4);
        drop(j);
        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        let got: Vec<(u64, i64)> = pending.iter().map(|(s, c)| (*s, at(c))).collect();
        assert_eq!(got, vec![(4, 4)]);
        // Started again and emptied of records: the numbers go on.
        assert_eq!(j.append(&[event(5)], 5).unwrap(), 5);
        assert_eq!(j.append(&[], 5).unwrap(), 6);
        assert_eq!(j.append(&[event(6)], 5).unwrap(), 6);
        drop(j);

        // A crash mid-line: that line is gone, the rest stays, and the
        // next append starts on a clean line.
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":7,\"cmd\":{\"Ev").unwrap();
        drop(f);
        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        let got: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![6], "5 went with the start before 6");
        assert_eq!(j.append(&[event(7)], 0).unwrap(), 7);
        drop(j);
        let (j, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(j.id(), id);
    }
}
