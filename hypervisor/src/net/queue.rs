//! The host's view of one network queue pair in guest RAM: checking its
//! registration, taking submission entries (only when their completion is
//! sure to find a slot the driver has released), posting completions with
//! the phase tag, the command ids in flight, and the event indexes and
//! waiting word of the doorbell protocol (`dbos_abi::nvme`).

use super::guest::GuestSpan;
use crate::memory::GuestRam;
use dbos_abi::net::{NetCqe, NetSqe, NetStatus};
use dbos_abi::nvme::{
    ConfigError, QueuePairConfig, CQ_HEAD_WORD, EVENT_IDX_POLLING, SQ_TAIL_WORD, WAIT_WORD,
};
use std::sync::atomic::Ordering;

/// A registered network queue pair.
pub struct NetQueue {
    pub depth: u32,
    sq: GuestSpan,
    cq: GuestSpan,
    doorbells: GuestSpan,
    events: GuestSpan,
    /// Next submission entry to take.
    pub sq_head: u32,
    /// Next completion slot, and its phase tag.
    cq_tail: u32,
    phase: bool,
    /// Entries taken whose completion is not posted yet.
    held: u32,
    cid_busy: Vec<u64>,
    /// Entries were waiting but the completion ring had no room.
    pub cq_stalled: bool,
    /// The CQ head seen when parking with the ring stalled.
    cq_head_seen: u32,
    /// The SQ tail was outside the ring when last looked at.
    pub bad_doorbell: bool,
    /// A completion was posted since the waiting word was last checked.
    pub posted: bool,
    /// The vector to send a CPU waiting on this queue pair; 0: none.
    pub interrupt: u8,
}

impl NetQueue {
    /// Checks `config` (its shape, then that each area lies inside one
    /// guest RAM region) and starts with the event indexes at "polling".
    /// `interrupts`: whether the host can send completion interrupts.
    pub fn new(
        ram: &GuestRam,
        config: &QueuePairConfig,
        interrupts: bool,
    ) -> Result<NetQueue, ConfigError> {
        config.validate_shape()?;
        if config.interrupt != 0 && !interrupts {
            return Err(ConfigError::Interrupt(config.interrupt));
        }
        let mut spans = Vec::new();
        for (what, addr, len, _) in config.areas() {
            spans.push(
                GuestSpan::new(ram, addr, len).ok_or(ConfigError::OutsideMemory {
                    what,
                    addr,
                    len,
                })?,
            );
        }
        let q = NetQueue {
            depth: u32::from(config.depth),
            sq: spans[0],
            cq: spans[1],
            doorbells: spans[2],
            events: spans[3],
            sq_head: 0,
            cq_tail: 0,
            phase: true,
            held: 0,
            cid_busy: vec![0; 1024],
            cq_stalled: false,
            cq_head_seen: 0,
            bad_doorbell: false,
            posted: false,
            // validate_shape checked 0 or 32..=254.
            interrupt: config.interrupt as u8,
        };
        q.set_events(EVENT_IDX_POLLING, EVENT_IDX_POLLING);
        Ok(q)
    }

    /// The driver's SQ tail, `None` if outside the ring.
    pub fn sq_tail(&self) -> Option<u32> {
        let tail = self.doorbells.load(SQ_TAIL_WORD, Ordering::Acquire);
        (tail < self.depth).then_some(tail)
    }

    fn cq_head(&self) -> u32 {
        self.doorbells.load(CQ_HEAD_WORD, Ordering::Acquire)
    }

    /// Completions posted and not consumed yet, per the driver's CQ head;
    /// `None` if that head is outside the ring.
    fn cq_used(&self) -> Option<u32> {
        let head = self.cq_head();
        (head < self.depth).then(|| (self.cq_tail + self.depth - head) % self.depth)
    }

    /// Takes the next submission entry, if there is one and its completion
    /// is sure to find a released slot (every entry taken gets exactly one
    /// completion, so at most `depth - 1` are held or unconsumed).
    pub fn take(&mut self) -> Option<NetSqe> {
        let Some(tail) = self.sq_tail() else {
            if !self.bad_doorbell {
                log::warn!("net: SQ tail outside a ring of {}", self.depth);
                self.bad_doorbell = true;
            }
            return None;
        };
        self.bad_doorbell = false;
        if tail == self.sq_head {
            self.cq_stalled = false;
            return None;
        }
        match self.cq_used() {
            Some(used) if self.held + used < self.depth - 1 => {}
            _ => {
                self.cq_stalled = true;
                return None;
            }
        }
        self.cq_stalled = false;
        let sqe = self.sq.read_sqe(self.sq_head);
        self.sq_head = (self.sq_head + 1) % self.depth;
        self.held += 1;
        Some(sqe)
    }

    pub fn cid_busy(&self, cid: u16) -> bool {
        self.cid_busy[usize::from(cid) / 64] & (1 << (cid % 64)) != 0
    }

    pub fn set_cid_busy(&mut self, cid: u16, busy: bool) {
        let (w, bit) = (usize::from(cid) / 64, 1u64 << (cid % 64));
        if busy {
            self.cid_busy[w] |= bit;
        } else {
            self.cid_busy[w] &= !bit;
        }
    }

    /// Posts the completion of a taken entry.
    pub fn post(&mut self, cid: u16, status: NetStatus, result: u32, conn: u32, aux: u32) {
        if self.held == 0 {
            // Cannot happen: every completion is of an entry taken.
            log::error!("net: completion of command {cid} with no command held; dropped");
            return;
        }
        let dw = NetCqe::last_dword(cid, status, self.phase);
        let cqe = NetCqe {
            result,
            conn,
            aux,
            cid: dw as u16,
            status_phase: (dw >> 16) as u16,
        };
        self.cq.post_cqe(self.cq_tail, &cqe);
        self.cq_tail += 1;
        if self.cq_tail == self.depth {
            self.cq_tail = 0;
            self.phase = !self.phase;
        }
        self.held -= 1;
        self.posted = true;
    }

    fn set_events(&self, sq: u32, cq: u32) {
        self.events.store(SQ_TAIL_WORD, sq, Ordering::Relaxed);
        self.events.store(CQ_HEAD_WORD, cq, Ordering::Relaxed);
    }

    /// Before parking: asks for a real doorbell at the next submission
    /// (SQ event index = the consumed tail), or, when entries wait for
    /// completion slots, at the next CQ head update.
    pub fn arm(&mut self) {
        let cq = if self.cq_stalled {
            self.cq_head_seen = self.cq_head();
            self.cq_head_seen
        } else {
            EVENT_IDX_POLLING
        };
        self.set_events(self.sq_head, cq);
    }

    /// Back to polling: no doorbell needed.
    pub fn disarm(&self) {
        self.set_events(EVENT_IDX_POLLING, EVENT_IDX_POLLING);
    }

    /// After [`NetQueue::arm`] and a full fence: whether the driver moved
    /// meanwhile (then the poller must not park).
    pub fn moved(&self) -> bool {
        if self.cq_stalled {
            self.cq_head() != self.cq_head_seen
        } else {
            self.sq_tail().is_some_and(|t| t != self.sq_head)
        }
    }

    /// After posting (and a full fence): takes the waiting word, returning
    /// the APIC id of the CPU to interrupt, if one waits.
    pub fn take_waiter(&self) -> Option<u32> {
        let w = self.doorbells.swap(WAIT_WORD, 0, Ordering::SeqCst);
        w.checked_sub(1)
    }
}
