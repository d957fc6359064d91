//! The storage the log and the pools run on: [`BlockDevice`], a queue
//! of 4 KiB-block reads, writes, FUA writes and flushes on DMA-able buffers.
//!
//! It is deliberately the shape of one NVMe queue pair plus a buffer
//! allocator, and [`NvmeDevice`] implements it for any
//! [`dbos_nvme::QueuePair`] (reached through [`QueueAccess`]) and any
//! [`DmaAllocator`]: the guest supplies its queue pair and an allocator of
//! guest-physical frames, process mode a `dbos_nvme::host::process` queue
//! pair and region (see `crate::host`). Errors are typed from the NVMe
//! completion status.

use core::fmt;
use dbos_nvme::{Command, DataPtr, DmaAddr, Doorbell, DriverError, Lba, NvmeError, QueuePair};

/// Size of one logical block (the I/O unit) in bytes.
pub const BLOCK_SIZE: usize = dbos_abi::nvme::BLOCK_SIZE as usize;

/// Size of a sector, the unit a write may be torn at, in bytes.
pub const SECTOR_SIZE: usize = dbos_abi::SECTOR_SIZE as usize;

/// Most blocks one request moves (NVMe's transfer limit here).
pub const MAX_IO_BLOCKS: u32 = dbos_nvme::MAX_TRANSFER_BLOCKS;

/// A buffer the device can reach: `ptr` is where the CPU accesses it,
/// `addr` its device address. Both are 4 KiB aligned and the buffer is
/// `blocks` blocks long and physically contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoBuf {
    pub ptr: *mut u8,
    pub addr: DmaAddr,
    pub blocks: usize,
}

// SAFETY: an IoBuf names memory, it does not borrow it; whoever accesses it
// does so under the BlockDevice contract (exclusively, no I/O in flight).
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.blocks * BLOCK_SIZE
    }

    /// Whether the buffer has no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Device address of block `i` of the buffer.
    pub fn block_addr(&self, i: usize) -> DmaAddr {
        self.addr.offset((i * BLOCK_SIZE) as u64)
    }
}

/// An [`IoBuf`] owned by one user, with safe access to its bytes while no
/// I/O on it is in flight (everything in this crate waits for its I/O
/// before it touches a buffer again).
pub struct DmaBytes {
    buf: IoBuf,
}

impl DmaBytes {
    /// Takes ownership of `buf`, as handed out by [`BlockDevice::alloc`].
    pub fn new(buf: IoBuf) -> DmaBytes {
        DmaBytes { buf }
    }

    /// The buffer (for building requests).
    pub fn io_buf(&self) -> IoBuf {
        self.buf
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: BlockDevice::alloc guarantees `len()` bytes at `ptr`,
        // valid while the device lives and handed out once; DmaBytes owns
        // them and no I/O is in flight when they are accessed.
        unsafe { core::slice::from_raw_parts(self.buf.ptr, self.buf.len()) }
    }

    /// The bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.buf.ptr, self.buf.len()) }
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoKind {
    Read,
    Write,
    /// A write that completes only once its data is on stable storage.
    WriteFua,
    /// Makes every completed write stable.
    Flush,
}

/// One request: `blocks` blocks at `lba` from or to the buffer at `addr`
/// (ignored by flush).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    pub kind: IoKind,
    pub lba: u64,
    pub blocks: u32,
    pub addr: DmaAddr,
}

impl Io {
    pub fn read(lba: u64, blocks: u32, addr: DmaAddr) -> Io {
        Io {
            kind: IoKind::Read,
            lba,
            blocks,
            addr,
        }
    }
    pub fn write(lba: u64, blocks: u32, addr: DmaAddr, fua: bool) -> Io {
        Io {
            kind: if fua { IoKind::WriteFua } else { IoKind::Write },
            lba,
            blocks,
            addr,
        }
    }
    pub fn flush() -> Io {
        Io {
            kind: IoKind::Flush,
            lba: 0,
            blocks: 0,
            addr: DmaAddr(0),
        }
    }
}

/// A failed request or a device that cannot take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// A write or flush failed (EIO on the host): the data may not be stable.
    WriteFault,
    /// A read failed (EIO on the host).
    UnrecoveredRead,
    /// The backing store is full (ENOSPC on the host).
    CapacityExceeded,
    /// The request addressed blocks outside the namespace.
    LbaOutOfRange,
    /// The queue has no free slot (wait for a completion).
    QueueFull,
    /// The request is malformed (transfer size, buffer).
    InvalidRequest,
    /// No DMA-able memory left for a buffer of this many blocks.
    OutOfDmaMemory(usize),
    /// Any other device status.
    Other(NvmeError),
}

