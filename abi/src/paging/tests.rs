//! The walker on plain memory: a vector of page-aligned tables whose index
//! times 4 KiB is the "physical" address. Frame 0 is the root; tables are
//! handed out from frame 1 on, in order, so every value below is exact.

extern crate std;

use super::*;
use std::vec::Vec;

#[repr(C, align(4096))]
struct Page(Table);

struct Phys {
    pages: Vec<Page>,
    next: AtomicU64,
    limit: u64,
    freed: AtomicU64,
}

impl Phys {
    fn new(pages: usize, limit: u64) -> Phys {
        Phys {
            pages: (0..pages)
                .map(|_| Page([const { AtomicU64::new(0) }; ENTRIES]))
                .collect(),
            next: AtomicU64::new(1),
            limit,
            freed: AtomicU64::new(0),
        }
    }
}

impl<'p> TableMemory<'p> for &'p Phys {
    fn table(&self, phys: u64) -> Option<&'p Table> {
        let p: &'p Phys = self;
        if !phys.is_multiple_of(4096) {
            return None;
        }
        p.pages.get((phys / 4096) as usize).map(|page| &page.0)
    }
    fn alloc_table(&self) -> Option<u64> {
        let n = self.next.load(Ordering::SeqCst);
        if n >= self.limit {
            return None;
        }
        self.next.store(n + 1, Ordering::SeqCst);
        Some(n * 4096)
    }
    fn free_table(&self, _phys: u64) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }
}

const P: Flags = Flags::PRESENT;
const W: Flags = Flags::WRITABLE;
const NX: Flags = Flags::NO_EXECUTE;
const A: Flags = Flags::ACCESSED;
const D: Flags = Flags::DIRTY;
const HUGE: Flags = Flags::HUGE_PAGE;
/// Data frames live far above the tables.
const DATA: u64 = 0x4000_0000;
const PAGE: u64 = 0x0000_1000_0000_3000;

fn pt(phys: &Phys) -> PageTables<'_, &Phys> {
    PageTables::new(phys, 0)
}

fn e(addr: u64, flags: Flags) -> Entry {
    Entry::new(addr, flags)
}

#[test]
fn levels_and_entries() {
    assert_eq!(Level::L4.index(PAGE), 0x20);
    assert_eq!(Level::L1.index(PAGE), 3);
    assert_eq!(
        (Level::L1.span(), Level::L2.span(), Level::L3.span()),
        (4096, 2 << 20, 1 << 30)
    );
    assert_eq!(Level::L4.span(), 512 << 30);
    assert_eq!(Level::L2.below(), Some(Level::L1));
    assert_eq!(Level::L1.below(), None);
    let x = e(0x1234_5000, P | W | NX | COW);
    assert_eq!(x.raw(), 0x8000_0000_1234_5403);
    assert_eq!(x.addr(), 0x1234_5000);
    assert!(x.present() && x.has(W | COW) && !x.has(LOCK));
    assert_eq!(x.without(W).raw(), 0x8000_0000_1234_5401);
    assert_eq!((LOCK.bits(), COW.bits()), (1 << 9, 1 << 10));
    assert_eq!(Entry::new(0x1234_5fff, P).raw(), 0x1234_5001);
}

