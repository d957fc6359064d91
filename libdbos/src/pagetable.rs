//! Page-table edits in libdbos's terms (pages, frames, [`Protection`],
//! [`Error`]), over the one walker both sides use: [`dbos_abi::paging`] (the
//! VMM builds the boot tables with it too). This module only translates: the
//! walker does every read and write of an entry, atomically, and reports how
//! many entries it wrote; the functions here return that count (or the old
//! entry, for one-entry edits) so the caller can count every page-table
//! write.
//!
//! The tables are reached through a *physical offset* (the guest's direct
//! map, or a plain memory buffer in host tests), and new tables come from a
//! caller-supplied frame source.
//!
//! Nothing here touches the TLB: every function reports what it changed, and
//! the caller invalidates (see `guest::paging` for the rule the guest follows).
//! Counting: a mapping writes one entry, plus one parent entry for every
//! table it had to create; unmapping or changing flags writes one entry.
//! Level-aware operations (walk, share, duplicate a table, visit for
//! reclamation) are the walker's own: see [`PageTables::walker`].
//!
//! `remap` is written in four layers, each adding one thing: the walker
//! (`dbos_abi::paging::PageTables::remap`: the exchange of one entry, its
//! flags and the write count), this module (libdbos's terms: frames,
//! [`Protection`], [`Error`]), the guest's `paging::remap` (the structural
//! lock only when tables must be created, the local `invlpg`, the counters)
//! and `GuestPlatform::remap` (the `Platform` call: argument checks).

use crate::platform::{AccessBits, Error, Frame, PageSize, Protection};
use core::marker::PhantomData;
use core::sync::atomic::AtomicU64;
pub use dbos_abi::paging::{
    self as walker, Entry, Flags as F, Level, PagingError, Size, Table, TableMemory, Update, COW,
    LOCK,
};

/// Where new page tables come from: zeroed 4 KiB frames.
pub trait TableFrames {
    fn alloc_zeroed_table(&self) -> Option<u64>;
    /// Takes back a table that was never linked or was unlinked. Default:
    /// leak it.
    fn free_table(&self, _phys: u64) {}
}

/// Tables addressed at `offset + physical address`, new ones from `T`.
pub struct OffsetMemory<'a, T> {
    offset: u64,
    frames: T,
    _tables: PhantomData<&'a Table>,
}

impl<'a, T: TableFrames> OffsetMemory<'a, T> {
    /// # Safety
    /// Every table the walker reaches (any physical address in a present
    /// non-leaf entry, and any address `frames` hands out) is a 4 KiB frame
    /// addressable at `offset + its physical address` for `'a`, and is
    /// accessed only atomically while this memory exists.
    pub unsafe fn new(offset: u64, frames: T) -> Self {
        OffsetMemory {
            offset,
            frames,
            _tables: PhantomData,
        }
    }
}

impl<'a, T: TableFrames> TableMemory<'a> for OffsetMemory<'a, T> {
    fn table(&self, phys: u64) -> Option<&'a Table> {
        if !phys.is_multiple_of(crate::platform::PAGE_SIZE) {
            return None;
        }
        let virt = self.offset.checked_add(phys)?;
        // SAFETY: per the constructor's contract, the table at `phys` is a
        // frame addressable at `offset + phys` for 'a and accessed only
        // atomically; `[AtomicU64; 512]` has the layout of that frame.
        Some(unsafe { &*(virt as *const Table) })
    }

    fn alloc_table(&self) -> Option<u64> {
        self.frames.alloc_zeroed_table()
    }

    fn free_table(&self, phys: u64) {
        self.frames.free_table(phys)
    }
}

/// A mapping as found by [`PageTables::lookup`], or as an edit found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub frame: Frame,
    pub size: PageSize,
    pub writable: bool,
    pub accessed: bool,
    pub dirty: bool,
}

