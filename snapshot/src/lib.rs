//! Memory snapshots for dbos.
//!
//! - [`Snapshotter`]: the interface every snapshot mechanism implements (a
//!   heap region that writers write through, `take`, read a snapshot's view,
//!   `release`). `no_std`, so the guest's Snappy can implement it.
//! - [`Checksum`]: the checksum a snapshot's view is compared by.
//! - [`kv`]: the key-value workload of issue 12 (the hash table's layout
//!   and hashing, the writers' keys), shared by the process benchmark and
//!   the guest's event report.
//! - Host only (`not(target_os = "none")`): the two process baselines Snappy
//!   is measured against, [`fork::ForkHeap`] (the child process holds the
//!   view, as Redis's BGSAVE does) and [`uffd::UffdHeap`] (userfaultfd
//!   write-protection, the page is copied into the snapshot on its first
//!   write).
//! - Guest only (`target_os = "none"`): `snappy::Snappy`, O(1)
//!   page-table snapshots with copy on write by path and epoch
//!   reclamation, and `forklike::ForkLike`, the same snapshot taken the
//!   way `fork()` takes one, for the side-by-side event counts.
#![no_std]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(not(target_os = "none"))]
extern crate std;

#[cfg(not(target_os = "none"))]
pub mod fork;
pub mod kv;
#[cfg(not(target_os = "none"))]
mod sys;
#[cfg(not(target_os = "none"))]
pub mod uffd;

#[cfg(target_os = "none")]
pub mod forklike;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
pub mod snappy;
#[cfg(target_os = "none")]
pub use guest::{SnapError, GIB, MAX_SNAPSHOTS};

/// Page size of every implementation's copy-on-write granule.
pub const PAGE_SIZE: usize = dbos_abi::PAGE_SIZE as usize;

/// A heap region of [`heap_len`](Self::heap_len) bytes whose consistent
/// snapshots can be taken while it is being written.
///
/// # Contract
///
/// - Writers write the heap directly through [`heap`](Self::heap) (or
///   [`write_u64`](Self::write_u64)), from any thread.
/// - [`take`](Self::take) returns a handle whose view is **exactly the heap
///   at the moment of `take`**: every write that happens-before the call to
///   `take` is in the view, no write that happens-after its return is, and
///   no later write ever changes the view, however long the snapshot lives.
///   A write *concurrent* with `take` (not ordered against it by the caller)
///   may or may not be in the view; callers that need an exact moment order
///   their writes against `take` (the consistency tests do so with a lock).
/// - Several snapshots may be alive at once; each keeps its own view until it
///   is passed to [`release`](Self::release) (dropping a handle also releases
///   it, without reporting errors).
/// - [`read`](Self::read) and [`checksum`](Self::checksum) may be called from
///   any thread, concurrently with writers and with each other.
///
/// # Safety
///
/// Implementors guarantee that [`heap`](Self::heap) points to
/// [`heap_len`](Self::heap_len) bytes, aligned to [`PAGE_SIZE`], readable and
/// writable for the life of `self` (the provided [`write_u64`](Self::write_u64)
/// relies on it).
pub unsafe trait Snapshotter: Sync {
    /// A live snapshot.
    type Snapshot: Send;
    /// What can go wrong (`Debug` so that tests can unwrap it).
    type Error: core::fmt::Debug;

    /// The start of the heap.
    fn heap(&self) -> *mut u8;

    /// The heap's length in bytes (a multiple of [`PAGE_SIZE`]).
    fn heap_len(&self) -> usize;

    /// Takes a snapshot of the heap as it is now.
    fn take(&self) -> Result<Self::Snapshot, Self::Error>;

    /// Copies `buf.len()` bytes of the snapshot's view, from `offset`, into
    /// `buf`. The range must lie in the heap.
    fn read(&self, snap: &Self::Snapshot, offset: usize, buf: &mut [u8])
        -> Result<(), Self::Error>;

    /// Releases a snapshot: its view and whatever held it are freed.
    fn release(&self, snap: Self::Snapshot) -> Result<(), Self::Error>;

    /// The number of snapshots alive now.
    fn live(&self) -> usize;

    /// The [`Checksum`] of `len` bytes of the snapshot's view from `offset`.
    /// The default reads the view page by page; an implementation may compute
    /// it where the view lives.
    fn checksum(
        &self,
        snap: &Self::Snapshot,
        offset: usize,
        len: usize,
    ) -> Result<u64, Self::Error> {
        let mut sum = Checksum::new();
        let mut page = [0u8; PAGE_SIZE];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE_SIZE);
            self.read(snap, offset + done, &mut page[..n])?;
            sum.update(&page[..n]);
            done += n;
        }
        Ok(sum.finish())
    }

    /// Writes `value` to the 8-byte slot at `offset` of the live heap.
    ///
    /// # Panics
    ///
    /// If `offset` is not a multiple of 8 or the slot is outside the heap.
    fn write_u64(&self, offset: usize, value: u64) {
        assert!(
            offset.is_multiple_of(8)
                && offset
                    .checked_add(8)
                    .is_some_and(|end| end <= self.heap_len()),
            "slot {offset} outside the heap of {} bytes or unaligned",
            self.heap_len()
        );
        // SAFETY: the trait's safety contract makes `heap()` valid for
        // `heap_len()` bytes and page-aligned; the slot is in bounds and
        // 8-byte aligned (checked above). Volatile, so that the store is
        // really made to the heap (the snapshot mechanism observes it).
        unsafe { self.heap().add(offset).cast::<u64>().write_volatile(value) }
    }
}

/// FNV-1a (64-bit) over bytes: incremental, so a view can be checksummed in
/// pieces of any size with the same result as in one piece.
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Checksum {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub const fn new() -> Self {
        Checksum(Self::OFFSET)
    }

    /// Adds `bytes` (never panics and never allocates: the fork baseline's
    /// child runs it after `fork()`).
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub const fn finish(&self) -> u64 {
        self.0
    }

    /// The checksum of `bytes` in one piece.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut sum = Checksum::new();
        sum.update(bytes);
        sum.finish()
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_fnv1a_and_piecewise() {
        // FNV-1a 64 reference values.
        assert_eq!(Checksum::of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Checksum::of(b"a"), 0xaf63_dc4c_8601_ec8c);
        let data: [u8; 100] = core::array::from_fn(|i| i as u8);
        let mut sum = Checksum::new();
        sum.update(&data[..37]);
        sum.update(&data[37..]);
        assert_eq!(sum.finish(), Checksum::of(&data));
    }
}
