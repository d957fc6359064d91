//! The driver: the submitting side of one queue pair (`no_std` + `alloc`).
//!
//! A [`QueuePair`] owns one block of shared memory laid out by
//! [`QueueLayout`]: it writes submission entries, publishes its SQ tail in
//! the shadow doorbell, and consumes completion entries by phase. It rings
//! the real [`Doorbell`] only when the host's event index asks for it (the
//! host is parked). One queue pair serves one vCPU (one thread in process
//! mode): it is `Send` but not shared.
//!
//! At most `depth - 1` commands are outstanding at a time, so neither ring
//! can overflow. Command ids are handed out by the queue pair and are unique
//! among its outstanding commands; completions may arrive in any order.

use crate::queue::{
    peek_cqe, publish_doorbell, shared_word, write_sqe, Cqe, Opcode, QueueLayout, QueuePairConfig,
    Sqe, CQ_HEAD_WORD, SQ_TAIL_WORD, WAIT_WORD,
};
use crate::status::{NvmeError, Status};
use crate::types::{CommandId, DmaAddr, Lba, BLOCK_SIZE, MAX_TRANSFER_BLOCKS, NSID, PAGE_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

/// The real doorbell: wakes a parked host. In process mode it signals the
/// poller's eventfd; in a guest it is a port-I/O hypercall (a VM exit).
pub trait Doorbell {
    /// Tells the host there is new work on this queue pair.
    fn ring(&self);

    /// Sleeps until the host posts a completion, if this side of the link
    /// can: raises `waiting` (the queue's waiting word),
    /// checks `ready` once more, and sleeps until the host's interrupt.
    /// (`WAIT_WORD`: see `dbos_abi::nvme::WAIT_WORD`.)
    /// Returns `false` without doing anything where it cannot sleep (the
    /// caller polls).
    fn sleep(&self, waiting: &AtomicU32, ready: &dyn Fn() -> bool) -> bool {
        let _ = (waiting, ready);
        false
    }
}

impl<F: Fn()> Doorbell for F {
    fn ring(&self) {
        self()
    }
}

/// The memory block a queue pair lives in: `virt` is where the driver
/// accesses it, `dma` the same memory's device address (the one the host
/// is told). Both must be 4 KiB aligned and the block
/// [`QueueLayout::size`] bytes long.
#[derive(Clone, Copy, Debug)]
pub struct QueueMemory {
    pub virt: *mut u8,
    pub dma: DmaAddr,
}

/// Where a command's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPtr {
    /// No data (flush).
    None,
    /// One contiguous, 4 KiB aligned buffer of the transfer length (sent as
    /// an SGL data block descriptor).
    Contiguous(DmaAddr),
    /// PRP entries: PRP1 is the first page; PRP2 the second page (two-page
    /// transfers) or a PRP list (see [`prp_list`]).
    Prp { prp1: DmaAddr, prp2: DmaAddr },
}

/// Fills `list` with the PRP entries for pages `pages[1..]` and returns the
/// data pointer for the whole transfer; `list_addr` is the device address of
/// `list`. For one or two pages the list is not used.
///
/// Returns `None` when `pages` is empty or has more than
/// [`MAX_TRANSFER_BLOCKS`] entries, or `list_addr` is not 8-byte aligned.
pub fn prp_list(pages: &[DmaAddr], list: &mut [u64; 512], list_addr: DmaAddr) -> Option<DataPtr> {
    if pages.is_empty()
        || pages.len() > MAX_TRANSFER_BLOCKS as usize
        || !list_addr.0.is_multiple_of(8)
    {
        return None;
    }
    let prp1 = pages[0];
    Some(match pages.len() {
        1 => DataPtr::Prp {
            prp1,
            prp2: DmaAddr(0),
        },
        2 => DataPtr::Prp {
            prp1,
            prp2: pages[1],
        },
        _ => {
            for (slot, page) in list.iter_mut().zip(&pages[1..]) {
                *slot = page.0;
            }
            DataPtr::Prp {
                prp1,
                prp2: list_addr,
            }
        }
    })
}

