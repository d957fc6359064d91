//! Writing the guest's boot state into guest memory: the image, a GDT, the
//! boot information with the arguments, and the initial page tables.
//!
//! Boot-data region layout (guest-physical, inside `abi::BOOT_REGION`):
//! GDT at [`GDT_ADDR`], `BootInfo` at [`BOOT_INFO_ADDR`], arguments at
//! [`ARGS_ADDR`], and page tables from [`TABLES_START`] to the region's end.

use crate::elf::Image;
use crate::layout::{Layout, PAGE};
use crate::memory::GuestRam;
use dbos_abi::paging::{Entry, Flags, PageTables, PagingError, Size, Table, TableMemory};
use dbos_abi::{
    BootInfo, GuestPhysAddr, BOOT_MAGIC, DIRECT_MAP_BASE, IMAGE_BASE, MAX_ARGS_BYTES,
    MAX_MEMORY_REGIONS,
};
use std::cell::Cell;
#[cfg(test)]
use x86_64::structures::paging::PageTableFlags as Pte;

pub const GDT_ADDR: u64 = 0x1000;
pub const BOOT_INFO_ADDR: u64 = 0x2000;
pub const ARGS_ADDR: u64 = 0x3000;
pub const TABLES_START: u64 = 0x4000;

/// GDT selectors set at entry (libdbos loads its own GDT with the same ones).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

const HUGE: u64 = 2 << 20;

/// The flags of page-table entry `entry` (its address bits dropped).
#[cfg(test)]
fn pte_flags(entry: u64) -> Pte {
    Pte::from_bits_truncate(entry)
}

/// Why the boot state could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("guest arguments take {0} bytes, more than the {MAX_ARGS_BYTES}-byte limit")]
    ArgsTooLong(usize),
    #[error("guest argument {0:?} contains a NUL byte")]
    ArgHasNul(String),
    #[error("the boot page tables do not fit the boot region (guest memory or image too large)")]
    TablesFull,
    #[error("the memory map has {0} regions, more than the ABI's {MAX_MEMORY_REGIONS}")]
    MemoryMapTooLarge(usize),
    #[error("building the boot page tables: {0:?}")]
    Paging(PagingError),
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
}

/// Bytes the guest arguments take in the boot data (each with its NUL),
/// to compare with [`MAX_ARGS_BYTES`].
pub fn args_size(args: &[String]) -> usize {
    args.iter().map(|a| a.len() + 1).sum()
}

/// Writes everything the guest needs at entry. Returns the PML4 address.
pub fn write_boot_state(
    ram: &GuestRam,
    layout: &Layout,
    image: &Image,
    args: &[String],
    vcpus: u32,
    abi_version: u32,
    nx: bool,
) -> Result<BootState, BootError> {
    for seg in &image.segments {
        ram.write(seg.phys, &seg.data)?;
        // The tail past the file data is already zero: fresh guest RAM is
        // anonymous memory.
    }
    ram.write(GDT_ADDR, &gdt_bytes())?;

    let mut arg_bytes = Vec::new();
    for a in args {
        if a.as_bytes().contains(&0) {
            return Err(BootError::ArgHasNul(a.clone()));
        }
        arg_bytes.extend_from_slice(a.as_bytes());
        arg_bytes.push(0);
    }
    if arg_bytes.len() > MAX_ARGS_BYTES {
        return Err(BootError::ArgsTooLong(arg_bytes.len()));
    }
    ram.write(ARGS_ADDR, &arg_bytes)?;

    let pml4 = build_page_tables(ram, layout, image, nx)?;

    let map = layout.memory_map();
    if map.len() > MAX_MEMORY_REGIONS {
        return Err(BootError::MemoryMapTooLarge(map.len()));
    }
    let mut info = BootInfo {
        magic: BOOT_MAGIC,
        abi_version,
        vcpu_count: vcpus,
        ram_bytes: layout.ram_bytes(),
        memory_map_len: map.len() as u32,
        argc: args.len() as u32,
        args_addr: GuestPhysAddr(ARGS_ADDR),
        args_len: arg_bytes.len() as u64,
        pml4_addr: GuestPhysAddr(pml4),
        ..BootInfo::default()
    };
    info.memory_map[..map.len()].copy_from_slice(&map);
    ram.write_pod(BOOT_INFO_ADDR, &info)?;
    Ok(BootState {
        pml4,
        boot_info_virt: DIRECT_MAP_BASE + BOOT_INFO_ADDR,
        gdt_virt: DIRECT_MAP_BASE + GDT_ADDR,
    })
}

