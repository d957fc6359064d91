//! Versioned page latches (LeanStore / vmcache style): one 64-bit word per
//! page (or frame) holding a state in the top 8 bits and a version in the
//! low 56 bits.
//!
//! ```text
//! bits 63..56  state: 0 Evicted, 1 Unlocked, 2 Marked (clock: evict next),
//!                     3 Exclusive, 4..=255 Shared with count 1..=252
//! bits 55..0   version: +1 at every exclusive unlock and every eviction
//! ```
//!
//! An optimistic reader remembers the word it saw, reads, then validates:
//! the read is good if the version is unchanged and the page is neither
//! exclusively latched nor evicted. Shared latching and clock marking do
//! not change the version (they do not change the bytes).
//!
//! **Why 56 bits cannot wrap in practice.** A stale read validates only if
//! the version returns to the same value while the reader is between its
//! two loads, i.e. after exactly 2^56 (7.2e16) exclusive unlocks or
//! evictions of one page during one read. An exclusive latch costs at
//! least an atomic read-modify-write (~20 ns), so even a page latched back
//! to back forever takes 2^56 * 20 ns = 45 years to wrap once, and a
//! reader is never between its loads for more than a page access (or a
//! page read from storage).
//!
//! Memory ordering is the seqlock's: the reader loads the word with
//! `Acquire`, reads the bytes, issues an `Acquire` fence and loads the word
//! again; a writer's exclusive lock is an `Acquire` CAS followed by a
//! `Release` fence, its unlock a `Release` store.

use core::sync::atomic::{fence, AtomicU64, Ordering};

const STATE_SHIFT: u32 = 56;
const VERSION_MASK: u64 = (1 << STATE_SHIFT) - 1;

/// State byte: the page is not resident.
pub const EVICTED: u64 = 0;
/// State byte: resident, nobody holds a latch.
pub const UNLOCKED: u64 = 1;
/// State byte: resident, unlatched, marked by the clock for eviction.
pub const MARKED: u64 = 2;
/// State byte: latched exclusively.
pub const EXCLUSIVE: u64 = 3;
/// State byte of one shared holder; `SHARED_BASE + n - 1` for `n` holders.
pub const SHARED_BASE: u64 = 4;
/// Most shared holders at once.
pub const MAX_SHARED: u64 = 255 - SHARED_BASE + 1;

/// The state byte of a latch word.
#[inline]
pub const fn state(word: u64) -> u64 {
    word >> STATE_SHIFT
}

/// The version of a latch word.
#[inline]
pub const fn version(word: u64) -> u64 {
    word & VERSION_MASK
}

/// A latch word with `state` and `version`.
#[inline]
pub const fn word(state: u64, version: u64) -> u64 {
    (state << STATE_SHIFT) | (version & VERSION_MASK)
}

/// A versioned latch word. A new latch is `Evicted` with version 0 (the
/// all-zero word, so arrays of latches can come from zeroed memory).
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Latch(AtomicU64);

impl Latch {
    /// An evicted latch at version 0.
    pub const fn new() -> Latch {
        Latch(AtomicU64::new(0))
    }

