//! What the store has acknowledged, per record, so that reads during a run
//! and [`super::verify`] afterwards can tell a correct store from one that
//! lost or garbled a durable write. Shared by every thread of a run;
//! lock-free (two atomic words per record, fixed at creation).
//!
//! Each write of a record takes the next version number of that record
//! ([`Acked::begin_write`]) and writes it into the value. When the store
//! returns, [`Acked::end_write`] raises the record's *acknowledged
//! version* to that version, but only if no other write of the same
//! record was in flight at any time during this one. That is what makes
//! it a sound lower bound: every other write of the record then either
//! finished before this one started (and so was ordered before it) or
//! started after it was acknowledged (and has a higher version). So once
//! a write has been acknowledged, every later read, and the store after a
//! crash, must show that version or a higher one. Two writes that
//! overlap may land in either order, and the bound stays where it was.
//!
//! Crash tests need the same bound outside the process (the guest prints
//! `acked RECORD VERSION`, `dbos-kv workload --acks FILE` appends it):
//! [`Acked::report_acks`] installs a function called for exactly the
//! acknowledged writes that raised the bound. Reporting every acknowledged
//! write instead would be unsound: of two overlapping writes of a record,
//! both acknowledged, the lower version may land last.
//!
//! Inserts take new record numbers from a shared counter
//! ([`Acked::claim_insert`]); [`Acked::available`] is the number of
//! records `0..n` that all exist (loaded, or inserted and acknowledged),
//! which is what the key choosers draw from, so a read never asks for a
//! record whose insert is still in flight.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::spec::Spec;

/// Bits of a record's write word that count writes in flight; the rest
/// count versions issued.
const IN_FLIGHT_BITS: u32 = 20;
const IN_FLIGHT_MASK: u64 = (1 << IN_FLIGHT_BITS) - 1;

#[derive(Default)]
struct Slot {
    /// Versions issued (high bits) and writes in flight (low bits).
    writes: AtomicU64,
    /// The acknowledged version (0: none).
    acked: AtomicU64,
}

/// A write in progress: its record, its version, and whether it has been
/// alone so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a write must be ended with Acked::end_write"]
pub struct PendingWrite {
    /// The record written.
    pub record: u64,
    /// Its version, 1 for the first write of the record.
    pub version: u64,
    alone: bool,
}

/// The acknowledgement log of one run: per record the versions issued and
/// the acknowledged version, plus the insert counter.
pub struct Acked {
    slots: Box<[Slot]>,
    records: u64,
    /// The next record number an insert takes.
    next_insert: AtomicU64,
    /// Every record below this one exists.
    available: AtomicU64,
    /// Loaded records were written by an earlier run (see
    /// [`Acked::history_unknown`]).
    history_unknown: bool,
    /// Called with (record, version) for every write that raised a
    /// record's acknowledged version ([`Acked::report_acks`]).
    report: Option<AckReport>,
}

/// What [`Acked::report_acks`] calls.
pub type AckReport = Box<dyn Fn(u64, u64) + Send + Sync>;

impl Acked {
    /// The log for `spec`: records `0..spec.records` (which the load
    /// writes) and room for every insert the run can make
    /// ([`Spec::capacity`]).
    pub fn new(spec: &Spec) -> Self {
        Acked::with_capacity(spec.records, spec.capacity())
    }

    /// The log for `records` loaded records and `capacity - records`
    /// inserts.
    pub fn with_capacity(records: u64, capacity: u64) -> Self {
        assert!(
            capacity >= records,
            "capacity {capacity} below {records} records"
        );
        let slots: Vec<Slot> = (0..capacity).map(|_| Slot::default()).collect();
        Acked {
            slots: slots.into_boxed_slice(),
            records,
            next_insert: AtomicU64::new(records),
            available: AtomicU64::new(records),
            history_unknown: false,
            report: None,
        }
    }

    /// Records loaded: `0..records`.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The most records there can be.
    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Records `0..available()` all exist: the loaded ones and every
    /// insert up to the first one not acknowledged yet.
    pub fn available(&self) -> u64 {
        self.available.load(SeqCst)
    }

    /// Record numbers handed out so far (loaded plus claimed by inserts,
    /// acknowledged or not): the range a verification covers.
    pub fn claimed(&self) -> u64 {
        self.next_insert.load(SeqCst).min(self.capacity())
    }

