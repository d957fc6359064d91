//! What the two guest snapshot mechanisms ([`crate::snappy`] and
//! [`crate::forklike`]) share: the window layout of snapshot views and the
//! errors. The lock that serialises a mechanism's structural edits (and
//! serves TLB shootdowns while it spins) is libdbos's
//! [`ServingLock`](libdbos::smp::ServingLock).

use core::fmt;
use libdbos::pagetable::PagingError;
pub use libdbos::smp::ServingLock;

/// The most snapshots one mechanism keeps alive at once (view slots).
pub const MAX_SNAPSHOTS: usize = 16;

/// One gibibyte: the span of a level-3 entry, the largest heap, and the
/// alignment (and stride) of heaps and views.
pub const GIB: u64 = 1 << 30;

/// What can go wrong in a guest snapshot mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapError {
    /// The heap must be a non-zero multiple of 4 KiB, at most 1 GiB.
    HeapSize(u64),
    /// Every view slot holds a live snapshot.
    TooManySnapshots,
    /// The snapshot (slot, epoch) is not live in this mechanism.
    NotLive { slot: usize, epoch: u64 },
    /// A range outside the heap.
    OutOfRange { offset: u64, len: u64 },
    /// The snapshot was taken by another instance (it stays live in that
    /// one, and is released there when dropped).
    ForeignSnapshot,
    /// A fault at an address the mechanism does not resolve (a read-only
    /// page that is not copy-on-write, a large page).
    NotResolvable(u64),
    /// The platform refused (windows, frames).
    Platform(libdbos::platform::Error),
    /// The page-table walker refused, at this address.
    Paging { addr: u64, error: PagingError },
}

impl fmt::Display for SnapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapError::HeapSize(n) => {
                write!(f, "heap size {n} is not a multiple of 4 KiB in (0, 1 GiB]")
            }
            SnapError::TooManySnapshots => write!(f, "all {MAX_SNAPSHOTS} snapshot slots are live"),
            SnapError::NotLive { slot, epoch } => {
                write!(f, "snapshot {epoch} (slot {slot}) is not live")
            }
            SnapError::OutOfRange { offset, len } => {
                write!(f, "range {offset:#x}+{len:#x} is outside the heap")
            }
            SnapError::ForeignSnapshot => {
                write!(f, "the snapshot belongs to another instance")
            }
            SnapError::NotResolvable(a) => write!(f, "fault at {a:#x} is not a snapshot fault"),
            SnapError::Platform(e) => write!(f, "platform: {e}"),
            SnapError::Paging { addr, error } => write!(f, "page tables at {addr:#x}: {error:?}"),
        }
    }
}

impl From<libdbos::platform::Error> for SnapError {
    fn from(e: libdbos::platform::Error) -> Self {
        SnapError::Platform(e)
    }
}

/// `map_err` helper: a walker error at `addr`.
pub fn paging(addr: u64) -> impl Fn(PagingError) -> SnapError {
    move |error| SnapError::Paging { addr, error }
}

/// Checks a heap length.
pub fn check_len(len: u64) -> Result<(), SnapError> {
    if len == 0 || len > GIB || !len.is_multiple_of(crate::PAGE_SIZE as u64) {
        return Err(SnapError::HeapSize(len));
    }
    Ok(())
}