/// Addresses the vCPU setup needs.
#[derive(Clone, Copy, Debug)]
pub struct BootState {
    pub pml4: u64,
    pub boot_info_virt: u64,
    pub gdt_virt: u64,
}

/// Null, 64-bit ring-0 code, ring-0 data.
fn gdt_bytes() -> Vec<u8> {
    let entries: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Guest RAM as the walker's table memory: every table address is checked
/// against guest RAM before the VMM touches it, and new tables come from the
/// boot region, in order, zeroed.
struct BootTables<'r> {
    ram: &'r GuestRam,
    next: Cell<u64>,
    end: u64,
}

impl<'r> TableMemory<'r> for BootTables<'r> {
    fn table(&self, phys: u64) -> Option<&'r Table> {
        let ptr = self.ram.page_ptr(phys).ok()?;
        // SAFETY: `page_ptr` checked that the whole 4 KiB page is guest RAM;
        // guest RAM is host memory mapped for as long as `ram` lives ('r),
        // at a page-aligned host address, so the page is a valid, aligned
        // `[u64; 512]`, and `AtomicU64` has the layout of `u64` and accepts
        // any bit pattern. The VMM accesses table pages only through these
        // atomics (and, before a table is linked, the zeroing below); no vCPU
        // runs while the boot tables are built.
        Some(unsafe { &*ptr.cast::<Table>() })
    }

    fn alloc_table(&self) -> Option<u64> {
        let p = self.next.get();
        if p + PAGE > self.end {
            return None;
        }
        self.ram.write(p, &[0u8; PAGE as usize]).ok()?;
        self.next.set(p + PAGE);
        Some(p)
    }
}

fn paging_error(e: PagingError) -> BootError {
    match e {
        PagingError::OutOfTables { .. } => BootError::TablesFull,
        PagingError::BadTable(addr) => {
            BootError::Memory(crate::memory::MemoryError::OutOfRange { addr, len: PAGE })
        }
        e => BootError::Paging(e),
    }
}

/// The flags of an image page: the segment's permissions, united with those
/// of the segment that already mapped the page (`old`), if any: two segments
/// may share a page at their boundary.
fn image_page_flags(writable: bool, executable: bool, old: Entry, nx: Flags) -> Flags {
    let writable = writable || old.has(Flags::WRITABLE);
    let executable = executable || (old.present() && !old.has(Flags::NO_EXECUTE));
    let mut flags = Flags::PRESENT;
    if writable {
        flags |= Flags::WRITABLE;
    }
    if !executable {
        flags |= nx;
    }
    flags
}

/// Builds the direct map (2 MiB pages, RW, NX) of all RAM and the image
/// mapping (4 KiB pages with the segments' permissions) with the walker the
/// guest uses too (`dbos_abi::paging`). Tables are created in the order the
/// addresses are first touched, with present + writable parents.
fn build_page_tables(
    ram: &GuestRam,
    layout: &Layout,
    image: &Image,
    nx: bool,
) -> Result<u64, BootError> {
    let nx_flag = if nx {
        Flags::NO_EXECUTE
    } else {
        Flags::empty()
    };
    let tables = PageTables::create(BootTables {
        ram,
        next: Cell::new(TABLES_START),
        end: layout.boot.end,
    })
    .map_err(paging_error)?;

    for r in &layout.ram {
        let mut phys = r.start & !(HUGE - 1);
        while phys < r.end {
            let virt = DIRECT_MAP_BASE + phys;
            match tables.map(virt, phys, Size::Large, Flags::WRITABLE | nx_flag) {
                // Two ranges sharing a 2 MiB page map it identically.
                Ok(_) | Err(PagingError::AlreadyMapped) => {}
                Err(e) => return Err(paging_error(e)),
            }
            phys += HUGE;
        }
    }

    for seg in &image.segments {
        let mut phys = seg.phys & !(PAGE - 1);
        while phys < seg.phys_end() {
            let virt = IMAGE_BASE + phys;
            let flags = image_page_flags(seg.writable, seg.executable, Entry::EMPTY, nx_flag);
            match tables.map(virt, phys, Size::Small, flags) {
                Ok(_) => {}
                Err(PagingError::AlreadyMapped) => {
                    tables
                        .update(virt, Size::Small, |old| {
                            let flags =
                                image_page_flags(seg.writable, seg.executable, old, nx_flag);
                            Some(Entry::new(phys, flags))
                        })
                        .map_err(paging_error)?;
                }
                Err(e) => return Err(paging_error(e)),
            }
            phys += PAGE;
        }
    }
    Ok(tables.root())
}

