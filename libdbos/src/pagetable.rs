//! Page-table edits on x86-64 four-level tables, independent of where they
//! run: the tables are reached through a *physical offset* (the guest's direct
//! map, or a plain memory buffer in host tests), and new tables come from a
//! caller-supplied frame source.
//!
//! Nothing here touches the TLB: every function reports what it changed, and
//! the caller invalidates (see `guest::paging` for the rule the guest follows).
//! Counting: a mapping writes one entry, plus one parent entry for every
//! table it had to create; unmapping or changing flags writes one entry.

use crate::platform::{Error, Frame, PageSize, Protection};
use x86_64::structures::paging::mapper::{
    FlagUpdateError, MapToError, MappedFrame, TranslateResult, UnmapError,
};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize as XPageSize, PageTable,
    PageTableFlags as F, PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// Where new page tables come from: zeroed 4 KiB frames.
pub trait TableFrames {
    fn alloc_zeroed_table(&mut self) -> Option<u64>;
}

struct Adapter<'a, T: TableFrames> {
    inner: &'a mut T,
    allocated: u64,
}

// SAFETY: `TableFrames` hands out distinct zeroed frames; the adapter only
// passes them on.
unsafe impl<T: TableFrames> FrameAllocator<Size4KiB> for Adapter<'_, T> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let addr = self.inner.alloc_zeroed_table()?;
        self.allocated += 1;
        Some(PhysFrame::containing_address(PhysAddr::new(addr)))
    }
}

/// A mapping as found by [`PageTables::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub frame: Frame,
    pub size: PageSize,
    pub writable: bool,
    pub accessed: bool,
    pub dirty: bool,
}

/// Flags for a window page: present, never executable, user-inaccessible.
pub fn flags_for(prot: Protection) -> F {
    match prot {
        Protection::ReadOnly => F::PRESENT | F::NO_EXECUTE,
        Protection::ReadWrite => F::PRESENT | F::WRITABLE | F::NO_EXECUTE,
    }
}

/// A view of one set of page tables.
pub struct PageTables<'a> {
    mapper: OffsetPageTable<'a>,
}