    /// The current word (`Acquire`: what follows reads the page).
    #[inline]
    pub fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    #[inline]
    fn cas(&self, old: u64, new: u64) -> bool {
        self.0
            .compare_exchange(old, new, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the latch exclusively if its word is still `seen` and `seen`
    /// is Unlocked, Marked or Evicted. Keeps the version.
    #[inline]
    pub fn try_lock_exclusive(&self, seen: u64) -> bool {
        let s = state(seen);
        if !(s == UNLOCKED || s == MARKED || s == EVICTED) {
            return false;
        }
        if self.cas(seen, word(EXCLUSIVE, version(seen))) {
            // Seqlock writer: the state change is ordered before the writes
            // that follow.
            fence(Ordering::Release);
            true
        } else {
            false
        }
    }

    /// Takes the latch exclusively if its version is still that of `seen`
    /// and nobody holds it (Unlocked or Marked): the upgrade of an
    /// optimistic read. Never waits.
    #[inline]
    pub fn try_upgrade(&self, seen: u64) -> bool {
        let now = self.0.load(Ordering::Relaxed);
        version(now) == version(seen)
            && (state(now) == UNLOCKED || state(now) == MARKED)
            && self.try_lock_exclusive(now)
    }

    /// Releases an exclusive latch: Unlocked, version + 1.
    #[inline]
    pub fn unlock_exclusive(&self) {
        let w = self.0.load(Ordering::Relaxed);
        debug_assert_eq!(state(w), EXCLUSIVE);
        self.0
            .store(word(UNLOCKED, version(w) + 1), Ordering::Release);
    }

    /// Releases an exclusive latch as Evicted, version + 1.
    #[inline]
    pub fn unlock_exclusive_evicted(&self) {
        let w = self.0.load(Ordering::Relaxed);
        debug_assert_eq!(state(w), EXCLUSIVE);
        self.0
            .store(word(EVICTED, version(w) + 1), Ordering::Release);
    }

    /// Adds a shared holder if `seen` is still the word and is Unlocked,
    /// Marked (the mark is cleared) or Shared with room for one more.
    #[inline]
    pub fn try_lock_shared(&self, seen: u64) -> bool {
        let s = state(seen);
        let next = match s {
            UNLOCKED | MARKED => SHARED_BASE,
            s if (SHARED_BASE..255).contains(&s) => s + 1,
            _ => return false,
        };
        self.cas(seen, word(next, version(seen)))
    }

    /// Removes a shared holder.
    #[inline]
    pub fn unlock_shared(&self) {
        let mut w = self.0.load(Ordering::Relaxed);
        loop {
            let s = state(w);
            debug_assert!(s >= SHARED_BASE);
            let next = if s == SHARED_BASE { UNLOCKED } else { s - 1 };
            match self.0.compare_exchange_weak(
                w,
                word(next, version(w)),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(x) => w = x,
            }
        }
    }

    /// Marks an Unlocked latch for eviction (the clock's first pass).
    #[inline]
    pub fn try_mark(&self, seen: u64) -> bool {
        state(seen) == UNLOCKED && self.cas(seen, word(MARKED, version(seen)))
    }

    /// Clears a clock mark (the page was used again). Best effort.
    #[inline]
    pub fn unmark(&self, seen: u64) {
        if state(seen) == MARKED {
            let _ = self.cas(seen, word(UNLOCKED, version(seen)));
        }
    }

    /// Whether an optimistic read that started at word `seen` is still
    /// good: same version, and the page neither latched exclusively nor
    /// evicted now.
    #[inline]
    pub fn validate(&self, seen: u64) -> bool {
        fence(Ordering::Acquire);
        let now = self.0.load(Ordering::Relaxed);
        version(now) == version(seen) && state(now) != EXCLUSIVE && state(now) != EVICTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_versions() {
        let l = Latch::new();
        let w = l.load();
        assert_eq!((state(w), version(w)), (EVICTED, 0));
        assert!(l.try_lock_exclusive(w));
        assert!(!l.try_lock_exclusive(l.load()));
        l.unlock_exclusive();
        let w = l.load();
        assert_eq!((state(w), version(w)), (UNLOCKED, 1));
        assert!(l.validate(w));
        assert!(l.try_mark(w));
        let m = l.load();
        assert_eq!(state(m), MARKED);
        assert!(l.validate(w), "marking keeps the version");
        assert!(l.try_lock_shared(m));
        assert!(l.try_lock_shared(l.load()));
        assert_eq!(state(l.load()), SHARED_BASE + 1);
        assert!(!l.try_lock_exclusive(l.load()));
        assert!(l.validate(w), "shared holders keep the version");
        l.unlock_shared();
        l.unlock_shared();
        assert_eq!(l.load(), word(UNLOCKED, 1));
        assert!(l.try_lock_exclusive(l.load()));
        assert!(!l.validate(w), "exclusively latched");
        l.unlock_exclusive_evicted();
        assert_eq!(l.load(), word(EVICTED, 2));
        assert!(!l.validate(w));
    }

    #[test]
    fn shared_count_saturates() {
        let l = Latch::new();
        assert!(l.try_lock_exclusive(l.load()));
        l.unlock_exclusive();
        for _ in 0..MAX_SHARED {
            assert!(l.try_lock_shared(l.load()));
        }
        assert_eq!(state(l.load()), 255);
        assert!(!l.try_lock_shared(l.load()));
    }

    #[test]
    fn version_masks_at_56_bits() {
        let w = word(UNLOCKED, VERSION_MASK);
        assert_eq!(version(w), VERSION_MASK);
        assert_eq!(state(w), UNLOCKED);
        assert_eq!(word(UNLOCKED, VERSION_MASK + 1), word(UNLOCKED, 0));
    }
}