/// The index of `virt`'s entry in a table of `level` (0: page table).
#[cfg(test)]
fn index(virt: u64, level: u32) -> u64 {
    (virt >> (12 + 9 * level)) & 0x1ff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::Segment;

    /// Walks the tables the way the MMU does; returns (phys, pte flags).
    fn walk(ram: &GuestRam, pml4: u64, virt: u64) -> Option<(u64, Pte)> {
        let mut table = pml4;
        for level in (0..4).rev() {
            let e: u64 = ram.read_pod(table + index(virt, level) * 8).ok()?;
            if !pte_flags(e).contains(Pte::PRESENT) {
                return None;
            }
            let base = e & 0x000f_ffff_ffff_f000;
            if level == 1 && pte_flags(e).contains(Pte::HUGE_PAGE) {
                return Some((base + (virt & (HUGE - 1)), pte_flags(e)));
            }
            if level == 0 {
                return Some((base + (virt & (PAGE - 1)), pte_flags(e)));
            }
            table = base;
        }
        None
    }

    #[test]
    fn maps_ram_and_image() {
        let image = Image {
            entry: IMAGE_BASE + 0x20_0000,
            segments: vec![
                Segment {
                    phys: 0x20_0000,
                    mem_size: 0x1800,
                    data: vec![0x90; 16],
                    writable: false,
                    executable: true,
                },
                Segment {
                    phys: 0x20_2000,
                    mem_size: 0x3000,
                    data: vec![1, 2, 3],
                    writable: true,
                    executable: false,
                },
            ],
        };
        let layout = Layout::plan(32 << 20, &image, 1).unwrap();
        let ram = GuestRam::new(&layout.ram).unwrap();
        let st = write_boot_state(
            &ram,
            &layout,
            &image,
            &["a".into(), "bc".into()],
            1,
            7,
            true,
        )
        .unwrap();

        let (p, f) = walk(&ram, st.pml4, DIRECT_MAP_BASE + 0x123_4567).unwrap();
        assert_eq!(p, 0x123_4567);
        // Present, writable, 2 MiB, no-execute.
        assert_eq!(f.bits(), 0x8000_0000_0000_0083);
        assert_eq!(walk(&ram, st.pml4, DIRECT_MAP_BASE + (32 << 20)), None);

        let (p, f) = walk(&ram, st.pml4, IMAGE_BASE + 0x20_1004).unwrap();
        assert_eq!(p, 0x20_1004);
        assert_eq!(f.bits(), 0x1, "text is RX");
        let (_, f) = walk(&ram, st.pml4, IMAGE_BASE + 0x20_4000).unwrap();
        assert_eq!(f.bits(), 0x8000_0000_0000_0003, "data is RW NX");
        assert_eq!(walk(&ram, st.pml4, IMAGE_BASE + 0x20_5000), None);
        assert_eq!(walk(&ram, st.pml4, 0), None, "nothing at virtual 0");

        let info: BootInfo = ram.read_pod(BOOT_INFO_ADDR).unwrap();
        assert_eq!(info.magic, BOOT_MAGIC);
        assert_eq!(info.abi_version, 7);
        assert_eq!(info.argc, 2);
        assert_eq!(info.args_len, 5);
        let mut args = [0u8; 5];
        ram.read(ARGS_ADDR, &mut args).unwrap();
        assert_eq!(&args, b"a\0bc\0");
        let mut text = [0u8; 16];
        ram.read(0x20_0000, &mut text).unwrap();
        assert_eq!(text, [0x90; 16]);
    }

    /// The boot tables as the VMM built them before it used the shared
    /// walker (its own walker, kept here as the reference).
    fn reference_page_tables(ram: &GuestRam, layout: &Layout, image: &Image, nx: bool) -> u64 {
        let nx_flag = if nx { Pte::NO_EXECUTE } else { Pte::empty() };
        let mut next = TABLES_START;
        let mut page = |ram: &GuestRam| {
            let p = next;
            next += PAGE;
            ram.write(p, &[0u8; PAGE as usize]).unwrap();
            p
        };
        let pml4 = page(ram);
        let mut child = |ram: &GuestRam, table: u64, index: u64| {
            let slot = table + index * 8;
            let entry: u64 = ram.read_pod(slot).unwrap();
            if pte_flags(entry).contains(Pte::PRESENT) {
                return entry & 0x000f_ffff_ffff_f000;
            }
            let c = page(ram);
            ram.write_pod(slot, &(c | (Pte::PRESENT | Pte::WRITABLE).bits()))
                .unwrap();
            c
        };
        for r in &layout.ram {
            let mut phys = r.start & !(HUGE - 1);
            while phys < r.end {
                let virt = DIRECT_MAP_BASE + phys;
                let pdpt = child(ram, pml4, index(virt, 3));
                let pd = child(ram, pdpt, index(virt, 2));
                let flags = Pte::PRESENT | Pte::WRITABLE | Pte::HUGE_PAGE | nx_flag;
                ram.write_pod(pd + index(virt, 1) * 8, &(phys | flags.bits()))
                    .unwrap();
                phys += HUGE;
            }
        }
        for seg in &image.segments {
            let mut phys = seg.phys & !(PAGE - 1);
            while phys < seg.phys_end() {
                let virt = IMAGE_BASE + phys;
                let pdpt = child(ram, pml4, index(virt, 3));
                let pd = child(ram, pdpt, index(virt, 2));
                let pt = child(ram, pd, index(virt, 1));
                let slot = pt + index(virt, 0) * 8;
                let old = pte_flags(ram.read_pod(slot).unwrap());
                let mut flags = Pte::PRESENT;
                let writable = seg.writable || old.contains(Pte::WRITABLE);
                let executable = seg.executable
                    || (old.contains(Pte::PRESENT) && !old.contains(Pte::NO_EXECUTE));
                if writable {
                    flags |= Pte::WRITABLE;
                }
                if !executable {
                    flags |= nx_flag;
                }
                ram.write_pod(slot, &(phys | flags.bits())).unwrap();
                phys += PAGE;
            }
        }
        pml4
    }

    /// The walker builds the boot tables bit for bit as the VMM's own walker
    /// did: the whole table area of the boot region is compared, for RAM
    /// below and above the 4 GiB hole, segments sharing pages (with the
    /// union of their permissions) and with and without NX.
    #[test]
    fn boot_tables_are_bit_identical_to_the_reference() {
        let image = Image {
            entry: IMAGE_BASE + 0x20_0000,
            segments: vec![
                Segment {
                    phys: 0x20_0000,
                    mem_size: 0x1800,
                    data: vec![0x90; 16],
                    writable: false,
                    executable: true,
                },
                Segment {
                    phys: 0x20_1800,
                    mem_size: 0x2000,
                    data: vec![1],
                    writable: false,
                    executable: false,
                },
                Segment {
                    phys: 0x20_3000,
                    mem_size: 0x20_3000,
                    data: vec![1, 2, 3],
                    writable: true,
                    executable: false,
                },
            ],
        };
        for (memory, nx) in [
            (32u64 << 20, true),
            (32 << 20, false),
            ((3 << 30) + (6 << 20), true),
        ] {
            let layout = Layout::plan(memory, &image, 2).unwrap();
            let ours = GuestRam::new(&layout.ram).unwrap();
            let theirs = GuestRam::new(&layout.ram).unwrap();
            let root = build_page_tables(&ours, &layout, &image, nx).unwrap();
            let reference = reference_page_tables(&theirs, &layout, &image, nx);
            assert_eq!(root, reference);
            let len = (layout.boot.end - TABLES_START) as usize;
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            ours.read(TABLES_START, &mut a).unwrap();
            theirs.read(TABLES_START, &mut b).unwrap();
            let used = a.iter().rposition(|&x| x != 0).unwrap_or(0);
            assert!(used > 4 * PAGE as usize, "several tables were built");
            assert!(a == b, "boot tables differ for {memory:#x} bytes, nx {nx}");
            // Spot checks through the walk: direct map, image, absent.
            for virt in [
                DIRECT_MAP_BASE,
                DIRECT_MAP_BASE + layout.ram.last().unwrap().end - 1,
                IMAGE_BASE + 0x20_1000,
            ] {
                assert_eq!(walk(&ours, root, virt), walk(&theirs, root, virt));
                assert!(walk(&ours, root, virt).is_some());
            }
            assert_eq!(walk(&ours, root, IMAGE_BASE + 0x40_6000), None);
            assert_eq!(walk(&ours, root, DIRECT_MAP_BASE + (8 << 30)), None);
        }
    }

    #[test]
    fn too_many_tables_for_the_boot_region() {
        let image = Image {
            entry: IMAGE_BASE + 0x20_0000,
            segments: vec![],
        };
        let layout = Layout::plan(32 << 20, &image, 1).unwrap();
        let ram = GuestRam::new(&layout.ram).unwrap();
        let mut small = layout.clone();
        small.boot.end = TABLES_START + 2 * PAGE;
        assert!(matches!(
            build_page_tables(&ram, &small, &image, true),
            Err(BootError::TablesFull)
        ));
    }
}
