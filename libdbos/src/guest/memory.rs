//! Address translation between the guest's fixed mappings: the direct map of
//! all RAM and the image mapping (see [`crate::abi`]).

use crate::abi::{DIRECT_MAP_BASE, IMAGE_BASE, IMAGE_PHYS_MAX};
use core::sync::atomic::{AtomicU64, Ordering};

/// End of guest-physical RAM (exclusive), set once at boot.
static PHYS_END: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_phys_end(end: u64) {
    PHYS_END.store(end, Ordering::Relaxed);
}

/// End of guest-physical RAM (exclusive).
pub fn phys_end() -> u64 {
    PHYS_END.load(Ordering::Relaxed)
}

/// Virtual address of guest-physical `phys` in the direct map.
#[inline]
pub fn phys_to_virt(phys: u64) -> u64 {
    DIRECT_MAP_BASE + phys
}

/// Guest-physical address behind `virt`, for the direct map and the image
/// mapping; for any other address the current page tables are walked.
pub fn virt_to_phys(virt: u64) -> Option<u64> {
    if virt >= IMAGE_BASE {
        let p = virt - IMAGE_BASE;
        return (p < IMAGE_PHYS_MAX).then_some(p);
    }
    if virt >= DIRECT_MAP_BASE {
        let p = virt - DIRECT_MAP_BASE;
        if p < phys_end() {
            return Some(p);
        }
    }
    crate::paging::translate(virt)
}