/// A command to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    pub opcode: Opcode,
    pub lba: Lba,
    /// Number of blocks, 1..=[`MAX_TRANSFER_BLOCKS`] (ignored by flush).
    pub blocks: u32,
    pub fua: bool,
    pub data: DataPtr,
}

impl Command {
    /// Reads `blocks` blocks from `lba` into `data`.
    pub const fn read(lba: Lba, blocks: u32, data: DataPtr) -> Command {
        Command {
            opcode: Opcode::Read,
            lba,
            blocks,
            fua: false,
            data,
        }
    }

    /// Writes `blocks` blocks from `data` to `lba`.
    pub const fn write(lba: Lba, blocks: u32, data: DataPtr) -> Command {
        Command {
            opcode: Opcode::Write,
            lba,
            blocks,
            fua: false,
            data,
        }
    }

    /// A write that completes only once the data is on stable storage.
    pub const fn write_fua(lba: Lba, blocks: u32, data: DataPtr) -> Command {
        Command {
            opcode: Opcode::Write,
            lba,
            blocks,
            fua: true,
            data,
        }
    }

    /// Commits all completed writes to stable storage.
    pub const fn flush() -> Command {
        Command {
            opcode: Opcode::Flush,
            lba: Lba(0),
            blocks: 1,
            fua: false,
            data: DataPtr::None,
        }
    }

    /// The submission entry for this command with command id `cid`.
    pub fn to_sqe(&self, cid: CommandId) -> Sqe {
        let mut sqe = Sqe::new(self.opcode, cid, NSID);
        if self.opcode == Opcode::Flush {
            return sqe;
        }
        sqe.set_range(self.lba, self.blocks);
        sqe.set_fua(self.fua);
        match self.data {
            DataPtr::None => {}
            DataPtr::Contiguous(addr) => {
                sqe.set_sgl_block(addr, self.blocks.saturating_mul(BLOCK_SIZE as u32))
            }
            DataPtr::Prp { prp1, prp2 } => sqe.set_prp(prp1, prp2),
        }
        sqe
    }
}

/// A driver-side error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("queue memory at {0:#x} is not 4 KiB aligned")]
    Misaligned(u64),
    #[error("queue depth {0} is not supported")]
    Depth(u16),
    #[error("the queue pair has depth - 1 commands outstanding")]
    QueueFull,
    #[error("a read or write of {0} blocks (1..={MAX_TRANSFER_BLOCKS} allowed)")]
    TransferSize(u32),
    #[error("execute needs a queue pair with no outstanding commands")]
    CommandsOutstanding,
    #[error("the device failed the command: {0}")]
    Device(NvmeError),
}

/// A consumed completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub cid: CommandId,
    pub status: Status,
    /// The host's SQ head when it posted the entry.
    pub sq_head: u16,
}

impl Completion {
    /// `Ok(())` on success, the device's error otherwise.
    pub const fn result(&self) -> Result<(), NvmeError> {
        self.status.result()
    }
}

/// Counters kept by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions consumed.
    pub completed: u64,
    /// Real doorbells rung (VM exits in guest mode).
    pub doorbells: u64,
    /// Completion entries with an unknown command id (ignored).
    pub stray_completions: u64,
}

/// Sleeps a driver has taken waiting for a completion (its doorbell's
/// [`Doorbell::sleep`]), counted across all its queue pairs.
pub static SLEEPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The driver side of one queue pair.
pub struct QueuePair<D: Doorbell> {
    sq: *mut Sqe,
    cq: *mut Cqe,
    doorbells: *mut u32,
    events: *mut u32,
    depth: u32,
    sq_tail: u32,
    published_tail: u32,
    cq_head: u32,
    phase: bool,
    free_cids: Vec<u16>,
    busy: Vec<bool>,
    config: QueuePairConfig,
    doorbell: D,
    stats: DriverStats,
}

// SAFETY: the queue pair exclusively owns its driver-side state; the shared
// memory it points to is accessed with volatile and atomic operations only,
// which is sound from any thread.
unsafe impl<D: Doorbell + Send> Send for QueuePair<D> {}