impl From<NvmeError> for DeviceError {
    fn from(e: NvmeError) -> DeviceError {
        match e {
            NvmeError::WriteFault => DeviceError::WriteFault,
            NvmeError::UnrecoveredReadError => DeviceError::UnrecoveredRead,
            NvmeError::CapacityExceeded => DeviceError::CapacityExceeded,
            NvmeError::LbaOutOfRange => DeviceError::LbaOutOfRange,
            NvmeError::InvalidField => DeviceError::InvalidRequest,
            e => DeviceError::Other(e),
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::WriteFault => f.write_str("write fault (the data may not be stable)"),
            DeviceError::UnrecoveredRead => f.write_str("unrecovered read error"),
            DeviceError::CapacityExceeded => f.write_str("the storage is full"),
            DeviceError::LbaOutOfRange => f.write_str("block address out of range"),
            DeviceError::QueueFull => f.write_str("the device queue is full"),
            DeviceError::InvalidRequest => f.write_str("invalid request"),
            DeviceError::OutOfDmaMemory(b) => write!(f, "no DMA memory for {b} blocks"),
            DeviceError::Other(e) => write!(f, "device error: {e}"),
        }
    }
}

/// A request that failed, with where it went: for errors that must say
/// which blocks could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoFailure {
    pub error: DeviceError,
    pub kind: IoKind,
    /// First block (0 for a flush).
    pub lba: u64,
    pub blocks: u32,
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.kind {
            IoKind::Read => "reading",
            IoKind::Write => "writing",
            IoKind::WriteFua => "writing (FUA)",
            IoKind::Flush => return write!(f, "the device flush failed: {}", self.error),
        };
        write!(
            f,
            "{verb} device blocks {}..{} (bytes {}..{}) failed: {}",
            self.lba,
            self.lba + self.blocks as u64,
            self.lba * BLOCK_SIZE as u64,
            (self.lba + self.blocks as u64) * BLOCK_SIZE as u64,
            self.error
        )
    }
}

/// Runs one request to completion, naming it if it fails.
pub fn run_one<D: BlockDevice + ?Sized>(dev: &mut D, io: Io, relax: fn()) -> Result<(), IoFailure> {
    run_all(dev, &[io], relax).map_err(|error| IoFailure {
        error,
        kind: io.kind,
        lba: io.lba,
        blocks: io.blocks,
    })
}

/// A request's handle, unique among the device's outstanding requests.
pub type IoTag = u16;

/// A queue of block requests on one namespace.
///
/// One user at a time drives a device (the log's writer, a pool's queue):
/// it is `Send`, not shared.
///
/// # Safety
/// Implementations guarantee that every [`IoBuf`] returned by
/// [`BlockDevice::alloc`] is valid for reads and writes of its length for
/// as long as the device lives, is handed out only once, is reachable by
/// the device at its `addr`, and is touched by the device only while a
/// request naming it is outstanding.
pub unsafe trait BlockDevice: Send {
    /// Blocks in the namespace.
    fn block_count(&self) -> u64;

    /// A new buffer of `blocks` blocks (never freed: callers allocate at
    /// start-up).
    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError>;

    /// Queues a request; [`DeviceError::QueueFull`] if no slot is free.
    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError>;

    /// Takes one completion, if there is one.
    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)>;

    /// Requests submitted and not yet polled.
    fn in_flight(&self) -> usize;

    /// Makes sure blocks `first..first + count` have storage behind them,
    /// so that writing them later cannot fail for want of space (a file's
    /// blocks are allocated); [`DeviceError::CapacityExceeded`] if the
    /// storage has no room. A device whose blocks all have storage (a
    /// disk) has nothing to do: the default.
    fn reserve(&mut self, first: u64, count: u64) -> Result<(), DeviceError> {
        if first
            .checked_add(count)
            .is_none_or(|end| end > self.block_count())
        {
            return Err(DeviceError::LbaOutOfRange);
        }
        Ok(())
    }

    /// Waits a moment for a completion (the last poll found none and
    /// requests are outstanding): `relax` by default; a device whose host
    /// can wake it sleeps until one arrives instead of spinning.
    fn wait(&mut self, relax: fn()) {
        relax();
    }

    /// The file descriptor and byte offset of block `lba`, for a device
    /// that is a file its requests read and write with plain system calls
    /// (`DirectDevice`): what lets a caller read blocks with I/O of its
    /// own that it completes later (an event loop's io_uring, through
    /// [`BufferManager::begin_read`](crate::pool::BufferManager::begin_read)).
    /// `None` (the default) for every other device.
    fn file_at(&self, _lba: u64) -> Option<(i32, u64)> {
        None
    }
}

