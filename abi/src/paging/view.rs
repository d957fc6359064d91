//! Views (feature `views`, test machinery): a second root that translates
//! like the real tables, late. The guest forces stale translations with them
//! in tests (`libdbos::paging::defer_view`, feature `conformance`); nothing
//! the measured programs run uses them.

use super::*;

/// Whether `[lo, hi]` meets `range` (`range.end` exclusive).
fn meets(lo: u64, hi: u64, range: &core::ops::Range<u64>) -> bool {
    hi >= range.start && lo < range.end
}

/// # Views: a second root that translates like the real tables, late
///
/// A *view* is a set of tables rooted at its own level-4 table that
/// translates like a *source* root (the real tables), except that for a
/// *private* range it holds its own copies of every table below the root:
/// edits of the source's entries in that range reach the view only when the
/// view is synchronised ([`sync_view`](PageTables::sync_view)). A CPU running
/// on the view therefore keeps seeing the old translations of the range,
/// exactly as a CPU with stale TLB entries would; the guest uses this to
/// force stale translations in tests (`libdbos::paging::defer_view`).
///
/// Shape (the invariant every view operation keeps): in the view, an entry
/// that covers part of the private range and points at a table points at a
/// **private table** (allocated for this view, owned by it, freed by
/// [`release_view`](PageTables::release_view)); every other entry is a copy
/// of the source's entry as of the last synchronisation, so outside the
/// private range the view shares the source's tables (and sees their edits
/// live, one level below the copied entry). Upper levels covering the range
/// must be private too: a shared table above a private one would be the
/// source's own, and pointing it at a private copy would change the source.
///
/// Only one writer edits a view (its owner); the source is read lock-free,
/// like the hardware walker reads it (tables are only added while a window
/// lives, and a table a source entry points at is zeroed before it is
/// published). Writes into the view are reported like any other (`writes`).
impl<'a, M: TableMemory<'a>> PageTables<'a, M> {
    /// Makes the view rooted here translate the addresses of `only` like the
    /// tables rooted at `source`, keeping the shape above for `private`
    /// (copying tables that became reachable, freeing private tables whose
    /// source entry went away or became a leaf). Entries outside `only` are
    /// not read. Ranges are end-exclusive; `0..u64::MAX` is everything.
    /// Returns the entries written in the view. On `OutOfTables` the view is
    /// consistent (every private table is linked or freed) but translates
    /// part of `only` as not present.
    pub fn sync_view(
        &self,
        source: u64,
        private: &core::ops::Range<u64>,
        only: &core::ops::Range<u64>,
    ) -> Result<u64, PagingError> {
        let mut writes = 0;
        match self.sync_table(self.root, source, Level::L4, 0, private, only, &mut writes) {
            Ok(()) => Ok(writes),
            Err(PagingError::OutOfTables { .. }) => Err(PagingError::OutOfTables { writes }),
            Err(e) => Err(e),
        }
    }

    /// One table of a view (`view`, of `level`, covering from `base`)
    /// against the source table `source` at the same place.
    #[allow(clippy::too_many_arguments)]
    fn sync_table(
        &self,
        view: u64,
        source: u64,
        level: Level,
        base: u64,
        private: &core::ops::Range<u64>,
        only: &core::ops::Range<u64>,
        writes: &mut u64,
    ) -> Result<(), PagingError> {
        let (v, s) = (self.table(view)?, self.table(source)?);
        for (i, (vslot, sslot)) in v.iter().zip(s.iter()).enumerate() {
            let (lo, hi) = entry_span(level, base, i);
            if !meets(lo, hi, only) {
                continue;
            }
            let want = load(sslot);
            let have = load(vslot);
            let in_private = meets(lo, hi, private);
            let table = |e: Entry| e.present() && !e.has(Flags::HUGE_PAGE);
            let below = level.below();
            // A present non-leaf view entry in the private range points at a
            // private table (the shape invariant).
            let have_private = in_private && below.is_some() && table(have);
            let new = match below {
                Some(below) if in_private && table(want) => {
                    let (copy, fresh) = if have_private {
                        (have.addr(), false)
                    } else {
                        let t = self
                            .mem
                            .alloc_table()
                            .ok_or(PagingError::OutOfTables { writes: 0 })?;
                        (t, true)
                    };
                    if let Err(e) =
                        self.sync_table(copy, want.addr(), below, lo, private, only, writes)
                    {
                        if fresh {
                            // Not linked yet: nobody else can reach it.
                            self.release_table(copy, below, lo, private)?;
                            self.mem.free_table(copy);
                        }
                        return Err(e);
                    }
                    // A table that was a shared copy (or a leaf) is replaced
                    // by the private one below.
                    Entry::new(copy, want.flags())
                }
                _ => {
                    if have_private {
                        // Unlinked first, freed after: the view no longer
                        // reaches it (the caller invalidates the CPU's
                        // paging-structure caches before the frames are reused).
                        vslot.store(want.0, Ordering::Release);
                        *writes += 1;
                        let below = below.expect("a table has a level below");
                        self.release_table(have.addr(), below, lo, private)?;
                        self.mem.free_table(have.addr());
                        continue;
                    }
                    want
                }
            };
            if new != have {
                // Release: a fresh private table's entries are visible
                // before the entry that points at it.
                vslot.store(new.0, Ordering::Release);
                *writes += 1;
            }
        }
        Ok(())
    }

    /// Frees the private tables below `table` (of `level`, covering from
    /// `base`), children first; not `table` itself. Returns how many.
    fn release_table(
        &self,
        table: u64,
        level: Level,
        base: u64,
        private: &core::ops::Range<u64>,
    ) -> Result<u64, PagingError> {
        let Some(below) = level.below() else {
            return Ok(0);
        };
        let mut freed = 0;
        for (i, slot) in self.table(table)?.iter().enumerate() {
            let (lo, hi) = entry_span(level, base, i);
            let e = load(slot);
            if meets(lo, hi, private) && e.present() && !e.has(Flags::HUGE_PAGE) {
                freed += self.release_table(e.addr(), below, lo, private)? + 1;
                self.mem.free_table(e.addr());
            }
        }
        Ok(freed)
    }

    /// Frees every private table of the view rooted here, and its root: the
    /// tables [`sync_view`](Self::sync_view) allocated for `private` (the
    /// same range it was given). The root must no longer be in use by any
    /// CPU. Writes nothing; returns the tables freed, the root included.
    pub fn release_view(self, private: &core::ops::Range<u64>) -> Result<u64, PagingError> {
        let freed = self.release_table(self.root, Level::L4, 0, private)?;
        self.mem.free_table(self.root);
        Ok(freed + 1)
    }
}
