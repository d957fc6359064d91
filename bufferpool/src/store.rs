//! The engine's own I/O on the data queue, besides the pool's page I/O:
//! the control block, the log area's unwritten sectors at format, writing the blank pages
//! of a new store, the page check recovery makes before it replays
//! anything, and device flushes.
//!
//! The data pages themselves live in a buffer pool
//! ([`BufferManager`](crate::BufferManager)): at most its capacity resident,
//! written back under the write-ahead rule through the engine's
//! [`Durability`](crate::Durability) hook.

use crate::control::{Control, ControlError, Layout, CONTROL_BLOCKS};
use crate::device::{run_one, BlockDevice, DeviceError, DmaBytes, Io, IoFailure, BLOCK_SIZE};
use crate::page::{page_lsn, seal, verify, PageCheck};
use crate::{Env, Lsn, PageId, PAGE_SIZE};
use alloc::collections::BTreeMap;

/// Blocks read or written per batch of requests.
const BATCH: usize = 32;

/// The device and buffer the engine does its own I/O with.
pub struct StoreIo<D> {
    dev: D,
    buf: DmaBytes,
    env: Env,
}

impl<D: BlockDevice> StoreIo<D> {
    /// Takes `dev` and allocates the buffer from it.
    pub fn new(mut dev: D, env: Env) -> Result<StoreIo<D>, DeviceError> {
        let buf = DmaBytes::new(dev.alloc(BATCH)?);
        Ok(StoreIo { dev, buf, env })
    }

    /// Blocks in the namespace.
    pub fn block_count(&self) -> u64 {
        self.dev.block_count()
    }

    /// The newest valid control block, or why neither block is one.
    pub fn read_control(&mut self) -> Result<Result<Control, [ControlError; 2]>, IoFailure> {
        let io = Io::read(0, CONTROL_BLOCKS as u32, self.buf.io_buf().addr);
        run_one(&mut self.dev, io, self.env.relax)?;
        let b = self.buf.bytes();
        Ok(Control::newest(
            &b[..BLOCK_SIZE],
            &b[BLOCK_SIZE..2 * BLOCK_SIZE],
        ))
    }

