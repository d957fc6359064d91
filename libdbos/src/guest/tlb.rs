//! This CPU's TLB: single-page invalidation and full flush, counted.
//!
//! The guest runs without PCIDs (these hosts reject CR4.PCIDE) and without
//! global pages, so a CR3 reload drops every translation.

use crate::percpu::{self, Event};
use x86_64::registers::control::Cr3;
use x86_64::VirtAddr;

/// `invlpg page` on this CPU.
pub fn invalidate_local(page: u64) {
    x86_64::instructions::tlb::flush(VirtAddr::new_truncate(page));
    percpu::count(Event::LocalInvalidation);
}

/// `invlpg page` without counting it (for work another CPU asked for and counted).
pub(crate) fn invalidate_uncounted(page: u64) {
    x86_64::instructions::tlb::flush(VirtAddr::new_truncate(page));
}

/// Drops every translation cached by this CPU (CR3 reload).
pub fn flush_local() {
    flush_uncounted();
    percpu::count(Event::LocalFlush);
}

/// A CR3 reload without counting it (for work another CPU asked for and counted).
pub(crate) fn flush_uncounted() {
    let (frame, flags) = Cr3::read();
    // SAFETY: writing back the current root and flags changes no mapping; it
    // only drops cached translations (and the paging-structure caches).
    unsafe { Cr3::write(frame, flags) };
}
