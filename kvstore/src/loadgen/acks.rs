//! The acknowledgement file of `dbos-kv bench --acks FILE`: what a later
//! `dbos-kv bench --verify --acks FILE` must find on the server (after it
//! was killed and restarted, say).
//!
//! ```text
//! # dbos-kv bench acks: value-size 100
//! 17 1
//! 4 2
//! ...
//! written 4 3
//! written 17 1
//! end
//! ```
//!
//! - The header names the value size the bench wrote.
//! - `RECORD VERSION` (the format `dbos-kv workload --acks` writes and
//!   `dbos-kv verify-acks` reads): the server acknowledged a write of that
//!   version, and every write of the record that overlapped it was over
//!   before it began or began after it was acknowledged
//!   ([`Acked`]'s sound bound). The server must hold that version or a
//!   newer one. (A write that overlapped another of the same record is
//!   not listed: the two may land in either order.)
//! - Once the bench ends (normally, or because the server went away),
//!   `written RECORD VERSION` for every record it wrote: the newest
//!   version it sent, acknowledged or not (writes in flight when the
//!   server died included), then `end`. With these, the checker also
//!   knows how new a version may be. A file without `end` (the bench was
//!   killed itself) still gives the lower bounds.
//!
//! Versions count from 1 in each bench process. A `--phase run` bench
//! (records loaded by an earlier process, versions unknown) writes no
//! `written` line for loaded records: their upper bound is unknown. Its
//! lower bounds are weaker too: an earlier bench may have written the
//! same record with the same or a higher version number, so a lost write
//! can go unnoticed. The check is exact for a bench that loads (`--phase
//! both`, the default, or `load`): every version on the server then comes
//! from it.
//!
//! The clients buffer their lines and append them every 8 KiB or 200 ms
//! (a line is never split between appends), and the bench appends the
//! rest and syncs the file before it exits, whatever the reason; the
//! server's death is what the file must survive, not the bench's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::string::String;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::{format, io};

use crate::workload::Acked;

/// The first line's prefix; the value size follows.
const HEADER: &str = "# dbos-kv bench acks: value-size ";

/// An acknowledgement file being written, shared by the clients.
pub struct AckFile {
    path: PathBuf,
    file: Mutex<File>,
    /// The first write that failed.
    failed: Mutex<Option<String>>,
}

impl AckFile {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path, value_size: usize) -> Result<AckFile, String> {
        let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(format!("{HEADER}{value_size}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AckFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            failed: Mutex::new(None),
        })
    }

    fn append(&self, bytes: &[u8]) {
        let r = match self.file.lock() {
            Ok(mut f) => f.write_all(bytes),
            Err(_) => Err(io::Error::other("a client panicked while appending")),
        };
        if let Err(e) = r {
            log::error!("{}: {e}", self.path.display());
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert_with(|| format!("{}: {e}", self.path.display()));
            }
        }
    }

    /// Appends the `written` lines (every record `acked` numbers whose
    /// newest version is known), then `end`, and syncs the file; the
    /// first error of any append, if one failed.
    pub fn finish(&self, acked: &Acked) -> Result<(), String> {
        let mut text = String::new();
        for record in 0..acked.claimed() {
            let v = acked.issued(record);
            if v != 0 && v != u64::MAX {
                text.push_str(&format!("written {record} {v}\n"));
            }
        }
        text.push_str("end\n");
        self.append(text.as_bytes());
        if let Ok(f) = self.file.lock() {
            if let Err(e) = f.sync_all() {
                return Err(format!("{}: sync: {e}", self.path.display()));
            }
        }
        match self.failed.lock() {
            Ok(f) => f.clone().map_or(Ok(()), Err),
            Err(_) => Err(format!("{}: a client panicked", self.path.display())),
        }
    }
}

/// One client's buffer of acknowledgement lines.
pub struct AckBuffer<'a> {
    file: &'a AckFile,
    buf: Vec<u8>,
    since: Instant,
}

/// Appends a client's buffer once it holds this much...
const FLUSH_BYTES: usize = 8 << 10;
/// ... or is this old.
const FLUSH_AGE: Duration = Duration::from_millis(200);

impl<'a> AckBuffer<'a> {
    pub fn new(file: &'a AckFile) -> Self {
        AckBuffer {
            file,
            buf: Vec::with_capacity(FLUSH_BYTES + 64),
            since: Instant::now(),
        }
    }

