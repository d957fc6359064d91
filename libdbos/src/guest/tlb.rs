//! This CPU's TLB: single-page invalidation and full flush, counted.
//!
//! The guest runs without PCIDs (these hosts reject CR4.PCIDE) and without
//! global pages, so a CR3 reload drops every translation.
//!
//! With the `conformance` feature, a CPU may defer its view of a range
//! ([`crate::view`]): every invalidation here first refreshes that CPU's
//! private copy of the tables (one global check while no CPU defers),
//! so that a correct invalidation repairs the view and a missing one leaves
//! it stale.

use crate::percpu::{self, Event};
use x86_64::registers::control::Cr3;
use x86_64::VirtAddr;

/// `invlpg page` on this CPU.
pub fn invalidate_local(page: u64) {
    #[cfg(feature = "conformance")]
    crate::view::refresh_page(page);
    x86_64::instructions::tlb::flush(VirtAddr::new_truncate(page));
    percpu::count(Event::LocalInvalidation);
}

/// `invlpg page` without counting it (for work another CPU asked for and counted).
pub(crate) fn invalidate_uncounted(page: u64) {
    #[cfg(feature = "conformance")]
    crate::view::refresh_page(page);
    x86_64::instructions::tlb::flush(VirtAddr::new_truncate(page));
}

/// Drops every translation cached by this CPU (CR3 reload).
pub fn flush_local() {
    flush_uncounted();
    percpu::count(Event::LocalFlush);
}

/// A CR3 reload without counting it (for work another CPU asked for and counted).
pub(crate) fn flush_uncounted() {
    #[cfg(feature = "conformance")]
    crate::view::refresh_all();
    let (frame, flags) = Cr3::read();
    // SAFETY: writing back the current root and flags changes no mapping; it
    // only drops cached translations (and the paging-structure caches).
    unsafe { Cr3::write(frame, flags) };
}
