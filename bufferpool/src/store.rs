//! A minimal page store: every data page resident in memory behind a spin
//! latch, read in at start and written back by checkpoints, plus the I/O
//! of the control block.
//!
//! It enforces the write-ahead rule: a dirty page is written only after the
//! log is durable up to its page LSN. Eviction (a buffer pool smaller than
//! the data) comes with Tabby and the vmcache-style buffer manager; they
//! will keep this rule and this page format.

use crate::control::{Control, ControlError, Layout, CONTROL_BLOCKS};
use crate::device::{run_all, BlockDevice, DeviceError, DmaBytes, Io, BLOCK_SIZE};
use crate::page::{page_lsn, seal, verify, PageBuf, PageCheck};
use crate::sync::lock;
use crate::{Env, Lsn, PageId, PAGE_SIZE};
use alloc::boxed::Box;
use alloc::vec::Vec;
use spin::{Mutex, MutexGuard};

/// Pages read or written per batch of requests.
const BATCH: usize = 32;

/// A resident page.
pub struct Frame {
    pub page: Box<PageBuf>,
    /// Changed since it was last written.
    pub dirty: bool,
}

/// The device and buffer the store does its I/O with.
pub struct StoreIo<D> {
    dev: D,
    buf: DmaBytes,
    ios: Vec<Io>,
    env: Env,
}

impl<D: BlockDevice> StoreIo<D> {
    /// Takes `dev` and allocates the store's buffer from it.
    pub fn new(mut dev: D, env: Env) -> Result<StoreIo<D>, DeviceError> {
        let buf = DmaBytes::new(dev.alloc(BATCH)?);
        Ok(StoreIo {
            dev,
            buf,
            ios: Vec::with_capacity(BATCH),
            env,
        })
    }

    /// Blocks in the namespace.
    pub fn block_count(&self) -> u64 {
        self.dev.block_count()
    }

    /// The newest valid control block, or why neither block is one.
    pub fn read_control(&mut self) -> Result<Result<Control, [ControlError; 2]>, DeviceError> {
        let io = Io::read(0, CONTROL_BLOCKS as u32, self.buf.io_buf().addr);
        run_all(&mut self.dev, &[io], self.env.relax)?;
        let b = self.buf.bytes();
        Ok(Control::newest(
            &b[..BLOCK_SIZE],
            &b[BLOCK_SIZE..2 * BLOCK_SIZE],
        ))
    }

    /// The first of blocks `0..blocks` (clamped to the device) that is not
    /// entirely zero, if any.
    pub fn first_nonzero(&mut self, blocks: u64) -> Result<Option<u64>, DeviceError> {
        let blocks = blocks.min(self.block_count());
        let mut first = 0;
        while first < blocks {
            let n = (blocks - first).min(BATCH as u64);
            let io = Io::read(first, n as u32, self.buf.io_buf().addr);
            run_all(&mut self.dev, &[io], self.env.relax)?;
            let bytes = &self.buf.bytes()[..n as usize * BLOCK_SIZE];
            if let Some(i) = bytes.iter().position(|&b| b != 0) {
                return Ok(Some(first + (i / BLOCK_SIZE) as u64));
            }
            first += n;
        }
        Ok(None)
    }

    /// Writes zeros over blocks `first..first + blocks` (plain writes: a
    /// flush makes them stable).
    pub fn zero_blocks(&mut self, first: u64, blocks: u64) -> Result<(), DeviceError> {
        self.buf.bytes_mut().fill(0);
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(BATCH as u64);
            let io = Io::write(first + done, n as u32, self.buf.io_buf().addr, false);
            run_all(&mut self.dev, &[io], self.env.relax)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `c` to its slot with FUA.
    pub fn write_control(&mut self, c: &Control) -> Result<(), DeviceError> {
        c.encode(&mut self.buf.bytes_mut()[..BLOCK_SIZE]);
        let io = Io::write(c.lba(), 1, self.buf.io_buf().addr, true);
        run_all(&mut self.dev, &[io], self.env.relax)
    }

    /// Writes zeros over control slot `slot` with FUA.
    pub fn clear_control(&mut self, slot: u64) -> Result<(), DeviceError> {
        self.buf.bytes_mut()[..BLOCK_SIZE].fill(0);
        let io = Io::write(slot, 1, self.buf.io_buf().addr, true);
        run_all(&mut self.dev, &[io], self.env.relax)
    }
}

/// Counters of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub pages_read: u64,
    pub pages_written: u64,
    pub flushes: u64,
}

/// Every data page, resident.
pub struct PageStore<D> {
    env: Env,
    layout: Layout,
    frames: Vec<Mutex<Frame>>,
    io: Mutex<StoreIo<D>>,
    stats: Mutex<StoreStats>,
}

/// A page write that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError<E> {
    Device(DeviceError),
    /// Making the log durable first failed.
    Log(E),
}

/// A zeroed page on the heap, or `None` when memory is out.
fn try_zeroed_page() -> Option<Box<PageBuf>> {
    let layout = core::alloc::Layout::new::<PageBuf>();
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) } as *mut PageBuf;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is a fresh allocation of PageBuf's layout, made by the
    // global allocator (as Box requires), and all zeros is a valid PageBuf.
    Some(unsafe { Box::from_raw(ptr) })
}