#[test]
fn map_small_walk_and_count() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    let u = t.map(PAGE, DATA, Size::Small, W | NX).unwrap();
    assert_eq!(u.writes, 4, "the leaf plus three new tables");
    assert_eq!((u.old, u.new), (Entry::EMPTY, e(DATA, P | W | NX)));
    let walk = t.walk(PAGE + 0x123).unwrap();
    assert_eq!(
        walk.steps(),
        [
            Step {
                level: Level::L4,
                table: 0,
                entry: e(0x1000, P | W)
            },
            Step {
                level: Level::L3,
                table: 0x1000,
                entry: e(0x2000, P | W)
            },
            Step {
                level: Level::L2,
                table: 0x2000,
                entry: e(0x3000, P | W)
            },
            Step {
                level: Level::L1,
                table: 0x3000,
                entry: e(DATA, P | W | NX)
            },
        ]
    );
    assert_eq!(walk.leaf(), Some((e(DATA, P | W | NX), Some(Size::Small))));
    assert_eq!(walk.at(Level::L2).unwrap().table, 0x2000);
    // A neighbour reuses the tables: one write.
    let u = t.map(PAGE + 4096, DATA + 4096, Size::Small, NX).unwrap();
    assert_eq!(u.writes, 1);
    assert_eq!(t.read(PAGE + 4096, Level::L1), Ok(e(DATA + 4096, P | NX)));
    // Absent: the walk stops at the first non-present entry.
    let walk = t.walk(0x0000_2000_0000_0000).unwrap();
    assert_eq!(walk.steps().len(), 1);
    assert_eq!(walk.leaf(), None);
    assert_eq!(
        t.read(0x0000_2000_0000_0000, Level::L1),
        Err(PagingError::NotMapped)
    );
    // Errors write nothing.
    assert_eq!(
        t.map(PAGE, DATA, Size::Small, W),
        Err(PagingError::AlreadyMapped)
    );
    assert_eq!(
        t.map(PAGE + 1, DATA, Size::Small, W),
        Err(PagingError::UnalignedAddr)
    );
    assert_eq!(
        t.map(PAGE + 0x2000, DATA + 1, Size::Small, W),
        Err(PagingError::UnalignedFrame)
    );
    assert_eq!(
        t.map(0x0000_8000_0000_0000, DATA, Size::Small, W),
        Err(PagingError::UnalignedAddr),
        "not canonical"
    );
    assert_eq!(phys.next.load(Ordering::SeqCst), 4, "three tables in all");
}

#[test]
fn large_pages_and_size_mismatch() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    let big = 0x0000_3000_0020_0000;
    assert_eq!(t.map(big, 2 << 20, Size::Large, W).map(|u| u.writes), Ok(3));
    assert_eq!(t.read(big, Level::L2), Ok(e(2 << 20, P | W | HUGE)));
    assert_eq!(
        t.walk(big + 0x1f_f000).unwrap().leaf(),
        Some((e(2 << 20, P | W | HUGE), Some(Size::Large)))
    );
    assert_eq!(
        t.map(big + 4096, DATA, Size::Small, W),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(
        t.unmap(big + 4096, Size::Small),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(
        t.map(big, 4096, Size::Large, W),
        Err(PagingError::UnalignedFrame)
    );
    assert_eq!(
        t.unmap(big, Size::Large).unwrap().old,
        e(2 << 20, P | W | HUGE)
    );
    // Small pages under a 2 MiB slot: a large map, unmap or protect there is
    // a size mismatch, not a rewrite of the page table's entry.
    t.map(big + 4096, DATA, Size::Small, W).unwrap();
    let before = t.read(big, Level::L2).unwrap();
    assert_eq!(
        t.map(big, 2 << 20, Size::Large, W),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(t.unmap(big, Size::Large), Err(PagingError::SizeMismatch));
    assert_eq!(
        t.protect(big, Size::Large, NX),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(
        t.unmap(big + 0x20_0000, Size::Large),
        Err(PagingError::NotMapped)
    );
    assert_eq!(t.read(big, Level::L2), Ok(before));
}

#[test]
fn map_never_modifies_a_write_protected_parent() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    // Write-protect the 1 GiB subtree (the level-3 entry) and the 512 GiB one.
    for level in [Level::L3, Level::L4] {
        let old = t.read(PAGE, level).unwrap();
        let ro = old.without(Flags::WRITABLE);
        assert_eq!(t.replace(PAGE, level, old, ro).unwrap().writes, 1);
    }
    let l4 = t.read(PAGE, Level::L4).unwrap();
    let l3 = t.read(PAGE, Level::L3).unwrap();
    let l2 = t.read(PAGE, Level::L2).unwrap();
    assert_eq!((l4, l3), (e(0x1000, P), e(0x2000, P)));
    // A neighbour (existing page table), a page in a new 2 MiB region (new
    // page table under the protected directory) and a large page there.
    assert_eq!(t.map(PAGE + 4096, DATA, Size::Small, W).unwrap().writes, 1);
    assert_eq!(
        t.map(PAGE + (4 << 20), DATA, Size::Small, W)
            .unwrap()
            .writes,
        2
    );
    assert_eq!(
        t.map(PAGE - 0x3000 + (8 << 20), 2 << 20, Size::Large, W)
            .unwrap()
            .writes,
        1
    );
    assert_eq!(t.read(PAGE, Level::L4), Ok(l4), "level 4 still read-only");
    assert_eq!(t.read(PAGE, Level::L3), Ok(l3), "level 3 still read-only");
    assert_eq!(t.read(PAGE, Level::L2), Ok(l2));
    // The new page table got the permissive parent flags; its parent (the
    // protected directory's entry) decides nothing above it.
    assert_eq!(
        t.read(PAGE + (4 << 20), Level::L2),
        Ok(e(0x4000, PARENT_FLAGS))
    );
}

#[test]
fn unmap_returns_the_entry_with_its_access_bits() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W | NX).unwrap();
    // The CPU sets accessed and dirty.
    t.leaf(PAGE)
        .unwrap()
        .fetch_or((A | D).bits(), Ordering::SeqCst);
    let u = t.unmap(PAGE, Size::Small).unwrap();
    assert_eq!(
        u,
        Update {
            old: e(DATA, P | W | NX | A | D),
            new: Entry::EMPTY,
            writes: 1
        }
    );
    assert_eq!(t.leaf(PAGE).unwrap().load(Ordering::SeqCst), 0);
    assert_eq!(t.unmap(PAGE, Size::Small), Err(PagingError::NotMapped));
    assert_eq!(
        t.unmap(0x0000_2000_0000_0000, Size::Small),
        Err(PagingError::NotMapped)
    );
    assert_eq!(
        t.unmap(PAGE + 8, Size::Small),
        Err(PagingError::UnalignedAddr)
    );
}

