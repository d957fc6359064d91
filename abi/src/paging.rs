//! The page-table walker: x86-64 four-level tables, edited atomically, used by
//! the VMM (to build the boot tables in guest RAM) and by the guest (to edit
//! its live tables through the direct map). One walker, two memories, as
//! Hyperlight's `hyperlight_common::vmem` does for its host and guest.
//!
//! # Memory
//!
//! Tables are reached through a [`TableMemory`]: given a table's physical
//! address it returns the table's 512 entries as [`AtomicU64`]s, and it hands
//! out zeroed tables. The VMM implements it over guest RAM (every table
//! address is bounds-checked there: an entry pointing outside guest RAM is
//! [`PagingError::BadTable`], never a host access); the guest over its direct
//! map; host tests over a page-aligned buffer.
//!
//! # Atomicity
//!
//! Every entry is read and written atomically (`load`/`store`/`swap`/
//! `compare_exchange`), never through a plain reference, because others
//! write the same entries concurrently: the CPU's page walker sets the
//! accessed and dirty bits of entries it uses (a locked read-modify-write),
//! and other CPUs update leaf entries without a lock (see *Who writes what*).
//! A leaf edit that must keep what the hardware set (protect, clearing the
//! accessed bit) is a compare-and-swap loop over the whole entry, so a dirty
//! bit set between the read and the write makes the swap fail and the edit
//! is retried on the new value: **the dirty bit is never lost**. `unmap`
//! takes the entry away with one compare-and-swap and returns the value it
//! replaced, so the accessed/dirty state it reports is the state at the
//! moment the translation disappeared (the CPU cannot set a bit in an entry
//! that is no longer present).
//!
//! # Who writes what, and why lock-free leaf updates are safe
//!
//! - **Structural edits** (creating a table, [`share`](PageTables::share),
//!   [`duplicate`](PageTables::duplicate) and linking the copy, clearing the
//!   write bit of a non-leaf entry, freeing tables after
//!   [`visit`](PageTables::visit)) are made
//!   by one writer at a time: the caller serialises them (the guest holds one
//!   global lock, the VMM builds the tables before any vCPU runs). Creating a
//!   table is nevertheless a compare-and-swap from the empty entry, with
//!   release ordering, so a lock-free walker sees either no table or a zeroed
//!   one, never a table before its zeroing.
//! - **Leaf edits** ([`map`](PageTables::map) of a slot whose tables exist,
//!   [`unmap`](PageTables::unmap), [`update`](PageTables::update),
//!   [`protect`](PageTables::protect), [`clear_bits`](PageTables::clear_bits),
//!   the [`LOCK`] bit) may run on any CPU without the structural lock: each is
//!   a compare-and-swap on one entry, so two of them on one entry serialise
//!   on that entry.
//! - A lock-free leaf edit is safe against structural edits because of one
//!   invariant the callers keep: **a table reachable from a live window is
//!   never freed, and a present non-leaf entry above a window whose leaves
//!   are edited lock-free is never re-pointed** while the window lives (tables
//!   are only added). Then a leaf slot found by a walk (for example through
//!   [`leaf`](PageTables::leaf) after [`populate`](PageTables::populate)) stays
//!   the one the hardware uses, and a write to it is never lost in a table
//!   that was copied away. Windows whose tables are shared or copied (Snappy)
//!   must instead edit their leaves under the structural lock, or re-walk
//!   after every structural edit.
//! - `map` **never modifies an existing parent entry**: missing tables are
//!   created with [`PARENT_FLAGS`] (present, writable; the leaf decides the
//!   access), but a present parent is left exactly as it is, so a subtree
//!   whose parent was write-protected stays write-protected below a new
//!   mapping.
//!
//! # Counting
//!
//! Every operation reports how many entries it wrote (`writes`), so the
//! caller keeps an exact count of page-table writes: a created table costs one
//! write (its parent entry), a copied table one write per non-empty entry
//! copied plus one for its parent; a compare-and-swap that fails and is
//! retried counts once, when it succeeds. Reads, walks and the visitor write
//! nothing.
//!
//! # TLB
//!
//! Nothing here touches the TLB: the caller invalidates after a present
//! entry changed (x86 does not cache non-present entries, so creating a
//! mapping needs no invalidation).

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

/// Entry flags (the `x86_64` crate's type, so both sides name bits the same way).
pub use x86_64::structures::paging::PageTableFlags as Flags;

/// Entries per table.
pub const ENTRIES: usize = 512;

/// A page-table page: 512 entries, each read and written atomically.
pub type Table = [AtomicU64; ENTRIES];

/// The physical-address bits of an entry (bits 12..52).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Flags of a table created by the walker: present and writable. The leaf
/// (and any parent someone write-protected on purpose) decides the access;
/// `NO_EXECUTE` is left to the leaf as well.
pub const PARENT_FLAGS: Flags = Flags::PRESENT.union(Flags::WRITABLE);

