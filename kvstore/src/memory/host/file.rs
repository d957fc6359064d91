//! Owns the snapshot file on disk: `DIR/dump.dbkv`, written as
//! `DIR/dump.dbkv.tmp`, synced, renamed over it and the directory synced,
//! so that a crash leaves either the previous complete file or the new one
//! (and perhaps a temporary file, which [`remove_leftover`] discards at
//! the next open); and loading it back.

use super::snapshot::{AnyHeap, AnySnap};
use crate::memory::dump::{dump, DumpError, View};
use crate::memory::format::{decode, DecodeError, DecodeSummary, Encoder, Record, Sink, Source};
use std::format;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::string::String;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file's name in the engine's directory.
pub const DUMP: &str = "dump.dbkv";
/// The name it is written under before the rename.
pub const DUMP_TMP: &str = "dump.dbkv.tmp";

/// An `io::Write` as a format sink.
struct IoSink<W: Write>(W);

impl<W: Write> Sink for IoSink<W> {
    type Error = io::Error;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        self.0.write_all(bytes)
    }
}

/// An `io::Read` as a format source.
struct IoSource<R: Read>(R);

impl<R: Read> Source for IoSource<R> {
    type Error = io::Error;
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

/// A snapshot's view through its heap.
struct SnapView<'a> {
    heap: &'a AnyHeap,
    snap: &'a AnySnap,
}

impl View for SnapView<'_> {
    type Error = String;
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), String> {
        self.heap.read(self.snap, offset, buf)
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a save wrote.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub records: u64,
    pub file_bytes: u64,
}

/// Writes the snapshot `snap` of `heap` to `dir/dump.dbkv` through the
/// temporary file. On error the temporary file is removed (as far as
/// possible) and the previous `dump.dbkv` is untouched.
pub fn write_dump(dir: &Path, heap: &AnyHeap, snap: &AnySnap) -> Result<Written, String> {
    let tmp = dir.join(DUMP_TMP);
    let result = write_tmp(&tmp, heap, snap).and_then(|w| {
        let dst = dir.join(DUMP);
        fs::rename(&tmp, &dst)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dst.display()))?;
        sync_dir(dir)?;
        Ok(w)
    });
    if result.is_err() {
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {} after a failed save: {e}", tmp.display()),
        }
    }
    result
}

fn write_tmp(tmp: &Path, heap: &AnyHeap, snap: &AnySnap) -> Result<Written, String> {
    let at = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", tmp.display());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| at("creating", &e))?;
    let sink = IoSink(BufWriter::with_capacity(1 << 20, file));
    let mut enc = Encoder::new(sink, now_unix_ms()).map_err(|e| at("writing", &e))?;
    let mut view = SnapView { heap, snap };
    dump(&mut view, &mut enc).map_err(|e| match e {
        DumpError::View(e) => format!("reading the snapshot: {e}"),
        DumpError::Sink(e) => at("writing", &e),
        DumpError::Layout(e) => format!("the snapshot's heap is inconsistent: {e}"),
    })?;
    let (sink, summary) = enc.finish().map_err(|e| at("writing", &e))?;
    let file = sink
        .0
        .into_inner()
        .map_err(|e| at("writing", &e.into_error()))?;
    file.sync_all().map_err(|e| at("syncing", &e))?;
    Ok(Written {
        records: summary.records,
        file_bytes: summary.bytes,
    })
}

/// Syncs a directory (the rename in it).
fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing directory {}: {e}", dir.display()))
}

/// Removes a temporary file a crash during a save left behind.
pub fn remove_leftover(dir: &Path) -> io::Result<()> {
    let tmp = dir.join(DUMP_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            log::warn!(
                "ignored and removed {}: an incomplete snapshot left by a save that did not finish",
                tmp.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a dump could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Io(io::Error),
    /// The file is damaged at `offset`.
    Bad {
        offset: u64,
        reason: String,
    },
    /// The record at `offset` was refused (no room for it).
    Refused {
        offset: u64,
        reason: String,
    },
}

/// Reads `path` and calls `f` for each record; `Ok(None)` if there is no
/// such file.
pub fn load_dump(
    path: &PathBuf,
    f: &mut dyn FnMut(Record<'_>) -> Result<(), String>,
) -> Result<Option<DecodeSummary>, LoadError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Io(e)),
    };
    let src = IoSource(BufReader::with_capacity(1 << 20, file));
    decode(src, f).map(Some).map_err(|e| match e {
        DecodeError::Rejected { offset, .. } => LoadError::Refused {
            offset,
            reason: format!("{e}"),
        },
        e => LoadError::Bad {
            offset: e.offset(),
            reason: format!("{e}"),
        },
    })
}