/// Carries out `ios` (in submission order, as many at a time as the queue
/// takes) and waits for all of them, calling `relax` while waiting. Returns
/// the first error; every request has completed when it returns, even then.
/// Requests already outstanding on `dev` are waited for too.
pub fn run_all<D: BlockDevice + ?Sized>(
    dev: &mut D,
    ios: &[Io],
    relax: fn(),
) -> Result<(), DeviceError> {
    let mut first_err = None;
    let mut next = 0;
    while next < ios.len() || dev.in_flight() > 0 {
        while next < ios.len() {
            match dev.submit(&ios[next]) {
                Ok(_) => next += 1,
                Err(DeviceError::QueueFull) if dev.in_flight() > 0 => break,
                Err(e) => {
                    // Not submitted: report it and skip it.
                    first_err.get_or_insert(e);
                    next += 1;
                }
            }
        }
        let mut any = false;
        while let Some((_, r)) = dev.poll() {
            any = true;
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if !any && dev.in_flight() > 0 {
            dev.wait(relax);
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Access to a driver queue pair, however it is held.
pub trait QueueAccess: Send {
    type Doorbell: Doorbell;
    fn queue(&mut self) -> &mut QueuePair<Self::Doorbell>;
    fn queue_ref(&self) -> &QueuePair<Self::Doorbell>;

    /// Waits a moment for a completion (nothing arrived on the last poll):
    /// `relax` by default; a queue whose host can wake it (process mode)
    /// sleeps until a completion is posted.
    fn wait_for_completion(&mut self, relax: fn()) {
        relax();
    }

    /// Lets the host make progress before a poll: nothing by default (the
    /// host runs elsewhere); a queue whose host runs in the caller's
    /// thread (an owner-driven queue pair) runs a turn of it when its ring
    /// is empty, so a loop that polls and relaxes progresses.
    fn progress(&mut self) {}
}

impl<D: Doorbell + Send> QueueAccess for QueuePair<D> {
    type Doorbell = D;
    fn queue(&mut self) -> &mut QueuePair<D> {
        self
    }
    fn queue_ref(&self) -> &QueuePair<D> {
        self
    }

    /// Sleeps until the host's completion interrupt where the queue pair
    /// asked for one and its doorbell can sleep (the guest), else `relax`.
    fn wait_for_completion(&mut self, relax: fn()) {
        if !self.sleep_until_completion() {
            relax();
        }
    }
}

/// Hands out DMA-able memory.
///
/// # Safety
/// Every buffer returned must satisfy the [`BlockDevice`] safety contract
/// for the device it is used with: `bytes` (rounded up to 4 KiB) of
/// physically contiguous memory, 4 KiB aligned at `ptr` and at `addr`,
/// valid as long as the allocator lives, handed out once.
pub unsafe trait DmaAllocator: Send {
    /// A buffer of at least `bytes` bytes, or `None` when memory is out.
    fn alloc(&mut self, bytes: usize) -> Option<IoBuf>;
}

/// A [`BlockDevice`] made of an NVMe queue pair and an allocator.
pub struct NvmeDevice<Q, A> {
    queue: Q,
    alloc: A,
    blocks: u64,
}

impl<Q: QueueAccess, A: DmaAllocator> NvmeDevice<Q, A> {
    /// A device on namespace 1 of `blocks` blocks, served through `queue`,
    /// with buffers from `alloc`.
    pub fn new(queue: Q, alloc: A, blocks: u64) -> NvmeDevice<Q, A> {
        NvmeDevice {
            queue,
            alloc,
            blocks,
        }
    }

    /// The queue pair (for its counters).
    pub fn queue(&self) -> &Q {
        &self.queue
    }
}

// SAFETY: buffers come from a DmaAllocator, whose contract is the same.
unsafe impl<Q: QueueAccess, A: DmaAllocator> BlockDevice for NvmeDevice<Q, A> {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        let b = self
            .alloc
            .alloc(blocks * BLOCK_SIZE)
            .ok_or(DeviceError::OutOfDmaMemory(blocks))?;
        Ok(IoBuf { blocks, ..b })
    }

    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        let data = DataPtr::Contiguous(io.addr);
        let cmd = match io.kind {
            IoKind::Read => Command::read(Lba(io.lba), io.blocks, data),
            IoKind::Write => Command::write(Lba(io.lba), io.blocks, data),
            IoKind::WriteFua => Command::write_fua(Lba(io.lba), io.blocks, data),
            IoKind::Flush => Command::flush(),
        };
        match self.queue.queue().submit(&cmd) {
            Ok(cid) => Ok(cid.0),
            Err(DriverError::QueueFull) => Err(DeviceError::QueueFull),
            Err(DriverError::Device(e)) => Err(e.into()),
            Err(_) => Err(DeviceError::InvalidRequest),
        }
    }

    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        self.queue.progress();
        let c = self.queue.queue().poll()?;
        Some((c.cid.0, c.result().map_err(DeviceError::from)))
    }

    fn wait(&mut self, relax: fn()) {
        self.queue.wait_for_completion(relax);
    }

    fn in_flight(&self) -> usize {
        self.queue.queue_ref().in_flight()
    }
}