/// The bits [`PageTables::protect`] replaces; every other bit (frame,
/// accessed, dirty, software bits) is kept.
pub const PERMISSIONS: Flags = Flags::WRITABLE
    .union(Flags::USER_ACCESSIBLE)
    .union(Flags::NO_EXECUTE);

/// Software bit 9: the entry is locked by one CPU ([`try_lock`]/[`unlock`]).
/// The hardware ignores it. Leaf operations refuse a locked entry
/// ([`PagingError::Locked`]); the holder writes the entry with [`unlock`].
pub const LOCK: Flags = Flags::BIT_9;

/// Software bit 10: copy on write (for snapshots). The hardware ignores it;
/// the walker keeps it like any other bit and never sets it itself.
pub const COW: Flags = Flags::BIT_10;

/// A page-table entry's value.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Entry(pub u64);

impl Entry {
    /// The empty (non-present) entry.
    pub const EMPTY: Entry = Entry(0);

    /// An entry pointing at physical `addr` (its low 12 bits are dropped)
    /// with `flags`.
    pub const fn new(addr: u64, flags: Flags) -> Entry {
        Entry((addr & ADDR_MASK) | flags.bits())
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The physical address it points at (a frame or a table).
    pub const fn addr(self) -> u64 {
        self.0 & ADDR_MASK
    }

    /// Its flags (the address bits dropped).
    pub const fn flags(self) -> Flags {
        Flags::from_bits_truncate(self.0)
    }

    /// Whether every flag in `f` is set.
    pub const fn has(self, f: Flags) -> bool {
        self.0 & f.bits() == f.bits()
    }

    pub const fn present(self) -> bool {
        self.has(Flags::PRESENT)
    }

    /// The same entry with `f` set.
    pub const fn with(self, f: Flags) -> Entry {
        Entry(self.0 | f.bits())
    }

    /// The same entry with `f` cleared.
    pub const fn without(self, f: Flags) -> Entry {
        Entry(self.0 & !f.bits())
    }
}

impl core::fmt::Debug for Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Entry({:#x}, {:?})", self.addr(), self.flags())
    }
}

/// A level of the tables: the level of the entries a table holds. Level 4
/// entries (the root, PML4) each cover 512 GiB, level 3 1 GiB, level 2
/// 2 MiB, level 1 4 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    L1 = 1,
    L2 = 2,
    L3 = 3,
    L4 = 4,
}

impl Level {
    /// The index of `addr`'s entry in a table of this level.
    pub const fn index(self, addr: u64) -> usize {
        ((addr >> (12 + 9 * (self as u32 - 1))) & 0x1ff) as usize
    }

    /// Bytes of address space one entry of this level covers.
    pub const fn span(self) -> u64 {
        1 << (12 + 9 * (self as u32 - 1))
    }

    /// The level below (`None` for level 1).
    pub const fn below(self) -> Option<Level> {
        match self {
            Level::L4 => Some(Level::L3),
            Level::L3 => Some(Level::L2),
            Level::L2 => Some(Level::L1),
            Level::L1 => None,
        }
    }
}

/// The size of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 4 KiB, a level-1 entry.
    Small,
    /// 2 MiB, a level-2 entry with `HUGE_PAGE`.
    Large,
}

impl Size {
    /// The level of its entry.
    pub const fn level(self) -> Level {
        match self {
            Size::Small => Level::L1,
            Size::Large => Level::L2,
        }
    }

    pub const fn bytes(self) -> u64 {
        self.level().span()
    }
}

/// Why a walker operation failed. Nothing was written when it fails, except
/// the tables a `map`, `share` or `populate` created before running out of
/// memory ([`PagingError::OutOfTables`] counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// The virtual address is not aligned to the size or level, or not
    /// canonical.
    UnalignedAddr,
    /// The frame or table address is not aligned to the size.
    UnalignedFrame,
    /// No present entry there (or a table above it is missing).
    NotMapped,
    /// The entry is already present.
    AlreadyMapped,
    /// A leaf of another size is in the way: a large mapping above a small
    /// page, or a table where a large leaf was expected.
    SizeMismatch,
    /// The entry's [`LOCK`] bit is set.
    Locked,
    /// The entry changed under a compare-and-swap the caller asked for with
    /// an expected value ([`PageTables::replace`]).
    Changed,
    /// `alloc_table` returned `None`. Tables created earlier in the same
    /// call stay linked (empty, harmless); `writes` counts their entries, so
    /// a caller's count stays exact on this path too.
    OutOfTables { writes: u64 },
    /// The memory refused this table address (VMM: outside guest RAM).
    BadTable(u64),
}

