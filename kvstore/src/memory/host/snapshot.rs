//! Owns the choice of snapshot mechanism on the host: one heap type over
//! `fork()` ([`ForkHeap`]) or userfaultfd write protection ([`UffdHeap`]),
//! selected at run time by [`SnapshotKind`].

use dbos_snapshot::fork::{ForkHeap, ForkSnapshot};
use dbos_snapshot::uffd::{UffdError, UffdHeap, UffdSnapshot};
use dbos_snapshot::{Snapshotter, PAGE_SIZE};
use std::fmt;
use std::str::FromStr;
use std::string::{String, ToString};
use std::sync::atomic::Ordering;

/// How the engine takes its snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    /// `fork()`: a child process holds the frozen view (as Redis's BGSAVE).
    Fork,
    /// userfaultfd write protection: a page is copied on its first write
    /// after the snapshot. Needs Linux 5.7+ and permission to use
    /// userfaultfd.
    Uffd,
}

impl SnapshotKind {
    /// The name `--snapshot` takes.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Fork => "fork",
            SnapshotKind::Uffd => "uffd",
        }
    }
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SnapshotKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fork" => Ok(SnapshotKind::Fork),
            "uffd" => Ok(SnapshotKind::Uffd),
            _ => Err(std::format!(
                "unknown snapshot mechanism {s:?} (fork or uffd)"
            )),
        }
    }
}

/// Why a heap could not be made.
#[derive(Debug)]
pub enum HeapError {
    /// The mechanism is not available on this kernel or to this process
    /// (userfaultfd missing or refused).
    Unavailable(String),
    /// Anything else (a bad size, no memory).
    Other(String),
}

/// The heap, over either mechanism.
pub enum AnyHeap {
    Fork(ForkHeap),
    Uffd(UffdHeap),
}

/// A live snapshot of an [`AnyHeap`].
pub enum AnySnap {
    Fork(ForkSnapshot),
    Uffd(UffdSnapshot),
}

fn text(e: impl fmt::Display + fmt::Debug) -> String {
    // thiserror's Display omits the source; Debug carries it.
    std::format!("{e} ({e:?})")
}

impl AnyHeap {
    /// A zeroed heap of `len` bytes (a multiple of the page size).
    pub fn new(kind: SnapshotKind, len: usize) -> Result<AnyHeap, HeapError> {
        match kind {
            SnapshotKind::Fork => ForkHeap::new(len)
                .map(AnyHeap::Fork)
                .map_err(|e| HeapError::Other(text(e))),
            SnapshotKind::Uffd => UffdHeap::new(len).map(AnyHeap::Uffd).map_err(|e| match e {
                UffdError::Unsupported(_) | UffdError::Refused { .. } => {
                    HeapError::Unavailable(text(e))
                }
                e => HeapError::Other(text(e)),
            }),
        }
    }

    pub fn ptr(&self) -> *mut u8 {
        match self {
            AnyHeap::Fork(h) => h.heap(),
            AnyHeap::Uffd(h) => h.heap(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            AnyHeap::Fork(h) => h.heap_len(),
            AnyHeap::Uffd(h) => h.heap_len(),
        }
    }

    /// Takes a snapshot (the caller holds the table's write lock).
    pub fn take(&self) -> Result<AnySnap, String> {
        match self {
            AnyHeap::Fork(h) => h.take().map(AnySnap::Fork).map_err(text),
            AnyHeap::Uffd(h) => h.take().map(AnySnap::Uffd).map_err(text),
        }
    }

    /// Reads the snapshot's view.
    pub fn read(&self, snap: &AnySnap, offset: usize, buf: &mut [u8]) -> Result<(), String> {
        match (self, snap) {
            (AnyHeap::Fork(h), AnySnap::Fork(s)) => h.read(s, offset, buf).map_err(text),
            (AnyHeap::Uffd(h), AnySnap::Uffd(s)) => h.read(s, offset, buf).map_err(text),
            _ => Err("a snapshot of another heap".to_string()),
        }
    }

    /// Releases a snapshot.
    pub fn release(&self, snap: AnySnap) -> Result<(), String> {
        match (self, snap) {
            (AnyHeap::Fork(h), AnySnap::Fork(s)) => h.release(s).map_err(text),
            (AnyHeap::Uffd(h), AnySnap::Uffd(s)) => h.release(s).map_err(text),
            _ => Err("a snapshot of another heap".to_string()),
        }
    }

    /// Bytes the mechanism has copied to keep snapshots' views, where it
    /// counts them (userfaultfd does; `fork()`'s copies are the kernel's).
    pub fn copied_bytes(&self) -> Option<u64> {
        match self {
            AnyHeap::Fork(_) => None,
            AnyHeap::Uffd(h) => {
                Some(h.stats().pages_copied.load(Ordering::Relaxed) * PAGE_SIZE as u64)
            }
        }
    }
}
