//! The network, from the guest: the TCP connections the VMM accepts on the
//! ports given with `dbos run --listen`, reached through a network queue
//! pair in guest RAM (`dbos_abi::net` has the entries and the protocol).
//!
//! [`info`] names the listeners; [`NetQueue::new`] allocates the rings in
//! DMA memory and registers them with the VMM's network poller. Commands
//! are queued with [`NetQueue::accept`], [`NetQueue::recv`],
//! [`NetQueue::send`] and [`NetQueue::close`], published together by the
//! next [`NetQueue::poll`] (one shadow-doorbell update, and one exiting
//! doorbell only if the host's poller has parked), and come back as
//! [`Event`]s. Buffers are owned by the queue while the host may use them:
//! a receive or send takes a `Vec<u8>` (heap memory, which is physically
//! contiguous in the direct map) and its event gives it back, so no buffer
//! can be freed or moved under the host.
//!
//! [`NetQueue::wait`] sleeps (`hlt`) until the host posts a completion and
//! sends the queue's interrupt, as the disk does, so an idle server costs
//! its CPU nothing. A queue pair is one vCPU's: it is `Send`, not shared.
//! Dropping it gives the rings back to the host (which closes the
//! connections it accepted) and frees them.

use crate::abi::net::{
    ConnId, NetCqe, NetInfoArgs, NetOp, NetQueueArgs, NetSqe, NetStatsArgs, NetStatus, QueueIdArgs,
    MAX_NET_IO,
};
use crate::abi::nvme::{CQ_HEAD_WORD, SQ_TAIL_WORD, WAIT_WORD};
use crate::abi::{calls, DoorbellArgs, QueueLayout};
use crate::dma::{self, DmaBuf};
use crate::hypercall;
use crate::memory::virt_to_phys;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

/// The network as the VMM offers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetInfo {
    /// Each listener's port, by listener index (the order of `--listen`).
    pub ports: Vec<u16>,
    /// Most connections open at once (clients beyond are refused by the
    /// host as they connect).
    pub max_connections: u32,
}

/// The VM's network, `None` if it was started without `--listen`.
pub fn info() -> Option<NetInfo> {
    let mut args = NetInfoArgs::default();
    hypercall::call(calls::NetInfo, &mut args);
    let n = (args.listeners as usize).min(args.ports.len());
    (n > 0).then(|| NetInfo {
        ports: args.ports[..n].to_vec(),
        max_connections: args.max_connections,
    })
}

/// The host's network counters (all zero without a network).
pub fn host_stats() -> NetStatsArgs {
    let mut args = NetStatsArgs::default();
    hypercall::call(calls::NetStats, &mut args);
    args
}

/// Why a network queue pair could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The VM has no network (no `--listen`).
    NoNetwork,
    /// The depth is outside 2..=4096.
    Depth(u16),
    /// No DMA memory for the rings.
    OutOfMemory,
    /// The host refused the queue pair (negative errno).
    Refused(i64),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::NoNetwork => f.write_str("the VM has no network (run with --listen)"),
            SetupError::Depth(d) => write!(f, "network queue depth {d} is outside 2..=4096"),
            SetupError::OutOfMemory => f.write_str("no memory for the network queue's rings"),
            SetupError::Refused(e) => {
                write!(f, "the host refused the network queue (errno {})", -e)
            }
        }
    }
}

/// Why a command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// `depth - 1` commands are in flight: poll for completions first.
    QueueFull,
    /// The buffer is empty or longer than [`MAX_NET_IO`].
    BufferSize(usize),
}

/// A finished command.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A client connected to listener `listener`.
    Accepted { listener: u32, conn: ConnId },
    /// Bytes arrived: `data` holds them (its length is the count). Empty:
    /// the client closed its side; nothing more will arrive.
    Received { conn: ConnId, data: Vec<u8> },
    /// Every byte of `data` was handed to the socket; the buffer comes back.
    Sent { conn: ConnId, data: Vec<u8> },
    /// The connection is closed (its id is no longer valid).
    Closed { conn: ConnId },
    /// The host failed the command ([`NetStatus::Reset`]: the client is
    /// gone; [`NetStatus::Aborted`]: its connection was closed first). A
    /// receive's or send's buffer comes back in `data`.
    Failed {
        op: NetOp,
        conn: u32,
        status: NetStatus,
        data: Option<Vec<u8>>,
    },
}