    /// Takes the next record number for an insert; `None` once the
    /// capacity is used up.
    pub fn claim_insert(&self) -> Option<u64> {
        let n = self.next_insert.fetch_add(1, SeqCst);
        (n < self.capacity()).then_some(n)
    }

    fn slot(&self, record: u64) -> &Slot {
        &self.slots[usize::try_from(record).expect("record number fits usize")]
    }

    /// Starts a write of `record`: takes its next version.
    pub fn begin_write(&self, record: u64) -> PendingWrite {
        let old = self
            .slot(record)
            .writes
            .fetch_add((1 << IN_FLIGHT_BITS) + 1, SeqCst);
        assert!(
            old & IN_FLIGHT_MASK < IN_FLIGHT_MASK,
            "too many writes of one record in flight"
        );
        PendingWrite {
            record,
            version: (old >> IN_FLIGHT_BITS) + 1,
            alone: old & IN_FLIGHT_MASK == 0,
        }
    }

    /// Ends `write`; `acknowledged` if the store returned success. Raises
    /// the record's acknowledged version if the write was acknowledged and
    /// no other write of the record overlapped it, and then the count of
    /// available records if it was an insert.
    pub fn end_write(&self, write: PendingWrite, acknowledged: bool) {
        let slot = self.slot(write.record);
        let old = slot.writes.fetch_sub(1, SeqCst);
        let alone =
            write.alone && old >> IN_FLIGHT_BITS == write.version && old & IN_FLIGHT_MASK == 1;
        if !(acknowledged && alone) {
            return;
        }
        slot.acked.fetch_max(write.version, SeqCst);
        if let Some(report) = &self.report {
            report(write.record, write.version);
        }
        if write.record >= self.records {
            self.advance();
        }
    }

    /// Moves `available` over every acknowledged insert that follows it.
    /// Whoever acknowledges an insert runs this after marking it, so the
    /// last of two racing inserts always sees the other's mark.
    fn advance(&self) {
        loop {
            let n = self.available.load(SeqCst);
            if n >= self.capacity() || self.slot(n).acked.load(SeqCst) == 0 {
                return;
            }
            let _ = self.available.compare_exchange(n, n + 1, SeqCst, SeqCst);
        }
    }

    /// Calls `report(record, version)` for every acknowledged write that
    /// raises its record's acknowledged version, after the store returned
    /// (so the write is durable): the sound lower bounds a crash test
    /// checks. Call before sharing.
    pub fn report_acks(&mut self, report: AckReport) {
        self.report = Some(report);
    }

    /// For a run on records an earlier process wrote (`dbos-kv workload
    /// --no-load`): their versions are unknown, so a read of a loaded
    /// record accepts any version at or above what this run acknowledged
    /// (the record and the fill are still checked). Call before sharing.
    pub fn history_unknown(&mut self) {
        self.history_unknown = true;
    }

    /// The acknowledged version of `record`: any read that starts now
    /// must see it or a higher one. 0 if none.
    pub fn acked(&self, record: u64) -> u64 {
        self.slot(record).acked.load(SeqCst)
    }

