//! Accounting of the process's memory mappings (kernel VMAs) against Linux's
//! `vm.max_map_count`.
//!
//! Every `map` of a frame at a window page is a `MAP_SHARED` file mapping and
//! every unmapped page is a `PROT_NONE` anonymous one. The kernel merges a
//! mapping with a neighbour that continues it (the next file offset with the
//! same protection; or another reserved page), so a window holds one VMA per
//! *run* of mapped pages and one per *hole* between runs. Runs alternate with
//! holes and there are at most as many runs as mapped pages, so a window with
//! `m` mapped pages (of either size) holds at most `2m + 1` VMAs, however the
//! pages lie and whatever their frames and protections.
//!
//! The platform therefore *charges* a fixed count per object and refuses, with
//! [`Error::MappingLimit`] and before any system call, a call that would take
//! the charge past its allowance:
//!
//! | object | charge |
//! |---|---|
//! | platform | [`PER_PLATFORM_BASE`] + [`PER_CPU`] per CPU (direct map, worker stacks and guard pages) |
//! | window | [`PER_WINDOW`] (the reservation and its two entry tables) |
//! | mapped page, small or large | [`PER_PAGE`] (its run and the hole after it) |
//!
//! The charge is an upper bound on the VMAs these hold, never below it, and
//! it only shrinks when a page is unmapped, so `unmap` (and `protect`) never
//! need a new allowance: the split of a merged run that an `unmap` or
//! `protect` in its middle causes is already paid for by the pages of the
//! run. Eviction cannot fail for lack of mappings.
//!
//! The allowance is 7/8 of the limit ([`allowed`]): the other 1/8 (8,191 of
//! the default 65,530) is left to the rest of the process — the Rust heap's
//! own mappings, thread stacks, shared libraries, other mappings of the
//! program. The limit is read once from `/proc/sys/vm/max_map_count`
//! ([`system_limit`]) and is shared by all platforms of the process (one
//! process-wide charge); [`Config::max_map_count`](super::Config) can lower
//! it for one platform (for tests), never raise it.
//!
//! The charge is a bound, not a count: a buffer pool whose pages map
//! consecutive frames at consecutive pages holds far fewer VMAs than charged.
//! The bound is what lets the check be a single atomic add, async-signal-safe
//! and independent of what other CPUs map at the neighbouring pages at the
//! same time.

use crate::platform::Error;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Charge of one platform, before any CPU: the direct map of its memory file.
pub const PER_PLATFORM_BASE: u64 = 1;
/// Charge of one CPU (worker thread): its stack and guard page.
pub const PER_CPU: u64 = 2;
/// Charge of one window: its reservation and its two tables of entries.
pub const PER_WINDOW: u64 = 3;
/// Charge of one mapped page (small or large): its run and one hole.
pub const PER_PAGE: u64 = 2;
/// Linux's default `vm.max_map_count`, used when `/proc` cannot be read.
pub const DEFAULT_LIMIT: u64 = 65_530;

/// The share of `limit` that platforms may charge: 7/8 of it (the rest is
/// the headroom for the rest of the process).
pub const fn allowed(limit: u64) -> u64 {
    limit - limit / 8
}

/// The charge of a platform with `cpus` CPUs (no windows, nothing mapped).
pub const fn platform_base(cpus: usize) -> u64 {
    PER_PLATFORM_BASE.saturating_add(PER_CPU.saturating_mul(cpus as u64))
}

/// The most a platform with `frames` frames and `cpus` CPUs can be charged
/// with one window and every frame mapped as a separate small page.
pub const fn worst_case(frames: u64, cpus: usize) -> u64 {
    platform_base(cpus)
        .saturating_add(PER_WINDOW)
        .saturating_add(PER_PAGE.saturating_mul(frames))
}

/// The process's `vm.max_map_count`, read once. If `/proc` cannot be read
/// or parsed, [`DEFAULT_LIMIT`] (with a warning).
pub fn system_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        const PATH: &str = "/proc/sys/vm/max_map_count";
        match std::fs::read_to_string(PATH).map(|s| s.trim().parse::<u64>()) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                log::warn!("{PATH}: {e}; assuming the default {DEFAULT_LIMIT}");
                DEFAULT_LIMIT
            }
            Err(e) => {
                log::warn!("{PATH}: {e}; assuming the default {DEFAULT_LIMIT}");
                DEFAULT_LIMIT
            }
        }
    })
}

/// A charge against an allowance (lock-free, async-signal-safe).
pub(crate) struct Budget {
    used: AtomicU64,
    allowed: u64,
    limit: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            allowed: allowed(limit),
            limit,
        }
    }

    /// Adds `n` unless that passes the allowance.
    pub(crate) fn charge(&self, n: u64) -> Result<(), Error> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let needed = used.saturating_add(n);
            if needed > self.allowed {
                return Err(Error::MappingLimit {
                    needed,
                    allowed: self.allowed,
                    limit: self.limit,
                });
            }
            match self.used.compare_exchange_weak(
                used,
                needed,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(u) => used = u,
            }
        }
    }

    /// Takes back `n` charged before.
    pub(crate) fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn allowed(&self) -> u64 {
        self.allowed
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

/// The process-wide charge of all platforms, against the system limit.
pub(crate) fn process_budget() -> &'static Budget {
    static GLOBAL: OnceLock<Budget> = OnceLock::new();
    GLOBAL.get_or_init(|| Budget::new(system_limit()))
}

/// One platform's charge: its own allowance and the process-wide one.
pub(crate) struct Account {
    own: Budget,
    process: &'static Budget,
}

impl Account {
    /// An account with limit `limit` (at most the system's), charged nothing.
    pub(crate) fn new(limit: u64) -> Account {
        Account {
            own: Budget::new(limit),
            process: process_budget(),
        }
    }

    /// Charges `n` to both allowances, or neither.
    pub(crate) fn charge(&self, n: u64) -> Result<(), Error> {
        self.own.charge(n)?;
        if let Err(e) = self.process.charge(n) {
            self.own.release(n);
            return Err(e);
        }
        Ok(())
    }

    /// Takes back `n` from both.
    pub(crate) fn release(&self, n: u64) {
        self.own.release(n);
        self.process.release(n);
    }

    pub(crate) fn own(&self) -> &Budget {
        &self.own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_charges_up_to_the_allowance() {
        let b = Budget::new(800);
        assert_eq!(b.allowed(), 700);
        b.charge(699).unwrap();
        assert_eq!(
            b.charge(2),
            Err(Error::MappingLimit {
                needed: 701,
                allowed: 700,
                limit: 800
            })
        );
        assert_eq!(b.used(), 699);
        b.charge(1).unwrap();
        b.release(700);
        assert_eq!(b.used(), 0);
        assert_eq!(allowed(DEFAULT_LIMIT), 57_339);
        assert_eq!(worst_case(16 * 1024, 2), 5 + 3 + 32_768);
    }
}