impl<D: Doorbell> QueuePair<D> {
    /// Creates a queue pair in `mem` (zeroing it) with `depth` entries per ring.
    ///
    /// The event indexes start at 0, so the first submission rings the
    /// doorbell until the host has started polling the queue.
    ///
    /// # Safety
    /// `mem.virt` must be valid for reads and writes of
    /// `QueueLayout::new(depth).size()` bytes for the queue pair's lifetime,
    /// accessed by nothing but this queue pair and the host, and `mem.dma`
    /// must be the device address of the same memory.
    pub unsafe fn new(mem: QueueMemory, depth: u16, doorbell: D) -> Result<Self, DriverError> {
        let layout = QueueLayout::new(depth).ok_or(DriverError::Depth(depth))?;
        if !(mem.virt as u64).is_multiple_of(PAGE_SIZE) {
            return Err(DriverError::Misaligned(mem.virt as u64));
        }
        if !mem.dma.is_page_aligned() {
            return Err(DriverError::Misaligned(mem.dma.0));
        }
        // SAFETY: the caller guarantees `size()` bytes are ours to write.
        unsafe { core::ptr::write_bytes(mem.virt, 0, layout.size() as usize) };
        let at = |off: u64| mem.virt.wrapping_add(off as usize);
        Ok(QueuePair {
            sq: at(layout.sq_offset()).cast(),
            cq: at(layout.cq_offset()).cast(),
            doorbells: at(layout.doorbell_offset()).cast(),
            events: at(layout.event_idx_offset()).cast(),
            depth: depth as u32,
            sq_tail: 0,
            published_tail: 0,
            cq_head: 0,
            phase: true,
            free_cids: (0..depth - 1).rev().collect(),
            busy: alloc::vec![false; depth as usize - 1],
            config: layout.config(mem.dma.0),
            doorbell,
            stats: DriverStats::default(),
        })
    }

    /// What the host needs to serve this queue pair.
    pub fn config(&self) -> QueuePairConfig {
        self.config
    }

    /// Asks the host to send interrupt `vector` to a CPU waiting for a
    /// completion on this queue pair ([`QueuePair::sleep_until_completion`]);
    /// before the queue pair is registered (it is part of [`config`](Self::config)).
    pub fn set_interrupt(&mut self, vector: u8) {
        self.config.interrupt = u16::from(vector);
    }

    /// Whether a completion is waiting, else sleeps until the host posts
    /// one, if the doorbell can sleep and the host was asked for an
    /// interrupt; `false` when it did not sleep (the caller polls).
    pub fn sleep_until_completion(&self) -> bool {
        if self.config.interrupt == 0 || self.in_flight() == 0 || self.has_completion() {
            return false;
        }
        // SAFETY: the doorbell area holds four dwords inside this queue
        // pair's memory, 8-byte aligned (the layout).
        let waiting = unsafe { shared_word(self.doorbells.add(WAIT_WORD)) };
        let slept = self.doorbell.sleep(waiting, &|| self.has_completion());
        if slept {
            SLEEPS.fetch_add(1, Ordering::Relaxed);
        }
        slept
    }

    /// Entries per ring.
    pub fn depth(&self) -> u16 {
        self.depth as u16
    }

    /// Commands submitted and not yet consumed.
    pub fn in_flight(&self) -> usize {
        self.busy.len() - self.free_cids.len()
    }

    /// Commands that can be submitted now.
    pub fn free_slots(&self) -> usize {
        self.free_cids.len()
    }

    /// The command id the next submission will get (`None` when full), so
    /// that per-command state (a buffer, a timestamp) can be indexed by it.
    /// Ids are below `depth - 1`.
    pub fn next_cid(&self) -> Option<CommandId> {
        self.free_cids.last().map(|&c| CommandId(c))
    }

    /// The driver's counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// The doorbell.
    pub fn doorbell(&self) -> &D {
        &self.doorbell
    }

    fn check(cmd: &Command) -> Result<(), DriverError> {
        if cmd.opcode != Opcode::Flush && !(1..=MAX_TRANSFER_BLOCKS).contains(&cmd.blocks) {
            return Err(DriverError::TransferSize(cmd.blocks));
        }
        Ok(())
    }

