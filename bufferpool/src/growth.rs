//! Growth: the data area is not fixed at format. It grows while the store
//! runs, up to what the device holds ([`max_pages`]).
//!
//! A store is formatted with the data pages asked for; the pool, the
//! page-LSN table and the device's reservation cover the most the store may
//! grow to. When the tree needs a page past the data area it asks
//! [`Engine::grow`] (with no page latched), which:
//!
//! 1. reserves the device's blocks for the new pages
//!    ([`BlockDevice::reserve`]: a file's blocks are allocated, so a full
//!    file system is found here, as "store full", not at a later page
//!    write that would stop the engine);
//! 2. writes the new pages blank and sealed (page LSN 0) and flushes, as
//!    format does for the first ones: recovery checks every page of the
//!    data area, and these must pass;
//! 3. writes the control block with the new size (FUA). Only then may a
//!    page past the old size be changed, so recovery, which bounds every
//!    logged page by the control block's size, always knows the pages the
//!    log names. A crash before this step leaves the old size and blank
//!    pages nobody uses; after it, the new size and valid blank pages.
//!
//! Growth holds the checkpoint lock, so no checkpoint writes a control
//! block in between; it is rare (the area grows by a quarter, at least
//! [`GROW_MIN`] pages, at a time).
//!
//! The limit, [`max_pages`], is the least of: the device's blocks after the
//! log (less the backup control block in the last one: a guest's disk, or
//! a process store's file at its maximum size); and, where the store keeps
//! a page-LSN table, the most pages whose table still fits a quarter of the
//! log (`crate::lsntable::enabled`), so that lost-write detection is never
//! given up by growing. Beyond it a change fails as "store full", undone,
//! and nothing acknowledged is lost.

use crate::control::{Layout, BACKUP_BLOCKS, CONTROL_BLOCKS, MAX_DATA_PAGES};
use crate::device::{BlockDevice, DeviceError};
use crate::engine::{Engine, Error};
use crate::lsntable;
use crate::pool::BufferManager;
use crate::store::StoreIo;
use crate::sync::lock;
use core::fmt;
use core::sync::atomic::Ordering;

/// The data area grows by at least this many pages (1 MiB) at a time.
pub const GROW_MIN: u64 = 256;

/// Why the store cannot grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The device has no blocks left after the data area (a guest's
    /// disk; a process store's file at its maximum size).
    Device,
    /// The device's storage is full (a file system without space).
    Space,
    /// A larger store's page-LSN table would not fit a quarter of the log.
    Log,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Device => "the device holds no more pages",
            Limit::Space => "the storage under the device is full",
            Limit::Log => {
                "a larger store needs a larger log (its page-LSN table must fit a quarter of \
                 the log; format with a larger log)"
            }
        })
    }
}

/// The most data pages a store of `layout` may grow to on a device of
/// `blocks` blocks (see the module docs), at least its current size, and
/// what sets that limit.
pub fn max_pages(blocks: u64, layout: &Layout) -> (u64, Limit) {
    let fit = blocks.saturating_sub(CONTROL_BLOCKS + layout.log_blocks + BACKUP_BLOCKS);
    let max = fit.min(MAX_DATA_PAGES);
    let enabled = |pages| {
        lsntable::enabled(&Layout {
            data_pages: pages,
            ..*layout
        })
    };
    if !lsntable::enabled(layout) || enabled(max) {
        return (max.max(layout.data_pages), Limit::Device);
    }
    // The largest size whose table is still enabled (monotone in the
    // pages): a binary search between the current size and `max`.
    let (mut lo, mut hi) = (layout.data_pages, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if enabled(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, Limit::Log)
}

/// [`max_pages`] for the device under `io`.
pub(crate) fn max_pages_on<D: BlockDevice>(io: &StoreIo<D>, layout: &Layout) -> (u64, Limit) {
    max_pages(io.block_count(), layout)
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> Engine<D, B> {
    /// The most data pages this store may grow to.
    pub fn max_data_pages(&self) -> u64 {
        self.max_pages
    }

    /// Grows the data area to at least `pages` pages (see the module
    /// docs); returns the new size. Call it with no page latched: it waits
    /// for a running checkpoint, which waits for latched pages.
    pub fn grow(&self, pages: u64) -> Result<u64, Error> {
        let _one = lock(&self.checkpointing, self.env.relax);
        let cur = self.data_pages.load(Ordering::Acquire);
        if pages <= cur {
            return Ok(cur);
        }
        if let Some(e) = self.wal.failure() {
            return Err(Error::Log(crate::WalError::Failed(e)));
        }
        let full = |why| Error::StoreFull {
            pages: cur,
            max: self.max_pages,
            why,
        };
        if pages > self.max_pages {
            return Err(full(self.limit));
        }
        let target = (cur + (cur / 4).max(GROW_MIN)).clamp(pages, self.max_pages);
        let new = Layout {
            data_pages: target,
            ..self.layout()
        };
        {
            let mut io = self.io();
            let first = new.page_lba(crate::PageId(cur));
            match io.reserve(first, target - cur) {
                Ok(()) => {}
                Err(DeviceError::CapacityExceeded) => return Err(full(Limit::Space)),
                Err(e) => return Err(Error::Device(e)),
            }
            // Not yet the store's: a failure here loses nothing, but the
            // device failed a write, and the engine stops as for any.
            if let Err(e) = io.write_blank_range(&new, cur, target) {
                self.wal.fail(e.error);
                return Err(Error::DeviceAt(e));
            }
        }
        if self.page_lsns.is_some() {
            // The log keeps room for the larger table; if it has not that
            // much free now, a checkpoint first (its table is the old
            // size's, for which room was kept).
            let reserve = lsntable::table_blocks(target);
            if self.log_blocks_in_use() + reserve > self.log_blocks {
                self.checkpoint_held()?;
            }
            self.wal.set_reserve(reserve);
        }
        let mut control = lock(&self.control, self.env.relax);
        let next = crate::control::Control {
            seq: control.seq + 1,
            layout: new,
            ..*control
        };
        if let Err(e) = self.io().write_control(&next) {
            self.wal.fail(e.error);
            return Err(Error::DeviceAt(e));
        }
        *control = next;
        drop(control);
        self.data_pages.store(target, Ordering::Release);
        self.stats.growths.fetch_add(1, Ordering::Relaxed);
        log::info!("engine: the data area grew from {cur} to {target} pages");
        Ok(target)
    }
}