#[test]
fn protect_keeps_frame_dirty_and_software_bits() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W | NX | COW).unwrap();
    t.leaf(PAGE).unwrap().fetch_or(D.bits(), Ordering::SeqCst);
    let u = t.protect(PAGE, Size::Small, NX).unwrap();
    assert_eq!(u.old, e(DATA, P | W | NX | COW | D));
    assert_eq!(u.new, e(DATA, P | NX | COW | D));
    assert_eq!(u.writes, 1);
    let u = t.protect(PAGE, Size::Small, W).unwrap();
    assert_eq!(u.new, e(DATA, P | W | COW | D), "NX replaced too");
    // Bits outside PERMISSIONS in `perm` are ignored.
    let u = t.protect(PAGE, Size::Small, W | NX | HUGE | P).unwrap();
    assert_eq!(u.new, e(DATA, P | W | NX | COW | D));
    assert_eq!(
        t.protect(PAGE + 4096, Size::Small, W),
        Err(PagingError::NotMapped)
    );
}

#[test]
fn a_dirty_bit_set_during_an_update_is_kept() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    let slot = t.leaf(PAGE).unwrap();
    // The CPU sets the dirty bit between the read and the write: the swap
    // fails and the change is made again on the new value.
    let mut calls = 0;
    let u = t
        .update(PAGE, Size::Small, |old| {
            calls += 1;
            if calls == 1 {
                slot.fetch_or((A | D).bits(), Ordering::SeqCst);
            }
            Some(old.without(W))
        })
        .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(u.old, e(DATA, P | W | A | D));
    assert_eq!(u.new, e(DATA, P | A | D));
    assert_eq!(u.writes, 1, "the failed swap wrote nothing");
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA, P | A | D)));
}