    /// Writes `sqe` (with a fresh command id) into the next SQ slot without
    /// publishing it.
    fn push(&mut self, mut sqe: Sqe) -> Result<CommandId, DriverError> {
        let cid = self.free_cids.pop().ok_or(DriverError::QueueFull)?;
        self.busy[cid as usize] = true;
        sqe.set_cid(CommandId(cid));
        // SAFETY: sq_tail < depth, so the slot is inside the submission ring
        // the constructor's caller vouched for.
        unsafe { write_sqe(self.sq.add(self.sq_tail as usize), &sqe) };
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        self.stats.submitted += 1;
        Ok(CommandId(cid))
    }

    /// Publishes the SQ tail; rings the doorbell if the host asked for it.
    fn publish(&mut self) {
        let (old, new) = (self.published_tail, self.sq_tail);
        if old == new {
            return;
        }
        self.published_tail = new;
        // SAFETY: the doorbell and event-index dwords are inside the queue
        // memory, 4-byte aligned.
        let (tail_word, event_word) = unsafe {
            (
                shared_word(self.doorbells.add(SQ_TAIL_WORD)),
                shared_word(self.events.add(SQ_TAIL_WORD)),
            )
        };
        if publish_doorbell(tail_word, event_word, old, new, self.depth) {
            self.stats.doorbells += 1;
            self.doorbell.ring();
        }
    }

    /// Submits one command; returns its command id.
    pub fn submit(&mut self, cmd: &Command) -> Result<CommandId, DriverError> {
        Self::check(cmd)?;
        let cid = self.push(cmd.to_sqe(CommandId(0)))?;
        self.publish();
        Ok(cid)
    }

    /// Submits a raw entry as is, except for its command id, which the queue
    /// pair assigns. Nothing is checked: this is for tests and for commands
    /// this module does not build.
    pub fn submit_raw(&mut self, sqe: Sqe) -> Result<CommandId, DriverError> {
        let cid = self.push(sqe)?;
        self.publish();
        Ok(cid)
    }

    /// Submits as many of `cmds` as fit (in order), publishing them with one
    /// doorbell update, and writes their command ids to `ids`. Returns how
    /// many were submitted (at most `ids.len()`), or the error of the first
    /// command if it is invalid; an invalid later command ends the batch
    /// before it.
    pub fn submit_batch(
        &mut self,
        cmds: &[Command],
        ids: &mut [CommandId],
    ) -> Result<usize, DriverError> {
        let mut n = 0;
        for (cmd, id) in cmds.iter().zip(ids.iter_mut()) {
            if let Err(e) = Self::check(cmd) {
                if n == 0 {
                    return Err(e);
                }
                break;
            }
            match self.push(cmd.to_sqe(CommandId(0))) {
                Ok(cid) => *id = cid,
                Err(_) => break,
            }
            n += 1;
        }
        self.publish();
        Ok(n)
    }

    /// Takes the next completion entry off the ring without publishing the
    /// new CQ head.
    fn take(&mut self) -> Option<Completion> {
        loop {
            // SAFETY: cq_head < depth: the slot is inside the completion ring.
            let cqe = unsafe { peek_cqe(self.cq.add(self.cq_head as usize), self.phase) }?;
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            let cid = cqe.cid().0 as usize;
            if cid < self.busy.len() && self.busy[cid] {
                self.busy[cid] = false;
                self.free_cids.push(cid as u16);
                self.stats.completed += 1;
                return Some(Completion {
                    cid: cqe.cid(),
                    status: cqe.status(),
                    sq_head: cqe.sq_head(),
                });
            }
            self.stats.stray_completions += 1;
            log::warn!("nvme: completion for unknown command id {cid} ignored");
        }
    }

    /// Publishes the CQ head; rings the doorbell if the host asked for it
    /// (it does so only when it stalled on a full completion ring).
    fn publish_cq_head(&mut self, old: u32) {
        let new = self.cq_head;
        // SAFETY: as in `publish`.
        let (head_word, event_word) = unsafe {
            (
                shared_word(self.doorbells.add(CQ_HEAD_WORD)),
                shared_word(self.events.add(CQ_HEAD_WORD)),
            )
        };
        if publish_doorbell(head_word, event_word, old, new, self.depth) {
            self.stats.doorbells += 1;
            self.doorbell.ring();
        }
    }