impl<'a> PageTables<'a> {
    /// # Safety
    /// `root` is the physical address of a valid PML4, every table reachable
    /// from it is addressable at `phys_offset + its physical address`, and no
    /// one else edits these tables while the view exists.
    pub unsafe fn new(root: u64, phys_offset: u64) -> Self {
        let pml4 = (phys_offset + root) as *mut PageTable;
        // SAFETY: per the contract above.
        let mapper = unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(phys_offset)) };
        PageTables { mapper }
    }

    /// Maps `page` to `frame`. Returns the number of entries written.
    pub fn map(
        &mut self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
        tables: &mut impl TableFrames,
    ) -> Result<u64, Error> {
        let mut alloc = Adapter {
            inner: tables,
            allocated: 0,
        };
        match size {
            PageSize::Small => self.map_as::<Size4KiB, _>(page, frame, prot, &mut alloc)?,
            PageSize::Large => {
                // The crate reports a page table under the 2 MiB entry as
                // "already mapped"; for the caller that is a size mismatch.
                match self.map_as::<Size2MiB, _>(page, frame, prot, &mut alloc) {
                    Err(Error::AlreadyMapped(_))
                        if self
                            .directory_entry(page)
                            .is_some_and(|f| !f.contains(F::HUGE_PAGE)) =>
                    {
                        return Err(Error::SizeMismatch(page))
                    }
                    other => other?,
                }
            }
        }
        Ok(1 + alloc.allocated)
    }

    fn map_as<S: XPageSize, T: TableFrames>(
        &mut self,
        page: u64,
        frame: Frame,
        prot: Protection,
        alloc: &mut Adapter<'_, T>,
    ) -> Result<(), Error>
    where
        OffsetPageTable<'a>: Mapper<S>,
    {
        let p = page_at::<S>(page)?;
        let f = PhysFrame::<S>::from_start_address(PhysAddr::new(frame.addr()))
            .map_err(|_| Error::Unaligned(frame.addr()))?;
        let parent = F::PRESENT | F::WRITABLE;
        // SAFETY: the page is in a window the database owns; what the mapping
        // is used for is the database's contract.
        unsafe {
            self.mapper
                .map_to_with_table_flags(p, f, flags_for(prot), parent, alloc)
        }
        .map(|flush| flush.ignore())
        .map_err(|e| map_error(e, page))
    }

    /// Unmaps `page`; returns its frame. One entry written.
    pub fn unmap(&mut self, page: u64, size: PageSize) -> Result<Frame, Error> {
        match size {
            PageSize::Small => self.unmap_as::<Size4KiB>(page),
            PageSize::Large => self.unmap_as::<Size2MiB>(page),
        }
    }

    fn unmap_as<S: XPageSize>(&mut self, page: u64) -> Result<Frame, Error>
    where
        OffsetPageTable<'a>: Mapper<S>,
    {
        let (f, flush) = self
            .mapper
            .unmap(page_at::<S>(page)?)
            .map_err(|e| unmap_error(e, page))?;
        flush.ignore();
        Ok(Frame::from_addr(f.start_address().as_u64()).expect("frames are aligned"))
    }

    /// Replaces the flags of mapped `page` (keeping its frame). One entry written.
    pub fn set_flags(&mut self, page: u64, size: PageSize, flags: F) -> Result<(), Error> {
        // The crate would rewrite a directory entry that points to a page
        // table as if it mapped a 2 MiB page; refuse unless it really does.
        if size == PageSize::Large {
            match self.directory_entry(page) {
                None => return Err(Error::NotMapped(page)),
                Some(flags) if !flags.contains(F::HUGE_PAGE) => {
                    return Err(Error::SizeMismatch(page))
                }
                Some(_) => {}
            }
        }
        // SAFETY: changes only the flags of a window page; the frame stays.
        let r = unsafe {
            match size {
                PageSize::Small => self
                    .mapper
                    .update_flags(page_at::<Size4KiB>(page)?, flags)
                    .map(|f| f.ignore()),
                PageSize::Large => self
                    .mapper
                    .update_flags(page_at::<Size2MiB>(page)?, flags | F::HUGE_PAGE)
                    .map(|f| f.ignore()),
            }
        };
        r.map_err(|e| match e {
            FlagUpdateError::PageNotMapped => Error::NotMapped(page),
            FlagUpdateError::ParentEntryHugePage => Error::SizeMismatch(page),
        })
    }

    /// The flags of the present level-2 (page directory) entry covering
    /// `addr`: a 2 MiB mapping if HUGE_PAGE is set, else a page table.
    fn directory_entry(&self, addr: u64) -> Option<F> {
        let offset = self.mapper.phys_offset().as_u64();
        let mut table: &PageTable = self.mapper.level_4_table();
        for level in [3u32, 2] {
            let entry = &table[((addr >> (12 + 9 * level)) & 0x1ff) as usize];
            if !entry.flags().contains(F::PRESENT) || entry.flags().contains(F::HUGE_PAGE) {
                return None;
            }
            // SAFETY: a present, non-huge entry points to a table, which the
            // constructor's contract makes addressable at `offset + phys`.
            table = unsafe { &*((offset + entry.addr().as_u64()) as *const PageTable) };
        }
        let entry = &table[((addr >> 21) & 0x1ff) as usize];
        entry.flags().contains(F::PRESENT).then(|| entry.flags())
    }

    /// The mapping covering `addr`, if any.
    pub fn lookup(&self, addr: u64) -> Option<Mapping> {
        let v = VirtAddr::try_new(addr).ok()?;
        match self.mapper.translate(v) {
            TranslateResult::Mapped { frame, flags, .. } => {
                let (start, size) = match frame {
                    MappedFrame::Size4KiB(f) => (f.start_address().as_u64(), PageSize::Small),
                    MappedFrame::Size2MiB(f) => (f.start_address().as_u64(), PageSize::Large),
                    MappedFrame::Size1GiB(f) => (f.start_address().as_u64(), PageSize::Large),
                };
                Some(Mapping {
                    frame: Frame::from_addr(start)?,
                    size,
                    writable: flags.contains(F::WRITABLE),
                    accessed: flags.contains(F::ACCESSED),
                    dirty: flags.contains(F::DIRTY),
                })
            }
            _ => None,
        }
    }
}

/// The page of size `S` starting at `addr`.
fn page_at<S: XPageSize>(addr: u64) -> Result<Page<S>, Error> {
    let v = VirtAddr::try_new(addr).map_err(|_| Error::Unaligned(addr))?;
    Page::<S>::from_start_address(v).map_err(|_| Error::Unaligned(addr))
}

fn map_error<S: XPageSize>(e: MapToError<S>, page: u64) -> Error {
    match e {
        MapToError::FrameAllocationFailed => Error::OutOfFrames,
        MapToError::ParentEntryHugePage => Error::SizeMismatch(page),
        MapToError::PageAlreadyMapped(_) => Error::AlreadyMapped(page),
    }
}