/// Where tables live, and where new ones come from.
///
/// `'a` is how long a table reference stays valid: `'static` for the guest's
/// direct map, the borrow of guest RAM for the VMM.
pub trait TableMemory<'a> {
    /// The entries of the table at physical address `phys` (4 KiB aligned),
    /// or `None` if this memory cannot reach it.
    fn table(&self, phys: u64) -> Option<&'a Table>;

    /// The physical address of a new, zeroed table, or `None` when out of
    /// memory.
    fn alloc_table(&self) -> Option<u64>;

    /// Returns a table from [`alloc_table`](Self::alloc_table) that was never
    /// linked (a lost race) or that the caller unlinked. Default: leak it.
    fn free_table(&self, _phys: u64) {}
}

/// One level of a [`Walk`]: the table, and the entry for the address in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub level: Level,
    /// Physical address of the table holding the entry.
    pub table: u64,
    pub entry: Entry,
}

/// The entries the hardware would use for an address, from level 4 down to
/// the first entry that is not present or is a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    steps: [Step; 4],
    len: usize,
}

impl Walk {
    /// The steps, level 4 first (at least one).
    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len]
    }

    /// The step at `level`, if the walk got there.
    pub fn at(&self, level: Level) -> Option<Step> {
        self.steps().iter().copied().find(|s| s.level == level)
    }

    /// The last step: a non-present entry or a leaf.
    pub fn last(&self) -> Step {
        self.steps[self.len - 1]
    }

    /// The leaf mapping the address, if any: its entry and size (a 1 GiB
    /// leaf is reported with `None` size: the walker never creates one).
    pub fn leaf(&self) -> Option<(Entry, Option<Size>)> {
        let s = self.last();
        if !s.entry.present() {
            return None;
        }
        match s.level {
            Level::L1 => Some((s.entry, Some(Size::Small))),
            Level::L2 => Some((s.entry, Some(Size::Large))),
            _ => Some((s.entry, None)),
        }
    }
}

/// What a write to one entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    /// The entry before.
    pub old: Entry,
    /// The entry after.
    pub new: Entry,
    /// Entries written (this entry, plus tables created on the way).
    pub writes: u64,
}

/// One table reached by [`PageTables::visit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visit {
    /// The level of the entries in this table (1: a page table).
    pub level: Level,
    /// Its physical address.
    pub table: u64,
    /// The first virtual address its entries cover.
    pub base: u64,
    /// The entry that points at it (in the table one level up).
    pub parent: Entry,
    /// Whether all the address space it covers lies inside the visited range
    /// (only then may a reclaimer free it as a whole).
    pub whole: bool,
}

/// A set of four-level tables: a root and the memory the tables live in.
pub struct PageTables<'a, M: TableMemory<'a>> {
    mem: M,
    root: u64,
    _tables: PhantomData<&'a Table>,
}

/// The leaf entry mapping `addr` to `frame` with `flags` (plus `PRESENT`,
/// and `HUGE_PAGE` for a large page), once both are checked: a canonical
/// address and a frame inside the physical address mask, each aligned to
/// `size`.
fn leaf_entry(addr: u64, frame: u64, size: Size, flags: Flags) -> Result<Entry, PagingError> {
    if !canonical(addr) || !addr.is_multiple_of(size.bytes()) {
        return Err(PagingError::UnalignedAddr);
    }
    if !frame.is_multiple_of(size.bytes()) || frame & !ADDR_MASK != 0 {
        return Err(PagingError::UnalignedFrame);
    }
    let leaf_flags = match size {
        Size::Small => flags | Flags::PRESENT,
        Size::Large => flags | Flags::PRESENT | Flags::HUGE_PAGE,
    };
    Ok(Entry::new(frame, leaf_flags))
}

/// Whether `addr` is canonical (bits 48..64 copy bit 47).
const fn canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

fn load(slot: &AtomicU64) -> Entry {
    Entry(slot.load(Ordering::Acquire))
}

/// Compare-and-swap of one entry; `Err` with the value found.
fn cas(slot: &AtomicU64, old: Entry, new: Entry) -> Result<(), Entry> {
    slot.compare_exchange(old.0, new.0, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| ())
        .map_err(Entry)
}

/// Sets [`LOCK`] on the entry in `slot` if it is not set: `Ok` with the
/// value before (one entry written), `Err` with the value found when another
/// holder has it (nothing written). The holder may then rewrite the entry
/// (with [`unlock`]); leaf operations of the walker refuse it meanwhile.
pub fn try_lock(slot: &AtomicU64) -> Result<Entry, Entry> {
    let mut v = load(slot);
    loop {
        if v.has(LOCK) {
            return Err(v);
        }
        match cas(slot, v, v.with(LOCK)) {
            Ok(()) => return Ok(v),
            Err(now) => v = now,
        }
    }
}