impl<D: BlockDevice> PageStore<D> {
    /// A store of `layout.data_pages` zeroed frames doing I/O through `io`.
    /// Panics when memory is out; see [`PageStore::try_new`].
    pub fn new(io: StoreIo<D>, layout: Layout, env: Env) -> PageStore<D> {
        match PageStore::try_new(io, layout, env) {
            Ok(s) => s,
            Err(_) => panic!("no memory for {} pages", layout.data_pages),
        }
    }

    /// Like [`PageStore::new`], but gives `io` back when memory for the
    /// frames is out (the layout may come from a damaged disk).
    pub fn try_new(io: StoreIo<D>, layout: Layout, env: Env) -> Result<PageStore<D>, StoreIo<D>> {
        let Ok(n) = usize::try_from(layout.data_pages) else {
            return Err(io);
        };
        let mut frames = Vec::new();
        if frames.try_reserve_exact(n).is_err() {
            return Err(io);
        }
        for _ in 0..n {
            let Some(page) = try_zeroed_page() else {
                return Err(io);
            };
            frames.push(Mutex::new(Frame { page, dirty: false }));
        }
        Ok(PageStore {
            env,
            layout,
            frames,
            io: Mutex::new(io),
            stats: Mutex::new(StoreStats::default()),
        })
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.layout.data_pages
    }

    /// Latches page `id` (`None` if there is no such page).
    pub fn latch(&self, id: PageId) -> Option<MutexGuard<'_, Frame>> {
        let f = self.frames.get(usize::try_from(id.0).ok()?)?;
        Some(lock(f, self.env.relax))
    }

    /// The control-block and raw I/O.
    pub fn io(&self) -> MutexGuard<'_, StoreIo<D>> {
        lock(&self.io, self.env.relax)
    }

    /// The counters.
    pub fn stats(&self) -> StoreStats {
        *lock(&self.stats, self.env.relax)
    }

    /// Reads every page from storage into its frame (clean) and says what
    /// each one was.
    pub fn load(&self) -> Result<Vec<PageCheck>, DeviceError> {
        let mut io = self.io();
        let StoreIo { dev, buf, env, .. } = &mut *io;
        let mut checks = Vec::with_capacity(self.frames.len());
        let n = self.pages();
        let mut first = 0;
        while first < n {
            let count = (n - first).min(BATCH as u64);
            let lba = self.layout.page_lba(PageId(first));
            run_all(
                dev,
                &[Io::read(lba, count as u32, buf.io_buf().addr)],
                env.relax,
            )?;
            for i in 0..count {
                let id = PageId(first + i);
                let src = &buf.bytes()[i as usize * PAGE_SIZE..][..PAGE_SIZE];
                checks.push(verify(src, id));
                let mut f = self.latch(id).expect("page in range");
                f.page.0.copy_from_slice(src);
                f.dirty = false;
            }
            first += count;
        }
        lock(&self.stats, self.env.relax).pages_read += n;
        Ok(checks)
    }

    /// Writes every page (as it is in memory, dirty or not) and flushes.
    /// Used to format: the log must not be needed for these pages.
    pub fn write_all_unlogged(&self) -> Result<(), DeviceError> {
        for f in &self.frames {
            lock(f, self.env.relax).dirty = true;
        }
        self.write_dirty(|_| Ok::<(), ()>(()))
            .map_err(|e| match e {
                WriteError::Device(d) => d,
                WriteError::Log(()) => unreachable!("no log involved"),
            })?;
        Ok(())
    }

    /// Writes every dirty page, each only after `log_durable(page LSN)` has
    /// returned (the write-ahead rule), then flushes the device. Returns how
    /// many pages it wrote.
    pub fn write_dirty<E>(
        &self,
        log_durable: impl Fn(Lsn) -> Result<(), E>,
    ) -> Result<u64, WriteError<E>> {
        let mut io = self.io();
        let StoreIo { dev, buf, ios, env } = &mut *io;
        let mut written = 0;
        let mut next = 0usize;
        loop {
            // Copy up to BATCH dirty pages into the buffer.
            let mut ids = [PageId(0); BATCH];
            let mut count = 0;
            let mut max_lsn = Lsn::ZERO;
            while next < self.frames.len() && count < BATCH {
                let mut f = lock(&self.frames[next], env.relax);
                if f.dirty {
                    let dst = &mut buf.bytes_mut()[count * PAGE_SIZE..][..PAGE_SIZE];
                    dst.copy_from_slice(&f.page.0);
                    f.dirty = false;
                    max_lsn = max_lsn.max(page_lsn(dst));
                    ids[count] = PageId(next as u64);
                    count += 1;
                }
                next += 1;
            }
            if count == 0 {
                break;
            }
            log_durable(max_lsn).map_err(WriteError::Log)?;
            ios.clear();
            for (i, id) in ids[..count].iter().enumerate() {
                seal(&mut buf.bytes_mut()[i * PAGE_SIZE..][..PAGE_SIZE], *id);
                let lba = self.layout.page_lba(*id);
                ios.push(Io::write(lba, 1, buf.io_buf().block_addr(i), false));
            }
            run_all(dev, ios, env.relax).map_err(WriteError::Device)?;
            written += count as u64;
        }
        run_all(dev, &[Io::flush()], env.relax).map_err(WriteError::Device)?;
        let mut s = lock(&self.stats, self.env.relax);
        s.pages_written += written;
        s.flushes += 1;
        Ok(written)
    }
}