    /// Whether a completion is waiting to be consumed (reads the ring,
    /// consumes nothing).
    pub fn has_completion(&self) -> bool {
        // SAFETY: cq_head < depth: the slot is inside the completion ring,
        // which this queue pair's memory holds for its life.
        unsafe { peek_cqe(self.cq.add(self.cq_head as usize), self.phase) }.is_some()
    }

    /// Consumes one completion if there is one.
    pub fn poll(&mut self) -> Option<Completion> {
        let old = self.cq_head;
        let c = self.take();
        if self.cq_head != old {
            self.publish_cq_head(old);
        }
        c
    }

    /// Consumes up to `out.len()` completions, publishing the CQ head once.
    pub fn reap(&mut self, out: &mut [Completion]) -> usize {
        let old = self.cq_head;
        let mut n = 0;
        while n < out.len() {
            match self.take() {
                Some(c) => {
                    out[n] = c;
                    n += 1;
                }
                None => break,
            }
        }
        if self.cq_head != old {
            self.publish_cq_head(old);
        }
        n
    }

    /// Spins until a completion arrives; `None` if nothing is outstanding.
    pub fn wait(&mut self) -> Option<Completion> {
        while self.in_flight() > 0 {
            if let Some(c) = self.poll() {
                return Some(c);
            }
            core::hint::spin_loop();
        }
        None
    }

    /// Submits one command and spins until it completes. Needs a queue pair
    /// with nothing else outstanding.
    pub fn execute(&mut self, cmd: &Command) -> Result<(), DriverError> {
        if self.in_flight() != 0 {
            return Err(DriverError::CommandsOutstanding);
        }
        self.submit(cmd)?;
        let c = self.wait().ok_or(DriverError::CommandsOutstanding)?;
        c.result().map_err(DriverError::Device)
    }
}