/// Stores `new` (with [`LOCK`] cleared) into a slot the caller locked with
/// [`try_lock`]: one entry written. Only the holder writes a locked entry
/// (the hardware sets accessed/dirty bits only in present entries it uses;
/// a holder that keeps the entry present and needs those bits must use
/// [`unlock_keeping`]).
pub fn unlock(slot: &AtomicU64, new: Entry) {
    slot.store(new.without(LOCK).0, Ordering::Release);
}

/// Clears [`LOCK`] and keeps everything else (including accessed/dirty bits
/// the hardware set while it was held): one entry written. Returns the entry
/// after.
pub fn unlock_keeping(slot: &AtomicU64) -> Entry {
    Entry(slot.fetch_and(!LOCK.bits(), Ordering::AcqRel)).without(LOCK)
}

impl<'a, M: TableMemory<'a>> PageTables<'a, M> {
    /// The tables rooted at the level-4 table at physical `root`.
    pub fn new(mem: M, root: u64) -> Self {
        PageTables {
            mem,
            root,
            _tables: PhantomData,
        }
    }

    /// Allocates a zeroed root from `mem`: an empty address space.
    pub fn create(mem: M) -> Result<Self, PagingError> {
        let root = mem
            .alloc_table()
            .ok_or(PagingError::OutOfTables { writes: 0 })?;
        Ok(PageTables::new(mem, root))
    }

    /// The root's physical address (what CR3 holds).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The memory the tables live in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn table(&self, phys: u64) -> Result<&'a Table, PagingError> {
        self.mem.table(phys).ok_or(PagingError::BadTable(phys))
    }

    /// The entries the hardware would use for `addr`.
    pub fn walk(&self, addr: u64) -> Result<Walk, PagingError> {
        let empty = Step {
            level: Level::L4,
            table: 0,
            entry: Entry::EMPTY,
        };
        let mut walk = Walk {
            steps: [empty; 4],
            len: 0,
        };
        let mut table = self.root;
        let mut level = Level::L4;
        loop {
            let entry = load(&self.table(table)?[level.index(addr)]);
            walk.steps[walk.len] = Step {
                level,
                table,
                entry,
            };
            walk.len += 1;
            let leaf = level == Level::L1 || entry.has(Flags::HUGE_PAGE);
            match level.below() {
                Some(next) if entry.present() && !leaf => {
                    table = entry.addr();
                    level = next;
                }
                _ => return Ok(walk),
            }
        }
    }

    /// The table holding `addr`'s entry at `level`, through present tables
    /// only: `NotMapped` if one is missing, `SizeMismatch` if a leaf (a huge
    /// entry) is above `level`.
    fn table_at(&self, addr: u64, level: Level) -> Result<&'a Table, PagingError> {
        let mut table = self.table(self.root)?;
        let mut at = Level::L4;
        while at > level {
            let e = load(&table[at.index(addr)]);
            if !e.present() {
                return Err(PagingError::NotMapped);
            }
            if e.has(Flags::HUGE_PAGE) {
                return Err(PagingError::SizeMismatch);
            }
            table = self.table(e.addr())?;
            at = at.below().expect("above level 1");
        }
        Ok(table)
    }

    /// As [`table_at`](Self::table_at), creating missing tables (with
    /// [`PARENT_FLAGS`]) and never changing a present entry. Returns the
    /// table and how many tables it created (= entries written).
    fn table_at_creating(&self, addr: u64, level: Level) -> Result<(&'a Table, u64), PagingError> {
        let mut table = self.table(self.root)?;
        let mut at = Level::L4;
        let mut created = 0;
        while at > level {
            let slot = &table[at.index(addr)];
            let mut e = load(slot);
            while !e.present() {
                if e.has(LOCK) {
                    return Err(PagingError::Locked);
                }
                let new = self
                    .mem
                    .alloc_table()
                    .ok_or(PagingError::OutOfTables { writes: created })?;
                if new & !ADDR_MASK != 0 {
                    self.mem.free_table(new);
                    return Err(PagingError::UnalignedFrame);
                }
                // The zeroed table is published by this release CAS: a
                // lock-free walker that sees the entry sees the zeroes.
                match cas(slot, e, Entry::new(new, PARENT_FLAGS)) {
                    Ok(()) => {
                        created += 1;
                        e = Entry::new(new, PARENT_FLAGS);
                    }
                    Err(now) => {
                        self.mem.free_table(new);
                        e = now;
                    }
                }
            }
            if e.has(Flags::HUGE_PAGE) {
                return Err(PagingError::SizeMismatch);
            }
            table = self.table(e.addr())?;
            at = at.below().expect("above level 1");
        }
        Ok((table, created))
    }

    /// The slot of `addr`'s entry at `level` (through present tables only).
    pub fn slot(&self, addr: u64, level: Level) -> Result<&'a AtomicU64, PagingError> {
        Ok(&self.table_at(addr, level)?[level.index(addr)])
    }

    /// The entry for `addr` at `level`.
    pub fn read(&self, addr: u64, level: Level) -> Result<Entry, PagingError> {
        self.slot(addr, level).map(load)
    }

    /// Replaces the entry for `addr` at `level` with `new` if it is still
    /// `current` (compare-and-swap): one entry written, or `Changed`.
    pub fn replace(
        &self,
        addr: u64,
        level: Level,
        current: Entry,
        new: Entry,
    ) -> Result<Update, PagingError> {
        cas(self.slot(addr, level)?, current, new).map_err(|_| PagingError::Changed)?;
        Ok(Update {
            old: current,
            new,
            writes: 1,
        })
    }

    /// The level-1 slot of `addr` if its tables exist: no allocation, no
    /// lock. After [`populate`](Self::populate) it is `Some` for every page
    /// of the range (see the module's invariants for when it stays valid).
    pub fn leaf(&self, addr: u64) -> Option<&'a AtomicU64> {
        self.slot(addr, Level::L1).ok()
    }

    /// Maps page `addr` to `frame` with `flags` (`PRESENT`, and `HUGE_PAGE`
    /// for a large page, are added). Creates missing tables; never changes a
    /// present parent. Writes: 1 + the tables created.
    pub fn map(
        &self,
        addr: u64,
        frame: u64,
        size: Size,
        flags: Flags,
    ) -> Result<Update, PagingError> {
        let new = leaf_entry(addr, frame, size, flags)?;
        let level = size.level();
        let (table, created) = self.table_at_creating(addr, level)?;
        let slot = &table[level.index(addr)];
        let mut old = load(slot);
        loop {
            if old.present() {
                return Err(if size == Size::Large && !old.has(Flags::HUGE_PAGE) {
                    PagingError::SizeMismatch
                } else {
                    PagingError::AlreadyMapped
                });
            }
            if old.has(LOCK) {
                return Err(PagingError::Locked);
            }
            match cas(slot, old, new) {
                Ok(()) => {
                    return Ok(Update {
                        old,
                        new,
                        writes: 1 + created,
                    })
                }
                Err(now) => old = now,
            }
        }
    }

    /// Points the leaf of `size` at `addr` at `frame` with `flags`
    /// (`PRESENT`, and `HUGE_PAGE` for a large page, are added), whatever
    /// the entry held before, present or not: one compare-and-swap loop on
    /// the entry, so the old value returned in [`Update::old`] carries the
    /// accessed and dirty bits as they were at the moment of the exchange
    /// (the hardware cannot set a bit in an entry after it was replaced).
    /// With `create`, missing tables are created as [`map`](Self::map) does
    /// (a structural edit: the caller serialises it); without, a missing
    /// table is `NotMapped` and nothing is written (the lock-free leaf
    /// path). `Locked` if the entry is locked; `SizeMismatch` if a leaf of
    /// the other size covers `addr`. Writes: 1 + the tables created.
    pub fn remap(
        &self,
        addr: u64,
        frame: u64,
        size: Size,
        flags: Flags,
        create: bool,
    ) -> Result<Update, PagingError> {
        let new = leaf_entry(addr, frame, size, flags)?;
        let level = size.level();
        let (table, created) = if create {
            self.table_at_creating(addr, level)?
        } else {
            (self.table_at(addr, level)?, 0)
        };
        let slot = &table[level.index(addr)];
        let mut old = load(slot);
        loop {
            if old.has(LOCK) {
                return Err(PagingError::Locked);
            }
            if size == Size::Large && old.present() && !old.has(Flags::HUGE_PAGE) {
                return Err(PagingError::SizeMismatch);
            }
            match cas(slot, old, new) {
                Ok(()) => {
                    return Ok(Update {
                        old,
                        new,
                        writes: 1 + created,
                    })
                }
                Err(now) => old = now,
            }
        }
    }

    /// The slot of the present leaf of `size` at `addr`, checking alignment.
    fn leaf_slot(&self, addr: u64, size: Size) -> Result<&'a AtomicU64, PagingError> {
        if !canonical(addr) || !addr.is_multiple_of(size.bytes()) {
            return Err(PagingError::UnalignedAddr);
        }
        self.slot(addr, size.level())
    }

    /// Rewrites the present leaf of `size` at `addr` with `f(entry)` by a
    /// compare-and-swap loop (`f` may run more than once; `None`: leave it).
    /// `NotMapped` if there is no such leaf, `SizeMismatch` if a leaf of the
    /// other size is there, `Locked` if it is locked. Writes: 1, or 0 if `f`
    /// returned `None`.
    pub fn update(
        &self,
        addr: u64,
        size: Size,
        mut f: impl FnMut(Entry) -> Option<Entry>,
    ) -> Result<Update, PagingError> {
        let slot = self.leaf_slot(addr, size)?;
        let mut old = load(slot);
        loop {
            if !old.present() {
                return Err(PagingError::NotMapped);
            }
            if size == Size::Large && !old.has(Flags::HUGE_PAGE) {
                return Err(PagingError::SizeMismatch);
            }
            if old.has(LOCK) {
                return Err(PagingError::Locked);
            }
            let Some(new) = f(old) else {
                return Ok(Update {
                    old,
                    new: old,
                    writes: 0,
                });
            };
            match cas(slot, old, new) {
                Ok(()) => {
                    return Ok(Update {
                        old,
                        new,
                        writes: 1,
                    })
                }
                Err(now) => old = now,
            }
        }
    }

    /// Removes the leaf of `size` at `addr`; `old` is the entry it replaced
    /// (frame, accessed and dirty bits as they were when it disappeared).
    /// One entry written.
    pub fn unmap(&self, addr: u64, size: Size) -> Result<Update, PagingError> {
        self.update(addr, size, |_| Some(Entry::EMPTY))
    }

    /// Sets the [`PERMISSIONS`] bits of the leaf at `addr` to those in
    /// `perm`, keeping its frame, its accessed and dirty bits and its software
    /// bits. One entry written.
    pub fn protect(&self, addr: u64, size: Size, perm: Flags) -> Result<Update, PagingError> {
        let keep = !PERMISSIONS.bits();
        let set = (perm & PERMISSIONS).bits();
        self.update(addr, size, |e| Some(Entry((e.0 & keep) | set)))
    }

    /// Clears `bits` (e.g. `ACCESSED`, or `ACCESSED | DIRTY`) in the leaf at
    /// `addr`; `old` says which were set. Writes: 1 if any was set, else 0.
    pub fn clear_bits(&self, addr: u64, size: Size, bits: Flags) -> Result<Update, PagingError> {
        self.update(addr, size, |e| {
            e.flags().intersects(bits).then(|| e.without(bits))
        })
    }

    /// Creates every missing table down to level 1 for `[start, end)` (page
    /// aligned), so that each page's leaf slot can then be reached with
    /// [`leaf`](Self::leaf), without allocation or lock. `SizeMismatch` if a
    /// large leaf is in the range. Returns the tables created (= writes).
    pub fn populate(&self, start: u64, end: u64) -> Result<u64, PagingError> {
        if start >= end {
            return Ok(0);
        }
        // Both ends in the same canonical half.
        if !start.is_multiple_of(Size::Small.bytes())
            || !canonical(start)
            || !canonical(end - 1)
            || (start >> 63) != ((end - 1) >> 63)
        {
            return Err(PagingError::UnalignedAddr);
        }
        let mut writes = 0;
        let mut addr = start;
        while addr < end {
            match self.table_at_creating(addr, Level::L1) {
                Ok((_, created)) => writes += created,
                Err(PagingError::OutOfTables { writes: w }) => {
                    return Err(PagingError::OutOfTables { writes: writes + w })
                }
                Err(e) => return Err(e),
            }
            // The next 2 MiB region (one level-1 table each).
            addr = (addr | (Level::L2.span() - 1)).saturating_add(1);
            if addr == 0 {
                break;
            }
        }
        Ok(writes)
    }

    /// Points `addr`'s entry at `level` (2, 3 or 4) at the existing table
    /// `table` with `flags` (`PRESENT` added): the subtree below becomes
    /// shared with whoever else points at `table`. The entry must not be
    /// present; missing tables above it are created. Writes: 1 + the tables
    /// created.
    pub fn share(
        &self,
        addr: u64,
        level: Level,
        table: u64,
        flags: Flags,
    ) -> Result<Update, PagingError> {
        if level == Level::L1 {
            return Err(PagingError::SizeMismatch);
        }
        if !canonical(addr) || !addr.is_multiple_of(level.span()) {
            return Err(PagingError::UnalignedAddr);
        }
        if table & !ADDR_MASK != 0 {
            return Err(PagingError::UnalignedFrame);
        }
        let new = Entry::new(table, (flags | Flags::PRESENT).difference(Flags::HUGE_PAGE));
        let (parent, created) = self.table_at_creating(addr, level)?;
        let slot = &parent[level.index(addr)];
        let old = load(slot);
        if old.present() {
            return Err(PagingError::AlreadyMapped);
        }
        if old.has(LOCK) {
            return Err(PagingError::Locked);
        }
        cas(slot, old, new).map_err(|_| PagingError::Changed)?;
        Ok(Update {
            old,
            new,
            writes: 1 + created,
        })
    }

    /// Creates the missing tables down to the one holding `addr`'s entry at
    /// `level` (with [`PARENT_FLAGS`]; a present entry is never changed), so
    /// that a later [`replace`](Self::replace) or [`share`](Self::share) at
    /// that level writes exactly one entry. Returns the tables created (=
    /// entries written).
    pub fn prepare(&self, addr: u64, level: Level) -> Result<u64, PagingError> {
        if !canonical(addr) {
            return Err(PagingError::UnalignedAddr);
        }
        self.table_at_creating(addr, level)
            .map(|(_, created)| created)
    }

    /// Copies the table at physical `table` into a new table, entry by entry,
    /// with `f` applied to every present entry (empty and non-present entries
    /// are copied as they are), and returns the new table's physical address
    /// and the entries written (the non-empty entries). Nothing points at the
    /// copy yet: the caller links it (with [`replace`](Self::replace) on each
    /// entry that must see it), or frees it.
    ///
    /// The caller holds the structural lock and nobody edits the source's
    /// entries lock-free during the copy (the hardware may still set accessed
    /// bits in it; a bit set after its entry was copied is not in the copy).
    pub fn duplicate(
        &self,
        table: u64,
        f: impl Fn(Entry) -> Entry,
    ) -> Result<(u64, u64), PagingError> {
        let src = self.table(table)?;
        let new_phys = self
            .mem
            .alloc_table()
            .ok_or(PagingError::OutOfTables { writes: 0 })?;
        let dst = match self.table(new_phys) {
            Ok(t) => t,
            Err(e) => {
                self.mem.free_table(new_phys);
                return Err(e);
            }
        };
        let mut writes = 0;
        for (from, to) in src.iter().zip(dst.iter()) {
            let e = load(from);
            if e.0 == 0 {
                continue;
            }
            let e = if e.present() { f(e) } else { e };
            // Relaxed: the copy is published by the caller's release
            // compare-and-swap of the entry that links it.
            to.store(e.0, Ordering::Relaxed);
            writes += 1;
        }
        Ok((new_phys, writes))
    }

    /// Rewrites every present entry of the table at physical `table` with
    /// `f(index, entry)` (compare-and-swap per entry, retried if the hardware
    /// set a bit meanwhile; `None`: leave it). Returns the entries written.
    /// For structural edits of a whole table in place (Snappy marks the
    /// entries of a table it stops sharing copy-on-write); the caller holds
    /// the structural lock.
    pub fn update_entries(
        &self,
        table: u64,
        mut f: impl FnMut(usize, Entry) -> Option<Entry>,
    ) -> Result<u64, PagingError> {
        let entries = self.table(table)?;
        let mut writes = 0;
        for (i, slot) in entries.iter().enumerate() {
            let mut old = load(slot);
            loop {
                if !old.present() {
                    break;
                }
                let Some(new) = f(i, old) else { break };
                match cas(slot, old, new) {
                    Ok(()) => {
                        writes += 1;
                        break;
                    }
                    Err(now) => old = now,
                }
            }
        }
        Ok(writes)
    }

    /// Calls `f` for every table below the root that covers part of
    /// `[start, end)`, children before their parent (so a reclaimer can free
    /// a table after everything below it). Follows present non-leaf entries
    /// only; a table shared by several parents is visited once per parent in
    /// the range. Writes nothing.
    pub fn visit(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&Visit),
    ) -> Result<(), PagingError> {
        if start >= end {
            return Ok(());
        }
        self.visit_table(self.root, Level::L4, 0, start, end, &mut f)
    }

    /// Visits the tables below `table` (of `level`, covering from `base`).
    fn visit_table(
        &self,
        table: u64,
        level: Level,
        base: u64,
        start: u64,
        end: u64,
        f: &mut impl FnMut(&Visit),
    ) -> Result<(), PagingError> {
        let Some(below) = level.below() else {
            return Ok(());
        };
        let entries = self.table(table)?;
        for (i, slot) in entries.iter().enumerate() {
            let mut lo = base + i as u64 * level.span();
            if level == Level::L4 && i >= 256 {
                lo |= 0xffff_0000_0000_0000; // sign extension of the upper half
            }
            let hi = lo + (level.span() - 1); // inclusive
            if hi < start || lo >= end {
                continue;
            }
            let e = load(slot);
            if !e.present() || e.has(Flags::HUGE_PAGE) {
                continue;
            }
            self.visit_table(e.addr(), below, lo, start, end, f)?;
            f(&Visit {
                level: below,
                table: e.addr(),
                base: lo,
                parent: e,
                whole: lo >= start && hi < end,
            });
        }
        Ok(())
    }
}