#[test]
fn protect_races_a_writer_setting_dirty() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    let slot = t.leaf(PAGE).unwrap();
    for round in 0..200 {
        slot.fetch_and(!(A | D).bits(), Ordering::SeqCst);
        let go = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while go.load(Ordering::SeqCst) == 0 {}
                for _ in 0..round % 7 {
                    core::hint::spin_loop();
                }
                slot.fetch_or(D.bits(), Ordering::SeqCst);
            });
            go.store(1, Ordering::SeqCst);
            for i in 0..50 {
                let perm = if i % 2 == 0 { NX } else { W };
                t.protect(PAGE, Size::Small, perm).unwrap();
            }
        });
        assert!(
            t.read(PAGE, Level::L1).unwrap().has(D),
            "round {round}: dirty lost"
        );
    }
}

#[test]
fn clear_bits_reports_and_counts() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    t.leaf(PAGE)
        .unwrap()
        .fetch_or((A | D).bits(), Ordering::SeqCst);
    let u = t.clear_bits(PAGE, Size::Small, A).unwrap();
    assert_eq!(
        (u.old, u.new, u.writes),
        (e(DATA, P | W | A | D), e(DATA, P | W | D), 1)
    );
    let u = t.clear_bits(PAGE, Size::Small, A).unwrap();
    assert_eq!(
        (u.old, u.new, u.writes),
        (e(DATA, P | W | D), e(DATA, P | W | D), 0)
    );
    let u = t.clear_bits(PAGE, Size::Small, A | D).unwrap();
    assert_eq!((u.new, u.writes), (e(DATA, P | W), 1));
}

#[test]
fn populate_then_leaf_without_allocation() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    let base = 0x0000_4000_0000_0000;
    // Three 2 MiB regions: a directory pointer table, a directory, three
    // page tables.
    assert_eq!(t.populate(base, base + (4 << 20) + 4096), Ok(5));
    assert_eq!(t.populate(base, base + (4 << 20) + 4096), Ok(0));
    for page in [base, base + 0x1f_f000, base + (2 << 20), base + (4 << 20)] {
        let slot = t.leaf(page).expect("populated");
        assert_eq!(slot.load(Ordering::SeqCst), 0);
    }
    assert!(t.leaf(base + (6 << 20)).is_none());
    assert_eq!(phys.next.load(Ordering::SeqCst), 6);
    // A leaf written through the slot is what the walk sees, and a map there
    // writes only the leaf.
    t.leaf(base)
        .unwrap()
        .store(e(DATA, P | W).raw(), Ordering::SeqCst);
    assert_eq!(
        t.walk(base).unwrap().leaf(),
        Some((e(DATA, P | W), Some(Size::Small)))
    );
    assert_eq!(t.map(base + 4096, DATA, Size::Small, W).unwrap().writes, 1);
    // A large page in the range is a size mismatch.
    t.map(base + (8 << 20), 2 << 20, Size::Large, W).unwrap();
    assert_eq!(
        t.populate(base + (8 << 20), base + (9 << 20)),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(
        t.populate(base + 8, base + 4096),
        Err(PagingError::UnalignedAddr)
    );
}

#[test]
fn entry_lock_bit() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    let slot = t.leaf(PAGE).unwrap();
    assert_eq!(try_lock(slot), Ok(e(DATA, P | W)));
    assert_eq!(try_lock(slot), Err(e(DATA, P | W | LOCK)));
    assert_eq!(t.unmap(PAGE, Size::Small), Err(PagingError::Locked));
    assert_eq!(t.protect(PAGE, Size::Small, NX), Err(PagingError::Locked));
    assert_eq!(t.clear_bits(PAGE, Size::Small, A), Err(PagingError::Locked));
    // The holder installs a new frame and unlocks in one store.
    unlock(slot, e(DATA + 4096, P | W | LOCK));
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA + 4096, P | W)));
    // A non-present locked entry: map refuses it until it is unlocked.
    assert_eq!(t.unmap(PAGE, Size::Small).unwrap().writes, 1);
    assert_eq!(try_lock(slot), Ok(Entry::EMPTY));
    assert_eq!(t.map(PAGE, DATA, Size::Small, W), Err(PagingError::Locked));
    // Unlock keeping what the hardware set meanwhile.
    slot.store(e(DATA, P | W | LOCK).raw(), Ordering::SeqCst);
    slot.fetch_or(D.bits(), Ordering::SeqCst);
    assert_eq!(unlock_keeping(slot), e(DATA, P | W | D));
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA, P | W | D)));
}