/// A command in flight: what the completion needs to become an [`Event`].
struct Pending {
    op: NetOp,
    conn: u32,
    buf: Option<Vec<u8>>,
}

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetQueueStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions consumed.
    pub completed: u64,
    /// Real doorbells rung (each a VM exit).
    pub doorbells: u64,
    /// Times [`NetQueue::wait`] slept until the host's interrupt.
    pub sleeps: u64,
}

/// Real doorbells rung by every network queue pair (each a VM exit).
pub static DOORBELLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A network queue pair (see the module documentation).
pub struct NetQueue {
    mem: DmaBuf,
    id: u64,
    sq: *mut NetSqe,
    cq: *mut NetCqe,
    doorbells: *mut u32,
    events: *mut u32,
    depth: u32,
    sq_tail: u32,
    published_tail: u32,
    cq_head: u32,
    phase: bool,
    free_cids: Vec<u16>,
    pending: Vec<Option<Pending>>,
    stats: NetQueueStats,
}

// SAFETY: the queue exclusively owns its driver-side state and its ring
// memory; the shared words are accessed atomically and the entries with
// volatile copies, which is sound from any CPU.
unsafe impl Send for NetQueue {}

/// The shared dword at `ptr` as an atomic.
///
/// # Safety
/// `ptr` must be 4-byte aligned inside a live queue pair's memory (which
/// outlives every use here: the queue owns it).
unsafe fn word<'a>(ptr: *mut u32) -> &'a AtomicU32 {
    // SAFETY: the caller guarantees alignment and lifetime; AtomicU32 has
    // u32's layout, and the host accesses the word only atomically.
    unsafe { AtomicU32::from_ptr(ptr) }
}