impl Mapping {
    /// The mapping a present leaf entry of `size` makes.
    pub fn from_entry(entry: Entry, size: PageSize) -> Option<Mapping> {
        if !entry.present() {
            return None;
        }
        Some(Mapping {
            frame: Frame::from_addr(entry.addr())?,
            size,
            writable: entry.has(F::WRITABLE),
            accessed: entry.has(F::ACCESSED),
            dirty: entry.has(F::DIRTY),
        })
    }

    /// Its accessed and dirty bits, both observed.
    pub fn bits(&self) -> AccessBits {
        AccessBits {
            accessed: Some(self.accessed),
            dirty: Some(self.dirty),
        }
    }
}

/// Flags for a window page: present, never executable, user-inaccessible.
pub fn flags_for(prot: Protection) -> F {
    match prot {
        Protection::ReadOnly => F::PRESENT | F::NO_EXECUTE,
        Protection::ReadWrite => F::PRESENT | F::WRITABLE | F::NO_EXECUTE,
    }
}

/// The walker's leaf size for a page size.
pub fn size_of(size: PageSize) -> Size {
    match size {
        PageSize::Small => Size::Small,
        PageSize::Large => Size::Large,
    }
}

/// The platform error for a walker error on `page` (mapping `frame`).
pub fn error(e: PagingError, page: u64, frame: u64) -> Error {
    match e {
        PagingError::UnalignedAddr => Error::Unaligned(page),
        PagingError::UnalignedFrame => Error::Unaligned(frame),
        PagingError::NotMapped => Error::NotMapped(page),
        PagingError::AlreadyMapped => Error::AlreadyMapped(page),
        PagingError::SizeMismatch => Error::SizeMismatch(page),
        PagingError::Locked | PagingError::Changed => Error::Busy(page),
        PagingError::OutOfTables { .. } => Error::OutOfFrames,
        PagingError::BadTable(_) => Error::Unsupported("a page table outside memory"),
    }
}

/// The entries a failed walker call still wrote (tables it linked before it
/// ran out of memory).
fn writes_of(e: &PagingError) -> u64 {
    match e {
        PagingError::OutOfTables { writes } => *writes,
        _ => 0,
    }
}

/// A view of one set of page tables.
pub struct PageTables<'a, T: TableFrames> {
    tables: walker::PageTables<'a, OffsetMemory<'a, T>>,
}

impl<'a, T: TableFrames> PageTables<'a, T> {
    /// # Safety
    /// `root` is the physical address of a valid PML4, and the contract of
    /// [`OffsetMemory::new`] holds for `phys_offset` and `frames`. Structural
    /// edits (those that create or re-point tables) are serialised by the
    /// caller; leaf edits may run concurrently (see [`dbos_abi::paging`]).
    pub unsafe fn new(root: u64, phys_offset: u64, frames: T) -> Self {
        // SAFETY: forwarded contract.
        let mem = unsafe { OffsetMemory::new(phys_offset, frames) };
        PageTables {
            tables: walker::PageTables::new(mem, root),
        }
    }

    /// The walker, for the level-aware operations.
    pub fn walker(&self) -> &walker::PageTables<'a, OffsetMemory<'a, T>> {
        &self.tables
    }

    /// Maps `page` to `frame`, adding the entries written to `writes` (the
    /// leaf plus one per table created; on `OutOfFrames`, the tables linked
    /// before memory ran out).
    pub fn map(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
        writes: &mut u64,
    ) -> Result<(), Error> {
        match self
            .tables
            .map(page, frame.addr(), size_of(size), flags_for(prot))
        {
            Ok(u) => {
                *writes += u.writes;
                Ok(())
            }
            Err(e) => {
                *writes += writes_of(&e);
                Err(error(e, page, frame.addr()))
            }
        }
    }