    /// The first of blocks `0..blocks` (clamped to the device) that is not
    /// entirely zero, if any.
    pub fn first_nonzero(&mut self, blocks: u64) -> Result<Option<u64>, IoFailure> {
        let blocks = blocks.min(self.block_count());
        let mut first = 0;
        while first < blocks {
            let n = (blocks - first).min(BATCH as u64);
            let io = Io::read(first, n as u32, self.buf.io_buf().addr);
            run_one(&mut self.dev, io, self.env.relax)?;
            let bytes = &self.buf.bytes()[..n as usize * BLOCK_SIZE];
            // By words: a guest's ring-0 code is emulated instruction by
            // instruction where the CPU has no VT-x.
            let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap());
            if let Some(i) = bytes.chunks_exact(8).position(|w| word(w) != 0) {
                return Ok(Some(first + (i * 8 / BLOCK_SIZE) as u64));
            }
            first += n;
        }
        Ok(None)
    }

    /// Writes blocks `first..first + blocks`, block `first + i` as `fill(i,
    /// block)` makes it (plain writes: a flush makes them stable).
    pub fn write_blocks(
        &mut self,
        first: u64,
        blocks: u64,
        mut fill: impl FnMut(u64, &mut [u8]),
    ) -> Result<(), IoFailure> {
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(BATCH as u64);
            for (i, block) in self.buf.bytes_mut()[..n as usize * BLOCK_SIZE]
                .chunks_exact_mut(BLOCK_SIZE)
                .enumerate()
            {
                fill(done + i as u64, block);
            }
            let io = Io::write(first + done, n as u32, self.buf.io_buf().addr, false);
            run_one(&mut self.dev, io, self.env.relax)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `c` to its slot with FUA.
    pub fn write_control(&mut self, c: &Control) -> Result<(), IoFailure> {
        c.encode(&mut self.buf.bytes_mut()[..BLOCK_SIZE]);
        let io = Io::write(c.lba(), 1, self.buf.io_buf().addr, true);
        run_one(&mut self.dev, io, self.env.relax)
    }

    /// Reserves storage for blocks `first..first + count` (see
    /// [`BlockDevice::reserve`]).
    pub fn reserve(&mut self, first: u64, count: u64) -> Result<(), DeviceError> {
        self.dev.reserve(first, count)
    }

    /// The device's last block: where the backup control block goes.
    pub fn backup_lba(&self) -> u64 {
        self.block_count() - 1
    }

    /// Writes `c` as the backup control block (the device's last block)
    /// with FUA.
    pub fn write_backup_control(&mut self, c: &Control) -> Result<(), IoFailure> {
        c.encode(&mut self.buf.bytes_mut()[..BLOCK_SIZE]);
        let io = Io::write(self.backup_lba(), 1, self.buf.io_buf().addr, true);
        run_one(&mut self.dev, io, self.env.relax)
    }

    /// Reads the device's last block: the backup control block, or why it
    /// is not one (all zero on a blank device).
    pub fn read_backup_control(&mut self) -> Result<Result<Control, ControlError>, IoFailure> {
        let io = Io::read(self.backup_lba(), 1, self.buf.io_buf().addr);
        run_one(&mut self.dev, io, self.env.relax)?;
        Ok(Control::decode(&self.buf.bytes()[..BLOCK_SIZE]))
    }

    /// Writes the marker of a running format of `format_id` over control
    /// slot `slot` with FUA (see `crate::control`).
    pub fn write_format_marker(&mut self, slot: u64, format_id: u64) -> Result<(), IoFailure> {
        Control::encode_format_marker(format_id, &mut self.buf.bytes_mut()[..BLOCK_SIZE]);
        let io = Io::write(slot, 1, self.buf.io_buf().addr, true);
        run_one(&mut self.dev, io, self.env.relax)
    }

    /// Writes zeros over control slot `slot` with FUA.
    pub fn clear_control(&mut self, slot: u64) -> Result<(), IoFailure> {
        self.buf.bytes_mut()[..BLOCK_SIZE].fill(0);
        let io = Io::write(slot, 1, self.buf.io_buf().addr, true);
        run_one(&mut self.dev, io, self.env.relax)
    }
    /// Makes every completed write durable (a device flush).
    pub fn flush(&mut self) -> Result<(), IoFailure> {
        run_one(&mut self.dev, Io::flush(), self.env.relax)
    }

    /// Writes every data page of `layout` as an empty, sealed page (page
    /// LSN 0) and flushes: the pages of a new store, which need no log.
    pub fn write_blank_pages(&mut self, layout: &Layout) -> Result<(), IoFailure> {
        self.write_blank_range(layout, 0, layout.data_pages)
    }

    /// Writes pages `from..to` of `layout`'s data area blank and sealed,
    /// and flushes (see [`write_blank_pages`](Self::write_blank_pages)).
    pub fn write_blank_range(
        &mut self,
        layout: &Layout,
        from: u64,
        to: u64,
    ) -> Result<(), IoFailure> {
        let mut first = from;
        while first < to {
            let n = (to - first).min(BATCH as u64) as usize;
            let bytes = self.buf.bytes_mut();
            for i in 0..n {
                let page = &mut bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                page.fill(0);
                seal(page, PageId(first + i as u64));
            }
            let lba = layout.page_lba(PageId(first));
            let io = Io::write(lba, n as u32, self.buf.io_buf().addr, false);
            run_one(&mut self.dev, io, self.env.relax)?;
            first += n as u64;
        }
        self.flush()
    }

    /// Reads every data page of `layout` and returns those that are not a
    /// valid image of themselves, with what they are (a torn or damaged
    /// page, another page's image, or all zero). Recovery decides with
    /// this, before it writes anything, which pages the log must repair;
    /// memory is one entry per bad page, not per page.
    /// `valid(id, lsn)` is called for every valid page with its page LSN.
    pub fn check_pages(
        &mut self,
        layout: &Layout,
        mut valid: impl FnMut(PageId, Lsn),
    ) -> Result<BTreeMap<u64, PageCheck>, IoFailure> {
        let mut bad = BTreeMap::new();
        let mut first = 0;
        while first < layout.data_pages {
            let n = (layout.data_pages - first).min(BATCH as u64);
            let lba = layout.page_lba(PageId(first));
            let io = Io::read(lba, n as u32, self.buf.io_buf().addr);
            run_one(&mut self.dev, io, self.env.relax)?;
            for i in 0..n {
                let id = PageId(first + i);
                let page = &self.buf.bytes()[i as usize * PAGE_SIZE..][..PAGE_SIZE];
                match verify(page, id) {
                    PageCheck::Valid => valid(id, page_lsn(page)),
                    check => {
                        bad.insert(id.0, check);
                    }
                }
            }
            first += n;
        }
        Ok(bad)
    }
}