/// What [`PageTables::clear_range`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Present leaves taken out (one entry written each).
    pub leaves: u64,
    /// Tables unlinked (one parent entry written each), handed to the
    /// caller, not freed.
    pub tables: u64,
    /// Entries written: `leaves + tables`.
    pub writes: u64,
}

impl<'a, M: TableMemory<'a>> PageTables<'a, M> {
    /// Takes down everything of `[start, end)` (a window being released):
    /// every present leaf wholly inside the range is swapped to empty and
    /// reported to `leaf(address, entry as it was, size)`; then every table
    /// below the root that covers part of the range and is empty afterwards
    /// is unlinked (its parent entry cleared by compare-and-swap) and
    /// reported to `unlinked(table)`, children before their parent, if its
    /// whole span lies in the range or `may_free(first, last)` (its span,
    /// last inclusive) says nobody else may use it. Tables and frames are
    /// **not freed**: the caller frees them after every CPU dropped its
    /// cached translations (and paging-structure caches) of the range.
    ///
    /// A structural edit: the caller holds the structural lock, and no
    /// lock-free leaf edit may run in the range or in a table `may_free`
    /// accepts (their windows are gone). A large leaf straddling the range
    /// (never the case for 2 MiB-aligned windows) is left alone.
    pub fn clear_range(
        &self,
        start: u64,
        end: u64,
        may_free: &dyn Fn(u64, u64) -> bool,
        leaf: &mut dyn FnMut(u64, Entry, Size),
        unlinked: &mut dyn FnMut(u64),
    ) -> Result<Cleared, PagingError> {
        let mut done = Cleared::default();
        if start < end {
            let range = start..end;
            self.clear_table(
                self.root,
                Level::L4,
                0,
                &range,
                may_free,
                leaf,
                unlinked,
                &mut done,
            )?;
        }
        done.writes = done.leaves + done.tables;
        Ok(done)
    }

    /// [`clear_range`](Self::clear_range) below `table` (of `level`,
    /// covering from `base`); returns whether the table is empty afterwards.
    #[allow(clippy::too_many_arguments)]
    fn clear_table(
        &self,
        table: u64,
        level: Level,
        base: u64,
        range: &core::ops::Range<u64>,
        may_free: &dyn Fn(u64, u64) -> bool,
        leaf: &mut dyn FnMut(u64, Entry, Size),
        unlinked: &mut dyn FnMut(u64),
        done: &mut Cleared,
    ) -> Result<bool, PagingError> {
        let entries = self.table(table)?;
        let mut empty = true;
        // Only the entries that meet the range are visited (the guest runs
        // this emulated: 512 entries per level add up); the others are read
        // for emptiness only if the table could be freed at all.
        // The range meets this table (the caller's or the recursion's
        // check), so its first and last entries are the ones holding the
        // range's clipped ends.
        let table_last = entry_span(level, base, ENTRIES - 1).1;
        let first = level.index(range.start.max(base));
        let last = level.index((range.end - 1).min(table_last));
        for (i, slot) in entries.iter().enumerate().take(last + 1).skip(first) {
            let e = load(slot);
            if !e.present() {
                continue;
            }
            let (lo, hi) = entry_span(level, base, i);
            let inside = lo >= range.start && hi < range.end;
            let size = match level {
                Level::L1 => Some(Size::Small),
                Level::L2 if e.has(Flags::HUGE_PAGE) => Some(Size::Large),
                _ if e.has(Flags::HUGE_PAGE) => {
                    empty = false; // a 1 GiB leaf: never made by the walker
                    continue;
                }
                _ => None,
            };
            if let Some(size) = size {
                if inside {
                    // Swapped, not stored: the value reported carries the
                    // accessed/dirty bits as they were when it went away.
                    let old = Entry(slot.swap(0, Ordering::AcqRel));
                    done.leaves += 1;
                    leaf(lo, old, size);
                } else {
                    empty = false;
                }
                continue;
            }
            let below = level.below().expect("a table entry above level 1");
            let child_empty =
                self.clear_table(e.addr(), below, lo, range, may_free, leaf, unlinked, done)?;
            if child_empty && (inside || may_free(lo, hi)) && cas(slot, e, Entry::EMPTY).is_ok() {
                done.tables += 1;
                unlinked(e.addr());
            } else {
                empty = false;
            }
        }
        if empty && level != Level::L4 {
            let outside = entries[..first].iter().chain(&entries[last + 1..]);
            empty = outside.map(load).all(|e| !e.present());
        }
        Ok(empty && level != Level::L4)
    }
}

/// The first and last (inclusive) address entry `i` of a table of `level`
/// covering from `base` translates (the upper half sign-extended).
fn entry_span(level: Level, base: u64, i: usize) -> (u64, u64) {
    let mut lo = base + i as u64 * level.span();
    if level == Level::L4 && i >= 256 {
        lo |= 0xffff_0000_0000_0000;
    }
    (lo, lo + (level.span() - 1))
}

#[cfg(feature = "views")]
mod view;

#[cfg(test)]
mod tests;