    /// Points `page` at `frame` whatever it held (one exchange of the
    /// entry); returns the mapping it replaced, if it was present (with its
    /// accessed and dirty bits at that moment). With `create`, missing
    /// tables are created (the caller serialises structural edits);
    /// without, a missing table is `NotMapped`. Adds the entries written to
    /// `writes` (1 plus the tables created).
    pub fn remap(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
        create: bool,
        writes: &mut u64,
    ) -> Result<Option<Mapping>, Error> {
        match self
            .tables
            .remap(page, frame.addr(), size_of(size), flags_for(prot), create)
        {
            Ok(u) => {
                *writes += u.writes;
                Ok(Mapping::from_entry(u.old, size))
            }
            Err(e) => {
                *writes += writes_of(&e);
                Err(error(e, page, frame.addr()))
            }
        }
    }

    /// Unmaps `page`; returns the mapping as it was at that moment (frame,
    /// accessed, dirty). One entry written.
    pub fn unmap(&self, page: u64, size: PageSize) -> Result<Mapping, Error> {
        let u = self
            .tables
            .unmap(page, size_of(size))
            .map_err(|e| error(e, page, 0))?;
        Ok(Mapping::from_entry(u.old, size).expect("unmapped a present entry"))
    }

    /// Changes the protection of mapped `page`, keeping its frame and its
    /// accessed and dirty bits; returns the mapping before. One entry written.
    pub fn protect(&self, page: u64, size: PageSize, prot: Protection) -> Result<Mapping, Error> {
        let u = self
            .tables
            .protect(page, size_of(size), flags_for(prot))
            .map_err(|e| error(e, page, 0))?;
        Ok(Mapping::from_entry(u.old, size).expect("protected a present entry"))
    }

    /// Clears `bits` of the leaf of `size` at `page`; returns the mapping
    /// before and the entries written: 1, or with `always` false, 0 when
    /// none of `bits` was set.
    pub fn clear_bits(
        &self,
        page: u64,
        size: PageSize,
        bits: F,
        always: bool,
    ) -> Result<(Mapping, u64), Error> {
        let u = self
            .tables
            .update(page, size_of(size), |e| {
                (always || e.flags().intersects(bits)).then(|| e.without(bits))
            })
            .map_err(|e| error(e, page, 0))?;
        let m = Mapping::from_entry(u.old, size).expect("updated a present entry");
        Ok((m, u.writes))
    }

    /// Creates every page table for `[start, end)`, adding the entries
    /// written to `writes`; afterwards [`leaf`](Self::leaf) finds every
    /// page's entry without allocating.
    pub fn populate(&self, start: u64, end: u64, writes: &mut u64) -> Result<(), Error> {
        match self.tables.populate(start, end) {
            Ok(w) => {
                *writes += w;
                Ok(())
            }
            Err(e) => {
                *writes += writes_of(&e);
                Err(error(e, start, 0))
            }
        }
    }