fn unmap_error(e: UnmapError, page: u64) -> Error {
    match e {
        UnmapError::PageNotMapped | UnmapError::InvalidFrameAddress(_) => Error::NotMapped(page),
        UnmapError::ParentEntryHugePage => Error::SizeMismatch(page),
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::*;
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
        fn tables(&mut self) -> PageTables<'static> {
            // SAFETY: frame 0 is a zeroed PML4 inside `pages`, which outlives
            // the view in each test, and tables are addressed by offset.
            unsafe { PageTables::new(0, self.offset()) }
        }
    }

    /// Hands out the arena's table frames `*next..limit` (already zero).
    struct Tables<'p>(&'p mut usize, usize);
    impl TableFrames for Tables<'_> {
        fn alloc_zeroed_table(&mut self) -> Option<u64> {
            if *self.0 >= self.1 {
                return None;
            }
            let f = *self.0;
            *self.0 += 1;
            Some(f as u64 * 4096)
        }
    }

    const DATA: u64 = 60 * 4096; // data frames live high in the arena

    #[test]
    fn map_translate_unmap_small_page() {
        let mut phys = Phys::new(64);
        let mut pt = phys.tables();
        let mut next = 1;
        let page = 0x0000_1000_0000_3000;
        let writes = pt
            .map(
                page,
                Frame::from_addr(DATA).unwrap(),
                PageSize::Small,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40),
            )
            .unwrap();
        assert_eq!(writes, 4, "PTE plus three new tables (PDPT, PD, PT)");
        let m = pt.lookup(page + 0x123).unwrap();
        assert_eq!(
            m,
            Mapping {
                frame: Frame::from_addr(DATA).unwrap(),
                size: PageSize::Small,
                writable: true,
                accessed: false,
                dirty: false
            }
        );
        // A neighbour reuses the tables: one write.
        let writes = pt
            .map(
                page + 4096,
                Frame::from_addr(DATA + 4096).unwrap(),
                PageSize::Small,
                Protection::ReadOnly,
                &mut Tables(&mut next, 40),
            )
            .unwrap();
        assert_eq!(writes, 1);
        assert!(!pt.lookup(page + 4096).unwrap().writable);
        assert_eq!(
            pt.map(
                page,
                Frame::from_addr(DATA).unwrap(),
                PageSize::Small,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::AlreadyMapped(page))
        );
        assert_eq!(
            pt.unmap(page, PageSize::Small),
            Ok(Frame::from_addr(DATA).unwrap())
        );
        assert_eq!(pt.lookup(page), None);
        assert_eq!(pt.unmap(page, PageSize::Small), Err(Error::NotMapped(page)));
        assert_eq!(
            pt.unmap(page + 1, PageSize::Small),
            Err(Error::Unaligned(page + 1))
        );
    }

    #[test]
    fn protection_and_access_bits_are_entry_flags() {
        let mut phys = Phys::new(64);
        let mut pt = phys.tables();
        let mut next = 1;
        let page = 0x0000_2000_0000_0000;
        pt.map(
            page,
            Frame::from_addr(DATA).unwrap(),
            PageSize::Small,
            Protection::ReadWrite,
            &mut Tables(&mut next, 40),
        )
        .unwrap();
        pt.set_flags(
            page,
            PageSize::Small,
            flags_for(Protection::ReadWrite) | F::ACCESSED | F::DIRTY,
        )
        .unwrap();
        let m = pt.lookup(page).unwrap();
        assert!(m.accessed && m.dirty && m.writable);
        pt.set_flags(page, PageSize::Small, flags_for(Protection::ReadOnly))
            .unwrap();
        let m = pt.lookup(page).unwrap();
        assert!(!m.accessed && !m.dirty && !m.writable);
        assert_eq!(
            pt.set_flags(page + 4096, PageSize::Small, F::PRESENT),
            Err(Error::NotMapped(page + 4096))
        );
    }

    #[test]
    fn large_pages() {
        let mut phys = Phys::new(64);
        let mut pt = phys.tables();
        let mut next = 1;
        let page = 0x0000_3000_0020_0000;
        let frame = Frame::from_addr(2 << 20).unwrap();
        assert_eq!(
            pt.map(
                page + 4096,
                frame,
                PageSize::Large,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::Unaligned(page + 4096))
        );
        assert_eq!(
            pt.map(
                page,
                Frame::from_addr(4096).unwrap(),
                PageSize::Large,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::Unaligned(4096))
        );
        assert_eq!(
            pt.map(
                page,
                frame,
                PageSize::Large,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Ok(3)
        );
        let m = pt.lookup(page + 0x1f_fff8).unwrap();
        assert_eq!((m.frame, m.size), (frame, PageSize::Large));
        // A small page inside a large one is a size mismatch.
        assert_eq!(
            pt.unmap(page + 4096, PageSize::Small),
            Err(Error::SizeMismatch(page + 4096))
        );
        assert_eq!(
            pt.map(
                page + 4096,
                Frame::from_addr(DATA).unwrap(),
                PageSize::Small,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::SizeMismatch(page + 4096))
        );
        assert_eq!(pt.unmap(page, PageSize::Large), Ok(frame));
        // Small pages under a 2 MiB slot: neither a large map nor a large
        // flag change may treat their page table as a large page.
        pt.map(
            page + 4096,
            Frame::from_addr(DATA).unwrap(),
            PageSize::Small,
            Protection::ReadWrite,
            &mut Tables(&mut next, 40),
        )
        .unwrap();
        assert_eq!(
            pt.map(
                page,
                frame,
                PageSize::Large,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::SizeMismatch(page))
        );
        assert_eq!(
            pt.set_flags(page, PageSize::Large, flags_for(Protection::ReadOnly)),
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
        let mut pt = phys.tables();
        let mut next = 39; // one frame left, three tables needed
        assert_eq!(
            pt.map(
                0x0000_4000_0000_0000,
                Frame::from_addr(DATA).unwrap(),
                PageSize::Small,
                Protection::ReadWrite,
                &mut Tables(&mut next, 40)
            ),
            Err(Error::OutOfFrames)
        );
    }
}