    /// Notes that version `version` of `record` was acknowledged.
    pub fn ack(&mut self, record: u64, version: u64) {
        // Writing into a Vec cannot fail.
        let _ = writeln!(self.buf, "{record} {version}");
        if self.buf.len() >= FLUSH_BYTES || self.since.elapsed() >= FLUSH_AGE {
            self.flush();
        }
    }

    /// Appends what the buffer holds to the file.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.file.append(&self.buf);
            self.buf.clear();
        }
        self.since = Instant::now();
    }
}

impl Drop for AckBuffer<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What an acknowledgement file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckSummary {
    /// The value size from the header, if there is one.
    pub value_size: Option<usize>,
    /// Per record, the newest acknowledged version.
    pub acked: BTreeMap<u64, u64>,
    /// Per record, the newest version written (from the `written` lines).
    pub written: BTreeMap<u64, u64>,
    /// The file ends with `end`: the `written` lines are complete.
    pub complete: bool,
    /// Lines that meant nothing (a last line cut short, ...).
    pub ignored: u64,
}

impl AckSummary {
    /// Parses the text of an acknowledgement file.
    pub fn parse(text: &str) -> AckSummary {
        let mut s = AckSummary::default();
        let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
        for line in text.lines() {
            if let Some(size) = line.strip_prefix(HEADER) {
                match size.trim().parse() {
                    Ok(n) => s.value_size = Some(n),
                    Err(_) => s.ignored += 1,
                }
                continue;
            }
            let mut w = line.split(' ');
            let first = w.next();
            let (map, rest) = match first {
                Some("written") => (&mut s.written, (number(w.next()), number(w.next()))),
                Some("end") if w.next().is_none() => {
                    s.complete = true;
                    continue;
                }
                _ => (&mut s.acked, (number(first), number(w.next()))),
            };
            match (rest, w.next()) {
                ((Some(r), Some(v)), None) => {
                    let e = map.entry(r).or_insert(0);
                    *e = v.max(*e);
                }
                _ => s.ignored += 1,
            }
        }
        s
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<AckSummary, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AckSummary::parse(&text))
    }
}

impl core::fmt::Display for AckSummary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} acknowledged records, {} written{}",
            self.acked.len(),
            self.written.len(),
            if self.complete {
                ""
            } else {
                " (no end line: the bench that wrote it did not finish; versions newer than \
                 acknowledged are not bounded)"
            }
        )?;
        if self.ignored > 0 {
            write!(f, ", {} lines ignored", self.ignored)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        let acked = Acked::with_capacity(3, 4);
        let file = AckFile::create(&path, 100).unwrap();
        {
            let mut b = AckBuffer::new(&file);
            let w = acked.begin_write(0);
            acked.end_write(w, true);
            b.ack(0, w.version);
            let w = acked.begin_write(0);
            acked.end_write(w, true);
            b.ack(0, w.version);
            let w = acked.begin_write(2);
            acked.end_write(w, true);
            b.ack(2, w.version);
            // In flight when the server died.
            let w = acked.begin_write(2);
            acked.end_write(w, false);
        }
        file.finish(&acked).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# dbos-kv bench acks: value-size 100\n0 1\n0 2\n2 1\nwritten 0 2\nwritten 2 2\nend\n"
        );
        let s = AckSummary::read(&path).unwrap();
        assert_eq!(s.value_size, Some(100));
        assert_eq!(s.acked.into_iter().collect::<Vec<_>>(), [(0, 2), (2, 1)]);
        assert_eq!(s.written.into_iter().collect::<Vec<_>>(), [(0, 2), (2, 2)]);
        assert!(s.complete);
        assert_eq!(s.ignored, 0);
    }

    #[test]
    fn a_cut_file_gives_lower_bounds() {
        let s = AckSummary::parse("5 3\n5 2\n7 1\nwritten 5 4\n9 1 2\nx\n8");
        assert_eq!(s.value_size, None);
        assert_eq!(s.acked.into_iter().collect::<Vec<_>>(), [(5, 3), (7, 1)]);
        assert_eq!(s.written.into_iter().collect::<Vec<_>>(), [(5, 4)]);
        assert!(!s.complete);
        assert_eq!(s.ignored, 3);
    }
}