#[test]
fn share_a_subtree_between_two_roots() {
    let phys = Phys::new(16, 16);
    let main = pt(&phys);
    main.map(PAGE, DATA, Size::Small, W).unwrap(); // tables 1, 2, 3
    let snap = PageTables::create(&phys).unwrap(); // root 4
    assert_eq!(snap.root(), 0x4000);
    let pdpt = main.read(PAGE, Level::L4).unwrap().addr();
    let region = PAGE & !(Level::L4.span() - 1);
    // Read-only at the top: everything below is read-only through `snap`.
    let u = snap.share(region, Level::L4, pdpt, Flags::empty()).unwrap();
    assert_eq!((u.old, u.new, u.writes), (Entry::EMPTY, e(pdpt, P), 1));
    assert_eq!(
        snap.walk(PAGE).unwrap().leaf(),
        Some((e(DATA, P | W), Some(Size::Small)))
    );
    assert_eq!(
        snap.share(region, Level::L4, pdpt, W),
        Err(PagingError::AlreadyMapped)
    );
    assert_eq!(
        snap.share(region + 4096, Level::L4, pdpt, W),
        Err(PagingError::UnalignedAddr)
    );
    // Sharing at level 2 creates the tables above it.
    let pt_table = main.read(PAGE, Level::L2).unwrap().addr();
    let other = 0x0000_5000_0000_0000;
    let u = snap.share(other, Level::L2, pt_table, W).unwrap();
    assert_eq!(u.writes, 3, "two new tables and the entry");
    assert_eq!(
        snap.read(other + 0x3000, Level::L1),
        Ok(e(DATA, P | W)),
        "the shared page table's entries"
    );
}

#[test]
fn replace_is_a_compare_and_swap() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    assert_eq!(
        t.replace(PAGE, Level::L1, e(DATA, P), e(DATA, P | NX)),
        Err(PagingError::Changed)
    );
    let u = t
        .replace(PAGE, Level::L1, e(DATA, P | W), e(DATA + 4096, P))
        .unwrap();
    assert_eq!(u.writes, 1);
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA + 4096, P)));
    let l4 = t.read(PAGE, Level::L4).unwrap();
    assert_eq!(
        t.replace(PAGE, Level::L4, l4, l4.without(W)).map(|u| u.new),
        Ok(e(0x1000, P))
    );
}

#[test]
fn visit_children_before_parents() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    let base = 0x0000_6000_0000_0000;
    t.map(base, DATA, Size::Small, W).unwrap(); // 1: PDPT, 2: PD, 3: PT
    t.map(base + (2 << 20), DATA, Size::Small, W).unwrap(); // 4: PT
    t.map(base + (4 << 20), 2 << 20, Size::Large, W).unwrap(); // leaf in PD
    t.map(0xffff_ff80_0000_0000, DATA, Size::Small, W).unwrap(); // 5, 6, 7
    let mut seen = Vec::new();
    t.visit(base, base + (6 << 20), |v| seen.push(*v)).unwrap();
    let v = |level, table: u64, base: u64, whole| Visit {
        level,
        table,
        base,
        parent: e(table, PARENT_FLAGS),
        whole,
    };
    assert_eq!(
        seen,
        [
            v(Level::L1, 0x3000, base, true),
            v(Level::L1, 0x4000, base + (2 << 20), true),
            v(Level::L2, 0x2000, base, false),
            v(Level::L3, 0x1000, base, false),
        ]
    );
    // The upper half is addressed with its sign extension.
    seen.clear();
    t.visit(0xffff_ff80_0000_0000, u64::MAX, |v| seen.push(*v))
        .unwrap();
    assert_eq!(
        seen.iter()
            .map(|v| (v.level, v.table, v.base))
            .collect::<Vec<_>>(),
        [
            (Level::L1, 0x7000, 0xffff_ff80_0000_0000),
            (Level::L2, 0x6000, 0xffff_ff80_0000_0000),
            (Level::L3, 0x5000, 0xffff_ff80_0000_0000),
        ]
    );
}