impl NetQueue {
    /// Creates a queue pair of `depth` entries per ring and registers it
    /// with the host.
    pub fn new(depth: u16) -> Result<NetQueue, SetupError> {
        if info().is_none() {
            return Err(SetupError::NoNetwork);
        }
        let layout = QueueLayout::new(depth).ok_or(SetupError::Depth(depth))?;
        let mem = dma::alloc_zeroed(layout.size() as usize).ok_or(SetupError::OutOfMemory)?;
        let mut config = layout.config(mem.phys);
        // A CPU waiting for a completion sleeps until the host sends WAKE.
        config.interrupt = u16::from(crate::apic::vector::WAKE);
        let mut args = NetQueueArgs {
            queue: config,
            status: 0,
        };
        hypercall::call(calls::NetCreateQueue, &mut args);
        if args.status < 0 {
            // SAFETY: the host refused the rings, so it never touches them;
            // `mem` came from `alloc_zeroed` and nothing else uses it.
            unsafe { dma::free(mem) };
            return Err(SetupError::Refused(args.status));
        }
        let at = |off: u64| mem.virt.wrapping_add(off as usize);
        Ok(NetQueue {
            mem,
            id: args.status as u64,
            sq: at(layout.sq_offset()).cast(),
            cq: at(layout.cq_offset()).cast(),
            doorbells: at(layout.doorbell_offset()).cast(),
            events: at(layout.event_idx_offset()).cast(),
            depth: u32::from(depth),
            sq_tail: 0,
            published_tail: 0,
            cq_head: 0,
            phase: true,
            free_cids: (0..depth - 1).rev().collect(),
            pending: (0..depth - 1).map(|_| None).collect(),
            stats: NetQueueStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> NetQueueStats {
        self.stats
    }

    /// Commands in flight (submitted, not yet turned into events).
    pub fn in_flight(&self) -> usize {
        self.pending.len() - self.free_cids.len()
    }

    /// Commands that can be queued now.
    pub fn free_slots(&self) -> usize {
        self.free_cids.len()
    }

    /// Writes one entry into the next SQ slot (published by the next
    /// [`poll`](Self::poll) or [`wait`](Self::wait)).
    fn push(&mut self, mut sqe: NetSqe, pending: Pending) -> Result<(), SubmitError> {
        let cid = self.free_cids.pop().ok_or(SubmitError::QueueFull)?;
        sqe.cid = cid;
        // SAFETY: sq_tail < depth, so the slot lies in the submission ring
        // this queue owns; the host reads it only after the tail is
        // published (release), so a plain volatile write is enough.
        unsafe { core::ptr::write_volatile(self.sq.add(self.sq_tail as usize), sqe) };
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        self.pending[usize::from(cid)] = Some(pending);
        self.stats.submitted += 1;
        Ok(())
    }

    /// Queues taking the next client of listener `listener`.
    pub fn accept(&mut self, listener: u32) -> Result<(), SubmitError> {
        let sqe = NetSqe {
            opcode: NetOp::Accept as u8,
            conn: listener,
            ..NetSqe::default()
        };
        self.push(
            sqe,
            Pending {
                op: NetOp::Accept,
                conn: listener,
                buf: None,
            },
        )
    }

    /// The buffer's address and length for the host, checked.
    fn buffer(ptr: *const u8, len: usize) -> Result<(u64, u32), SubmitError> {
        if len == 0 || len > MAX_NET_IO as usize {
            return Err(SubmitError::BufferSize(len));
        }
        // Heap memory lies in the direct map: physically contiguous.
        let phys = virt_to_phys(ptr as u64).ok_or(SubmitError::BufferSize(len))?;
        Ok((phys, len as u32))
    }

    /// Queues a receive into `buf`'s spare capacity (its length is reset to
    /// 0 first; at most [`MAX_NET_IO`] bytes). On error the buffer comes
    /// back with it.
    pub fn recv(&mut self, conn: ConnId, mut buf: Vec<u8>) -> Result<(), (SubmitError, Vec<u8>)> {
        buf.clear();
        let len = buf.capacity().min(MAX_NET_IO as usize);
        let (addr, len) = match Self::buffer(buf.as_ptr(), len) {
            Ok(b) => b,
            Err(e) => return Err((e, buf)),
        };
        self.io(NetOp::Recv, conn, addr, len, buf)
    }

    /// Queues sending all of `buf` (1..=[`MAX_NET_IO`] bytes).
    pub fn send(&mut self, conn: ConnId, buf: Vec<u8>) -> Result<(), (SubmitError, Vec<u8>)> {
        let (addr, len) = match Self::buffer(buf.as_ptr(), buf.len()) {
            Ok(b) => b,
            Err(e) => return Err((e, buf)),
        };
        self.io(NetOp::Send, conn, addr, len, buf)
    }

    fn io(
        &mut self,
        op: NetOp,
        conn: ConnId,
        addr: u64,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(), (SubmitError, Vec<u8>)> {
        if self.free_cids.is_empty() {
            return Err((SubmitError::QueueFull, buf));
        }
        let sqe = NetSqe {
            opcode: op as u8,
            conn: conn.0,
            addr,
            len,
            ..NetSqe::default()
        };
        let pending = Pending {
            op,
            conn: conn.0,
            buf: Some(buf),
        };
        // A command id is free (checked above), so the push succeeds.
        self.push(sqe, pending).map_err(|e| (e, Vec::new()))
    }

    /// Queues closing `conn`; its pending receive and send come back first,
    /// failed with [`NetStatus::Aborted`].
    pub fn close(&mut self, conn: ConnId) -> Result<(), SubmitError> {
        let sqe = NetSqe {
            opcode: NetOp::Close as u8,
            conn: conn.0,
            ..NetSqe::default()
        };
        self.push(
            sqe,
            Pending {
                op: NetOp::Close,
                conn: conn.0,
                buf: None,
            },
        )
    }

    /// Publishes the queued commands; rings the exiting doorbell if the
    /// host's poller has parked and asked for one.
    fn publish(&mut self) {
        let (old, new) = (self.published_tail, self.sq_tail);
        if old == new {
            return;
        }
        self.published_tail = new;
        // SAFETY: the doorbell and event-index dwords lie in this queue's
        // memory, 4-byte aligned (the layout).
        let (tail, event) = unsafe {
            (
                word(self.doorbells.add(SQ_TAIL_WORD)),
                word(self.events.add(SQ_TAIL_WORD)),
            )
        };
        // The doorbell protocol's invariant is `publish_doorbell`'s.
        if dbos_nvme::queue::publish_doorbell(tail, event, old, new, self.depth) {
            self.stats.doorbells += 1;
            DOORBELLS.fetch_add(1, Ordering::Relaxed);
            hypercall::call(calls::NetDoorbell, &mut DoorbellArgs {});
        }
    }

    /// The completion at the CQ head, if the host has posted it.
    fn peek(&self) -> Option<NetCqe> {
        // SAFETY: cq_head < depth: the slot lies in the completion ring.
        let slot = unsafe { self.cq.add(self.cq_head as usize) };
        // SAFETY: the last dword of the 16-byte entry, 4-byte aligned.
        let last = unsafe { word(slot.cast::<u32>().add(3)) };
        // Acquire: the host writes the first 12 bytes, then this dword with
        // release.
        let dw = last.load(Ordering::Acquire);
        let phase = (dw >> 16) & 1 != 0;
        if phase != self.phase {
            return None;
        }
        // SAFETY: as above; the entry is complete (acquire above).
        let mut cqe = unsafe { core::ptr::read_volatile(slot) };
        cqe.cid = dw as u16;
        cqe.status_phase = (dw >> 16) as u16;
        Some(cqe)
    }

    /// Whether a completion is waiting.
    pub fn has_completion(&self) -> bool {
        self.peek().is_some()
    }

    /// Publishes queued commands, then turns every posted completion into
    /// an [`Event`] appended to `events`. Returns how many it appended.
    pub fn poll(&mut self, events: &mut Vec<Event>) -> usize {
        self.publish();
        let mut n = 0;
        while let Some(cqe) = self.peek() {
            self.cq_head = (self.cq_head + 1) % self.depth;
            if self.cq_head == 0 {
                self.phase = !self.phase;
            }
            // SAFETY: the CQ head dword lies in this queue's memory.
            unsafe { word(self.doorbells.add(CQ_HEAD_WORD)) }
                .store(self.cq_head, Ordering::Release);
            let Some(p) = self
                .pending
                .get_mut(usize::from(cqe.cid))
                .and_then(Option::take)
            else {
                log::warn!(
                    "net: completion for command id {}, which is not in flight",
                    cqe.cid
                );
                continue;
            };
            self.free_cids.push(cqe.cid);
            self.stats.completed += 1;
            events.push(Self::event(p, &cqe));
            n += 1;
        }
        n
    }

    fn event(p: Pending, cqe: &NetCqe) -> Event {
        let status = cqe.status().unwrap_or(NetStatus::InvalidCommand);
        if status != NetStatus::Success {
            return Event::Failed {
                op: p.op,
                conn: p.conn,
                status,
                data: p.buf,
            };
        }
        match p.op {
            NetOp::Accept => Event::Accepted {
                listener: cqe.aux,
                conn: ConnId(cqe.result),
            },
            NetOp::Recv => {
                let mut data = p.buf.unwrap_or_default();
                let n = (cqe.result as usize).min(data.capacity());
                // SAFETY: the host wrote `n` bytes into the spare capacity
                // (it never writes past the length it was given, which was
                // at most the capacity); u8 has no invalid values.
                unsafe { data.set_len(n) };
                Event::Received {
                    conn: ConnId(p.conn),
                    data,
                }
            }
            NetOp::Send => Event::Sent {
                conn: ConnId(p.conn),
                data: p.buf.unwrap_or_default(),
            },
            NetOp::Close => Event::Closed {
                conn: ConnId(p.conn),
            },
        }
    }

    /// Publishes queued commands and, if no completion is waiting and
    /// commands are in flight, sleeps until the host posts one (with
    /// interrupts off it returns at once; the caller polls).
    pub fn wait(&mut self) {
        self.publish();
        if self.in_flight() == 0 {
            return;
        }
        // SAFETY: the waiting word lies in this queue's memory.
        let waiting = unsafe { word(self.doorbells.add(WAIT_WORD)) };
        if crate::nvme::sleep_until_woken(waiting, &|| self.has_completion()) {
            self.stats.sleeps += 1;
        }
    }
}

impl Drop for NetQueue {
    /// Gives the queue pair back: the host stops serving it and closes its
    /// connections; then its memory is freed. If the host does not confirm,
    /// the memory is leaked rather than freed under it.
    fn drop(&mut self) {
        let mut args = QueueIdArgs {
            queue: self.id,
            status: 0,
        };
        hypercall::call(calls::NetDestroyQueue, &mut args);
        if args.status < 0 {
            log::error!(
                "net: the host did not give back queue pair {} (errno {}); its memory is kept",
                self.id,
                -args.status
            );
            return;
        }
        // SAFETY: the host no longer touches the rings (it returned from
        // the destroy call), and they came from `alloc_zeroed` unchanged.
        unsafe { dma::free(self.mem) };
    }
}