#[cfg(test)]
// The tests drive queues by hand on memory each test allocates and owns.
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests {
    use super::*;
    use crate::queue::{post_cqe, read_sqe, EVENT_IDX_POLLING};
    use crate::types::QueueId;
    use alloc::boxed::Box;
    use core::cell::Cell;

    #[repr(C, align(4096))]
    struct Block([u8; 3 * 4096]);

    fn block() -> Box<Block> {
        Box::new(Block([0xaa; 3 * 4096]))
    }

    #[test]
    fn submit_and_complete_by_hand() {
        let mut mem = block();
        let rings = Cell::new(0u32);
        let base = mem.0.as_mut_ptr();
        let mut qp = unsafe {
            QueuePair::new(
                QueueMemory {
                    virt: base,
                    dma: DmaAddr(0x40_0000),
                },
                4,
                || rings.set(rings.get() + 1),
            )
        }
        .unwrap();
        let cfg = qp.config();
        assert_eq!(cfg.sq_addr, 0x40_0000);
        assert_eq!(cfg.cq_addr, 0x40_1000);
        assert_eq!(cfg.doorbell_addr, 0x40_2000);
        assert_eq!(cfg.event_idx_addr, 0x40_2040);
        assert_eq!(qp.free_slots(), 3);
        assert_eq!(qp.next_cid(), Some(CommandId(0)));
        let events = unsafe { base.add(0x2040) as *mut u32 };
        let doorbells = unsafe { base.add(0x2000) as *mut u32 };
        // Event index 0 (host not polling yet): the first submission rings.
        let cid = qp
            .submit(&Command::read(
                Lba(9),
                2,
                DataPtr::Contiguous(DmaAddr(0x1000)),
            ))
            .unwrap();
        assert_eq!(cid, CommandId(0));
        assert_eq!(rings.get(), 1);
        assert_eq!(unsafe { doorbells.read() }, 1);
        let sqe = unsafe { read_sqe(base as *const Sqe) };
        assert_eq!(sqe.opcode_raw(), 0x02);
        assert_eq!(sqe.slba(), Lba(9));
        assert_eq!(sqe.blocks(), 2);
        assert_eq!(sqe.sgl(), (DmaAddr(0x1000), 8192, 0));
        // Host polling: no more doorbells.
        unsafe {
            events.write(EVENT_IDX_POLLING);
            events.add(1).write(EVENT_IDX_POLLING);
        }
        qp.submit(&Command::flush()).unwrap();
        qp.submit(&Command::write_fua(
            Lba(1),
            1,
            DataPtr::Prp {
                prp1: DmaAddr(0x3000),
                prp2: DmaAddr(0),
            },
        ))
        .unwrap();
        assert_eq!(rings.get(), 1);
        assert_eq!(qp.submit(&Command::flush()), Err(DriverError::QueueFull));
        assert_eq!(qp.in_flight(), 3);
        assert_eq!(qp.poll(), None);
        // Complete out of order: cid 2 then 0 then 1.
        let cq = unsafe { base.add(0x1000) as *mut Cqe };
        let st = Status::from_error(NvmeError::LbaOutOfRange);
        unsafe {
            post_cqe(
                cq,
                &Cqe::new(CommandId(2), 3, QueueId(0), Status::SUCCESS, true),
            );
            post_cqe(cq.add(1), &Cqe::new(CommandId(0), 3, QueueId(0), st, true));
        }
        let mut out = [Completion::default(); 4];
        assert_eq!(qp.reap(&mut out), 2);
        assert_eq!(
            out[0],
            Completion {
                cid: CommandId(2),
                status: Status::SUCCESS,
                sq_head: 3
            }
        );
        assert_eq!(out[1].result(), Err(NvmeError::LbaOutOfRange));
        assert_eq!(unsafe { doorbells.add(1).read() }, 2);
        unsafe {
            post_cqe(
                cq.add(2),
                &Cqe::new(CommandId(1), 3, QueueId(0), Status::SUCCESS, true),
            )
        };
        assert_eq!(qp.wait().unwrap().cid, CommandId(1));
        assert_eq!(qp.wait(), None);
        assert_eq!(
            qp.stats(),
            DriverStats {
                submitted: 3,
                completed: 3,
                doorbells: 1,
                stray_completions: 0
            }
        );
        assert_eq!(
            qp.submit(&Command::read(Lba(0), 0, DataPtr::None)),
            Err(DriverError::TransferSize(0))
        );
        assert_eq!(
            qp.submit(&Command::read(
                Lba(0),
                MAX_TRANSFER_BLOCKS + 1,
                DataPtr::None
            )),
            Err(DriverError::TransferSize(MAX_TRANSFER_BLOCKS + 1))
        );
    }

    #[test]
    fn prp_list_helper() {
        let mut list = [0u64; 512];
        let pages = [DmaAddr(0x5000), DmaAddr(0x9000), DmaAddr(0x2000)];
        assert_eq!(
            prp_list(&pages[..1], &mut list, DmaAddr(0x8000)),
            Some(DataPtr::Prp {
                prp1: DmaAddr(0x5000),
                prp2: DmaAddr(0)
            })
        );
        assert_eq!(
            prp_list(&pages[..2], &mut list, DmaAddr(0x8000)),
            Some(DataPtr::Prp {
                prp1: DmaAddr(0x5000),
                prp2: DmaAddr(0x9000)
            })
        );
        assert_eq!(
            prp_list(&pages, &mut list, DmaAddr(0x8000)),
            Some(DataPtr::Prp {
                prp1: DmaAddr(0x5000),
                prp2: DmaAddr(0x8000)
            })
        );
        assert_eq!(&list[..2], &[0x9000, 0x2000]);
        assert_eq!(prp_list(&[], &mut list, DmaAddr(0x8000)), None);
        assert_eq!(prp_list(&pages, &mut list, DmaAddr(0x8004)), None);
    }

    #[test]
    fn rejects_bad_memory() {
        let mut mem = block();
        let base = mem.0.as_mut_ptr();
        let r = unsafe {
            QueuePair::new(
                QueueMemory {
                    virt: base,
                    dma: DmaAddr(0x40_0010),
                },
                4,
                || {},
            )
        };
        assert_eq!(r.err(), Some(DriverError::Misaligned(0x40_0010)));
        let r = unsafe {
            QueuePair::new(
                QueueMemory {
                    virt: base,
                    dma: DmaAddr(0),
                },
                1,
                || {},
            )
        };
        assert_eq!(r.err(), Some(DriverError::Depth(1)));
    }
}