#[test]
fn out_of_tables_counts_what_was_linked() {
    let phys = Phys::new(16, 3); // tables 1 and 2 only
    let t = pt(&phys);
    assert_eq!(
        t.map(PAGE, DATA, Size::Small, W),
        Err(PagingError::OutOfTables { writes: 2 })
    );
    assert_eq!(t.read(PAGE, Level::L2), Ok(Entry::EMPTY));
    assert_eq!(
        t.populate(PAGE, PAGE + 4096),
        Err(PagingError::OutOfTables { writes: 0 })
    );
}

#[test]
fn a_table_outside_memory_is_refused() {
    let phys = Phys::new(4, 4);
    let t = pt(&phys);
    phys.pages[0].0[0].store(e(0x10_0000, P | W).raw(), Ordering::SeqCst);
    assert_eq!(t.walk(0x1000), Err(PagingError::BadTable(0x10_0000)));
    assert_eq!(
        t.map(0x1000, DATA, Size::Small, W),
        Err(PagingError::BadTable(0x10_0000))
    );
    assert_eq!(
        t.visit(0, 1 << 30, |_| {}),
        Err(PagingError::BadTable(0x10_0000))
    );
}

#[test]
fn prepare_duplicate_and_update_entries() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    // Tables down to the level-2 table holding PAGE's entry: PDPT and PD.
    assert_eq!(t.prepare(PAGE, Level::L2), Ok(2));
    assert_eq!(t.prepare(PAGE, Level::L2), Ok(0));
    t.map(PAGE, DATA, Size::Small, W).unwrap();
    t.map(PAGE + 4096, DATA + 4096, Size::Small, NX).unwrap();
    let pt_table = t.read(PAGE, Level::L2).unwrap().addr();
    // A copy with COW set and W cleared in every present entry; unlinked.
    let (copy, writes) = t.duplicate(pt_table, |e| e.without(W).with(COW)).unwrap();
    assert_eq!(writes, 2);
    assert_eq!(copy, 0x4000);
    assert_eq!(
        phys.pages[4].0[3].load(Ordering::SeqCst),
        e(DATA, P | COW).raw()
    );
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA, P | W)));
    // In place: only the writable entry changes.
    let n = t
        .update_entries(pt_table, |_, e| e.has(W).then(|| e.without(W)))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(t.read(PAGE, Level::L1), Ok(e(DATA, P)));
    assert_eq!(t.read(PAGE + 4096, Level::L1), Ok(e(DATA + 4096, P | NX)));
}

#[test]
fn remap_exchanges_any_entry_and_returns_the_old_one() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    // No tables yet: the lock-free path refuses and writes nothing.
    assert_eq!(
        t.remap(PAGE, DATA, Size::Small, W | NX, false),
        Err(PagingError::NotMapped)
    );
    assert_eq!(phys.next.load(Ordering::SeqCst), 1);
    // Creating: three tables and the leaf; the old entry was empty.
    let u = t.remap(PAGE, DATA, Size::Small, W | NX, true).unwrap();
    assert_eq!(
        u,
        Update {
            old: Entry::EMPTY,
            new: e(DATA, P | W | NX),
            writes: 4
        }
    );
    // The CPU sets accessed and dirty; the exchange returns them.
    t.leaf(PAGE)
        .unwrap()
        .fetch_or((A | D).bits(), Ordering::SeqCst);
    let u = t
        .remap(PAGE, DATA + 0x1000, Size::Small, NX, false)
        .unwrap();
    assert_eq!(
        u,
        Update {
            old: e(DATA, P | W | NX | A | D),
            new: e(DATA + 0x1000, P | NX),
            writes: 1
        }
    );
    assert_eq!(
        t.leaf(PAGE).unwrap().load(Ordering::SeqCst),
        e(DATA + 0x1000, P | NX).0
    );
    // A locked entry is refused.
    let slot = t.leaf(PAGE).unwrap();
    let before = try_lock(slot).unwrap();
    assert_eq!(
        t.remap(PAGE, DATA, Size::Small, W, false),
        Err(PagingError::Locked)
    );
    unlock(slot, before);
    // Sizes and alignment.
    assert_eq!(
        t.remap(PAGE & !0x1f_ffff, DATA, Size::Large, W, true),
        Err(PagingError::SizeMismatch)
    );
    assert_eq!(
        t.remap(PAGE + 8, DATA, Size::Small, W, true),
        Err(PagingError::UnalignedAddr)
    );
    assert_eq!(
        t.remap(PAGE, DATA + 8, Size::Small, W, true),
        Err(PagingError::UnalignedFrame)
    );
}