    /// The level-1 entry of `addr`, if its page table exists.
    pub fn leaf(&self, addr: u64) -> Option<&'a AtomicU64> {
        self.tables.leaf(addr)
    }

    /// The mapping covering `addr`, if any.
    pub fn lookup(&self, addr: u64) -> Option<Mapping> {
        let walk = self.tables.walk(addr).ok()?;
        let (entry, size) = walk.leaf()?;
        let size = match size? {
            Size::Small => PageSize::Small,
            Size::Large => PageSize::Large,
        };
        Mapping::from_entry(entry, size)
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::Cell;
    use core::sync::atomic::Ordering;
    use std::vec::Vec;

    /// Page-aligned backing store.
    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Page4k([u8; 4096]);

    /// "Physical memory": page-aligned pages whose offsets are the physical
    /// addresses; frame 0 is the PML4, tables come from frames 1..40.
    struct Phys {
        pages: Vec<Page4k>,
    }

    impl Phys {
        fn new(pages: usize) -> Self {
            Phys {
                pages: std::vec![Page4k([0; 4096]); pages],
            }
        }
        fn offset(&self) -> u64 {
            self.pages.as_ptr() as u64
        }
        fn tables<'t>(
            &mut self,
            next: &'t Cell<usize>,
            limit: usize,
        ) -> PageTables<'t, Tables<'t>> {
            // SAFETY: frame 0 is a zeroed PML4 inside `pages`, which outlives
            // the view in each test and is accessed only through it; tables
            // come from the same buffer, addressed by offset.
            unsafe { PageTables::new(0, self.offset(), Tables(next, limit)) }
        }
    }

    /// Hands out the arena's table frames `next..limit` (already zero).
    struct Tables<'p>(&'p Cell<usize>, usize);
    impl TableFrames for Tables<'_> {
        fn alloc_zeroed_table(&self) -> Option<u64> {
            let f = self.0.get();
            if f >= self.1 {
                return None;
            }
            self.0.set(f + 1);
            Some(f as u64 * 4096)
        }
    }

    const DATA: u64 = 60 * 4096; // data frames live high in the arena

    fn frame(addr: u64) -> Frame {
        Frame::from_addr(addr).unwrap()
    }

    #[test]
    fn map_translate_unmap_small_page() {
        let mut phys = Phys::new(64);
        let next = Cell::new(1);
        let pt = phys.tables(&next, 40);
        let page = 0x0000_1000_0000_3000;
        let mut writes = 0;
        pt.map(
            page,
            frame(DATA),
            PageSize::Small,
            Protection::ReadWrite,
            &mut writes,
        )
        .unwrap();
        assert_eq!(writes, 4, "PTE plus three new tables (PDPT, PD, PT)");
        let m = pt.lookup(page + 0x123).unwrap();
        assert_eq!(
            m,
            Mapping {
                frame: frame(DATA),
                size: PageSize::Small,
                writable: true,
                accessed: false,
                dirty: false
            }
        );
        // A neighbour reuses the tables: one write.
        let mut writes = 0;
        pt.map(
            page + 4096,
            frame(DATA + 4096),
            PageSize::Small,
            Protection::ReadOnly,
            &mut writes,
        )
        .unwrap();
        assert_eq!(writes, 1);
        assert!(!pt.lookup(page + 4096).unwrap().writable);
        let mut writes = 0;
        assert_eq!(
            pt.map(
                page,
                frame(DATA),
                PageSize::Small,
                Protection::ReadWrite,
                &mut writes
            ),
            Err(Error::AlreadyMapped(page))
        );
        assert_eq!(writes, 0);
        assert_eq!(
            pt.unmap(page, PageSize::Small).map(|m| m.frame),
            Ok(frame(DATA))
        );
        assert_eq!(pt.lookup(page), None);
        assert_eq!(pt.unmap(page, PageSize::Small), Err(Error::NotMapped(page)));
        assert_eq!(
            pt.unmap(page + 1, PageSize::Small),
            Err(Error::Unaligned(page + 1))
        );
    }

    #[test]
    fn protection_keeps_and_reports_access_bits() {
        let mut phys = Phys::new(64);
        let next = Cell::new(1);
        let pt = phys.tables(&next, 40);
        let page = 0x0000_2000_0000_0000;
        pt.map(
            page,
            frame(DATA),
            PageSize::Small,
            Protection::ReadWrite,
            &mut 0,
        )
        .unwrap();
        // The CPU sets accessed and dirty.
        pt.leaf(page)
            .unwrap()
            .fetch_or((F::ACCESSED | F::DIRTY).bits(), Ordering::SeqCst);
        let before = pt
            .protect(page, PageSize::Small, Protection::ReadOnly)
            .unwrap();
        assert!(before.accessed && before.dirty && before.writable);
        let m = pt.lookup(page).unwrap();
        assert!(m.accessed && m.dirty && !m.writable, "protect keeps A/D");
        assert_eq!(m.frame, frame(DATA));
        let (before, writes) = pt
            .clear_bits(page, PageSize::Small, F::ACCESSED, false)
            .unwrap();
        assert_eq!((before.accessed, before.dirty, writes), (true, true, 1));
        let (before, writes) = pt
            .clear_bits(page, PageSize::Small, F::ACCESSED, false)
            .unwrap();
        assert_eq!((before.accessed, before.dirty, writes), (false, true, 0));
        let (_, writes) = pt
            .clear_bits(page, PageSize::Small, F::ACCESSED | F::DIRTY, true)
            .unwrap();
        assert_eq!(writes, 1);
        let m = pt.unmap(page, PageSize::Small).unwrap();
        assert!(!m.accessed && !m.dirty && !m.writable);
        assert_eq!(
            pt.protect(page + 4096, PageSize::Small, Protection::ReadOnly),
            Err(Error::NotMapped(page + 4096))
        );
    }

    #[test]
    fn large_pages() {
        let mut phys = Phys::new(64);
        let next = Cell::new(1);
        let pt = phys.tables(&next, 40);
        let page = 0x0000_3000_0020_0000;
        let large = frame(2 << 20);
        let rw = Protection::ReadWrite;
        assert_eq!(
            pt.map(page + 4096, large, PageSize::Large, rw, &mut 0),
            Err(Error::Unaligned(page + 4096))
        );
        assert_eq!(
            pt.map(page, frame(4096), PageSize::Large, rw, &mut 0),
            Err(Error::Unaligned(4096))
        );
        let mut writes = 0;
        pt.map(page, large, PageSize::Large, rw, &mut writes)
            .unwrap();
        assert_eq!(writes, 3);
        let m = pt.lookup(page + 0x1f_fff8).unwrap();
        assert_eq!((m.frame, m.size), (large, PageSize::Large));
        // A small page inside a large one is a size mismatch.
        assert_eq!(
            pt.unmap(page + 4096, PageSize::Small),
            Err(Error::SizeMismatch(page + 4096))
        );
        assert_eq!(
            pt.map(page + 4096, frame(DATA), PageSize::Small, rw, &mut 0),
            Err(Error::SizeMismatch(page + 4096))
        );
        assert_eq!(pt.unmap(page, PageSize::Large).map(|m| m.frame), Ok(large));
        // Small pages under a 2 MiB slot: neither a large map nor a large
        // protection change may treat their page table as a large page.
        pt.map(page + 4096, frame(DATA), PageSize::Small, rw, &mut 0)
            .unwrap();
        assert_eq!(
            pt.map(page, large, PageSize::Large, rw, &mut 0),
            Err(Error::SizeMismatch(page))
        );
        assert_eq!(
            pt.protect(page, PageSize::Large, Protection::ReadOnly),
            Err(Error::SizeMismatch(page))
        );
        assert_eq!(
            pt.lookup(page + 4096).map(|m| m.size),
            Some(PageSize::Small)
        );
    }

    #[test]
    fn running_out_of_table_frames() {
        let mut phys = Phys::new(64);
        let next = Cell::new(39); // one frame left, three tables needed
        let pt = phys.tables(&next, 40);
        let mut writes = 0;
        assert_eq!(
            pt.map(
                0x0000_4000_0000_0000,
                frame(DATA),
                PageSize::Small,
                Protection::ReadWrite,
                &mut writes
            ),
            Err(Error::OutOfFrames)
        );
        assert_eq!(writes, 1, "the one table linked is counted");
    }

    #[test]
    fn populated_leaves() {
        let mut phys = Phys::new(64);
        let next = Cell::new(1);
        let pt = phys.tables(&next, 40);
        let base = 0x0000_5000_0000_0000;
        let mut writes = 0;
        pt.populate(base, base + (4 << 20), &mut writes).unwrap();
        assert_eq!(writes, 4, "PDPT, PD and two page tables");
        assert!(pt.leaf(base + 0x3f_f000).is_some());
        assert!(pt.leaf(base + (4 << 20)).is_none());
        let mut writes = 0;
        pt.map(
            base,
            frame(DATA),
            PageSize::Small,
            Protection::ReadWrite,
            &mut writes,
        )
        .unwrap();
        assert_eq!(writes, 1);
        assert_eq!(
            pt.leaf(base).unwrap().load(Ordering::SeqCst),
            DATA | flags_for(Protection::ReadWrite).bits()
        );
    }
}