    /// Versions of `record` issued so far: no value can name a higher one
    /// (`u64::MAX` for a loaded record of unknown history).
    pub fn issued(&self, record: u64) -> u64 {
        if self.history_unknown && record < self.records {
            return u64::MAX;
        }
        self.slot(record).writes.load(SeqCst) >> IN_FLIGHT_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_that_raise_the_bound_are_reported() {
        use alloc::sync::Arc;
        let seen = Arc::new(spin::Mutex::new(Vec::new()));
        let mut a = Acked::with_capacity(4, 4);
        let s = seen.clone();
        a.report_acks(Box::new(move |r, v| s.lock().push((r, v))));
        // Alone: reported.
        let w = a.begin_write(1);
        a.end_write(w, true);
        // Two overlapping writes of record 2, both acknowledged, the
        // higher version first: neither is a sound bound, neither is
        // reported (the lower one may have landed last).
        let w2 = a.begin_write(2);
        let w3 = a.begin_write(2);
        a.end_write(w3, true);
        a.end_write(w2, true);
        // Not acknowledged: not reported.
        let w = a.begin_write(3);
        a.end_write(w, false);
        // Alone again after the overlap: reported.
        let w = a.begin_write(2);
        a.end_write(w, true);
        assert_eq!(*seen.lock(), [(1, 1), (2, 3)]);
        assert_eq!((a.acked(2), a.acked(3)), (3, 0));
    }

    #[test]
    fn records_of_unknown_history_accept_any_version() {
        let mut a = Acked::with_capacity(3, 4);
        assert_eq!(a.issued(2), 0);
        a.history_unknown();
        assert_eq!((a.issued(2), a.acked(2)), (u64::MAX, 0));
        let w = a.begin_write(2);
        assert_eq!(w.version, 1);
        a.end_write(w, true);
        assert_eq!((a.issued(2), a.acked(2)), (u64::MAX, 1));
        // Inserts are this run's own.
        assert_eq!(a.issued(3), 0);
    }

    #[test]
    fn lone_writes_raise_the_acknowledged_version() {
        let a = Acked::with_capacity(4, 4);
        assert_eq!((a.acked(2), a.issued(2)), (0, 0));
        let w = a.begin_write(2);
        assert_eq!(w.version, 1);
        assert_eq!(a.issued(2), 1);
        a.end_write(w, true);
        assert_eq!(a.acked(2), 1);
        let w = a.begin_write(2);
        a.end_write(w, false);
        assert_eq!((a.acked(2), a.issued(2)), (1, 2));
        let w = a.begin_write(2);
        assert_eq!(w.version, 3);
        a.end_write(w, true);
        assert_eq!(a.acked(2), 3);
    }

    #[test]
    fn overlapping_writes_leave_it_alone() {
        let a = Acked::with_capacity(1, 1);
        let w1 = a.begin_write(0);
        a.end_write(w1, true);
        // w2 and w3 overlap: neither raises it, whatever the order.
        let w2 = a.begin_write(0);
        let w3 = a.begin_write(0);
        a.end_write(w3, true);
        a.end_write(w2, true);
        assert_eq!(a.acked(0), 1);
        // w5 starts while w4 is in flight and ends after it: both
        // overlapped.
        let w4 = a.begin_write(0);
        let w5 = a.begin_write(0);
        a.end_write(w4, true);
        a.end_write(w5, true);
        assert_eq!(a.acked(0), 1);
        // w7 starts and ends within w6.
        let w6 = a.begin_write(0);
        let w7 = a.begin_write(0);
        a.end_write(w7, true);
        a.end_write(w6, true);
        assert_eq!(a.acked(0), 1);
        // Alone again.
        let w8 = a.begin_write(0);
        assert_eq!(w8.version, 8);
        a.end_write(w8, true);
        assert_eq!((a.acked(0), a.issued(0)), (8, 8));
    }

    #[test]
    fn inserts_become_available_in_order() {
        let a = Acked::with_capacity(10, 13);
        assert_eq!((a.available(), a.claimed()), (10, 10));
        let (r10, r11, r12) = (
            a.claim_insert().unwrap(),
            a.claim_insert().unwrap(),
            a.claim_insert().unwrap(),
        );
        assert_eq!((r10, r11, r12), (10, 11, 12));
        assert_eq!(a.claim_insert(), None);
        assert_eq!(a.claimed(), 13);
        let w11 = a.begin_write(r11);
        a.end_write(w11, true);
        // 10 is still in flight: 11 exists but is not available yet.
        assert_eq!(a.available(), 10);
        let w10 = a.begin_write(r10);
        a.end_write(w10, true);
        assert_eq!(a.available(), 12);
        // A failed insert holds the count back.
        let w12 = a.begin_write(r12);
        a.end_write(w12, false);
        assert_eq!(a.available(), 12);
    }

    #[test]
    fn concurrent_inserts_all_become_available() {
        let a = Acked::with_capacity(5, 5 + 4 * 2000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while let Some(r) = a.claim_insert() {
                        let w = a.begin_write(r);
                        a.end_write(w, true);
                    }
                });
            }
        });
        assert_eq!(a.available(), a.capacity());
        assert_eq!(a.claimed(), a.capacity());
    }

    #[test]
    fn concurrent_writes_of_one_record_keep_a_sound_bound() {
        let a = Acked::with_capacity(1, 1);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let w = a.begin_write(0);
                        a.end_write(w, true);
                    }
                });
            }
        });
        assert_eq!(a.issued(0), 40_000);
        assert!(a.acked(0) <= 40_000);
        // Nothing in flight: a lone write raises it to the top.
        let w = a.begin_write(0);
        a.end_write(w, true);
        assert_eq!(a.acked(0), 40_001);
    }
}