#[cfg(feature = "views")]
#[test]
fn a_view_translates_its_private_range_late() {
    let phys = Phys::new(16, 16);
    let real = pt(&phys);
    const MIB2: u64 = 2 << 20;
    let private = (PAGE & !(MIB2 - 1))..(PAGE & !(MIB2 - 1)) + MIB2;
    // Real tables: PDPT 1, PD 2, PT 3 for PAGE; PT 4 for a page 4 MiB on
    // (same PD, outside the private range); PDPT 5, PD 6, PT 7 for a page
    // under another level-4 entry.
    let other = PAGE + (4 << 20);
    let far = 0x0000_2000_0000_0000;
    real.map(PAGE, DATA, Size::Small, W | NX).unwrap();
    real.map(other, DATA + 0x1000, Size::Small, W | NX).unwrap();
    real.map(far, DATA + 0x2000, Size::Small, W | NX).unwrap();
    let view = PageTables::create(&phys).unwrap();
    assert_eq!(view.root(), 0x8000);
    // Private PDPT 9, PD 10, PT 11; everything else is a copied entry.
    assert_eq!(view.sync_view(0, &private, &(0..u64::MAX)), Ok(6));
    assert_eq!(
        (
            view.read(PAGE, Level::L4).unwrap().addr(),
            view.read(PAGE, Level::L3).unwrap().addr(),
            view.read(PAGE, Level::L2).unwrap().addr(),
        ),
        (0x9000, 0xa000, 0xb000),
        "private tables down to the range's page table"
    );
    assert_eq!(view.read(other, Level::L2), Ok(e(0x4000, P | W)), "shared");
    assert_eq!(view.read(far, Level::L4), Ok(e(0x5000, P | W)), "shared");
    // The real tables change: the view keeps the old translation in its
    // range, and sees changes outside it (shared tables).
    real.unmap(PAGE, Size::Small).unwrap();
    real.map(PAGE, DATA + 0x5000, Size::Small, W | NX).unwrap();
    real.map(PAGE + 0x1000, DATA + 0x6000, Size::Small, W | NX)
        .unwrap();
    real.protect(other, Size::Small, NX).unwrap();
    let leaf = |a| view.walk(a).unwrap().leaf().map(|(e, _)| e);
    assert_eq!(leaf(PAGE), Some(e(DATA, P | W | NX)), "stale");
    assert_eq!(leaf(PAGE + 0x1000), None, "not seen yet");
    assert_eq!(leaf(other), Some(e(DATA + 0x1000, P | NX)), "live");
    // Synchronising one page repairs that page only.
    assert_eq!(view.sync_view(0, &private, &(PAGE..PAGE + 1)), Ok(1));
    assert_eq!(leaf(PAGE), Some(e(DATA + 0x5000, P | W | NX)));
    assert_eq!(leaf(PAGE + 0x1000), None);
    assert_eq!(view.sync_view(0, &private, &(0..u64::MAX)), Ok(1));
    assert_eq!(leaf(PAGE + 0x1000), Some(e(DATA + 0x6000, P | W | NX)));
    assert_eq!(
        view.sync_view(0, &private, &(0..u64::MAX)),
        Ok(0),
        "in sync"
    );
    assert_eq!(phys.next.load(Ordering::SeqCst), 12, "4 view tables");
    // A source table that goes away takes its private copy with it.
    phys.pages[2].0[0].store(0, Ordering::SeqCst);
    assert_eq!(view.sync_view(0, &private, &(PAGE..PAGE + 1)), Ok(1));
    assert_eq!(phys.freed.load(Ordering::SeqCst), 1);
    assert_eq!(leaf(PAGE), None);
    assert_eq!(view.release_view(&private), Ok(3));
    assert_eq!(phys.freed.load(Ordering::SeqCst), 4, "every view table");
}

#[cfg(feature = "views")]
#[test]
fn a_view_out_of_tables_stays_consistent() {
    let phys = Phys::new(16, 7); // root 4, then tables 5 and 6 only
    let real = pt(&phys);
    real.map(PAGE, DATA, Size::Small, W).unwrap();
    let view = PageTables::create(&phys).unwrap();
    let private = PAGE..PAGE + 0x1000;
    assert_eq!(
        view.sync_view(0, &private, &(0..u64::MAX)),
        Err(PagingError::OutOfTables { writes: 0 })
    );
    assert_eq!(view.read(PAGE, Level::L4), Ok(Entry::EMPTY));
    assert_eq!(phys.freed.load(Ordering::SeqCst), 2, "the unlinked copies");
    assert_eq!(view.release_view(&private), Ok(1));
}

#[test]
fn clear_range_takes_leaves_and_frees_only_unshared_empty_tables() {
    let phys = Phys::new(16, 16);
    let t = pt(&phys);
    let base = 0x0000_6000_0000_0000;
    t.map(base, DATA, Size::Small, W).unwrap(); // 1: PDPT, 2: PD, 3: PT
    t.map(base + 0x1000, DATA + 0x1000, Size::Small, W).unwrap();
    t.map(base + (4 << 20), 2 << 20, Size::Large, W).unwrap(); // leaf in PD
                                                               // Another "window" in the same PD, 8 MiB on: its PT (4) stays, and so
                                                               // do the PD and PDPT above it.
    t.map(base + (8 << 20), DATA, Size::Small, W).unwrap();
    let mut leaves = Vec::new();
    let mut tables = Vec::new();
    let window = base..base + (6 << 20);
    let other = base + (8 << 20)..base + (10 << 20);
    let may_free = |lo: u64, hi: u64| hi < other.start || lo >= other.end;
    let c = t
        .clear_range(
            window.start,
            window.end,
            &may_free,
            &mut |a, e, s| leaves.push((a, e.addr(), s)),
            &mut |tb| tables.push(tb),
        )
        .unwrap();
    assert_eq!(
        leaves,
        [
            (base, DATA, Size::Small),
            (base + 0x1000, DATA + 0x1000, Size::Small),
            (base + (4 << 20), 2 << 20, Size::Large),
        ]
    );
    assert_eq!(tables, [0x3000]);
    assert_eq!(
        c,
        Cleared {
            leaves: 3,
            tables: 1,
            writes: 4
        }
    );
    assert_eq!(t.read(base, Level::L1), Err(PagingError::NotMapped));
    assert!(t.read(base + (8 << 20), Level::L1).unwrap().present());
    // Now the other window goes too: every table is empty and unshared.
    tables.clear();
    let c = t
        .clear_range(
            other.start,
            other.end,
            &|_, _| true,
            &mut |_, _, _| {},
            &mut |tb| tables.push(tb),
        )
        .unwrap();
    assert_eq!(tables, [0x4000, 0x2000, 0x1000]);
    assert_eq!((c.leaves, c.tables, c.writes), (1, 3, 4));
    assert_eq!(t.read(base, Level::L4).unwrap(), Entry::EMPTY);
    // Nothing left: a second clear writes nothing.
    let c = t
        .clear_range(
            base,
            base + (16 << 20),
            &|_, _| true,
            &mut |_, _, _| {},
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(c, Cleared::default());
}
