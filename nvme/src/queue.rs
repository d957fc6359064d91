//! The shared queue format: entries, rings, shadow doorbells, event indexes.
//!
//! # Entries
//!
//! A submission entry ([`Sqe`], 64 bytes) and a completion entry ([`Cqe`],
//! 16 bytes) have NVMe's layouts. The commands are NVM read (0x02), write
//! (0x01, optionally with FUA, CDW12 bit 30) and flush (0x00). The starting
//! LBA is in CDW10/11, the 0-based block count in CDW12 bits 15:0.
//!
//! The data pointer (DPTR) is either
//! - PRPs (`PSDT` = 0): PRP1 is the first 4 KiB page; for two pages PRP2 is
//!   the second page; for more, PRP2 points to a PRP list of the remaining
//!   page addresses, which must fit in the rest of its page (no chaining, so
//!   with [`MAX_TRANSFER_BLOCKS`] a page-aligned list always fits);
//! - one contiguous buffer (`PSDT` = 1): an NVMe SGL *data block* descriptor
//!   in DPTR (address in bytes 0..8, length in bytes 8..12, descriptor type 0
//!   in byte 15), whose length must equal the transfer length.
//!
//! Every data page and buffer must be 4 KiB aligned.
//!
//! # Rings and phase
//!
//! Both rings have `depth` entries. The host writes a completion's first
//! 12 bytes, then (release) its last dword, which carries the command id, the
//! status and the phase tag. The phase tag is 1 on the first pass through
//! the completion ring and flips on every wrap; the driver consumes an entry
//! when its phase tag equals the phase it expects.
//!
//! # Shadow doorbells and event indexes
//!
//! The driver never writes a device register to announce work. It writes its
//! SQ tail and CQ head into two shadow doorbell words (dwords 0 and 1 at
//! [`QueuePairConfig::doorbell_addr`]), which the host polls. The host writes
//! two event indexes (dwords 0 and 1 at [`QueuePairConfig::event_idx_addr`]):
//! an event index is the ring index at which the host wants a real doorbell,
//! that is, the driver rings when its update moves the index from `old` to
//! `new` past it ([`need_event`]). While the host polls it keeps both at
//! [`EVENT_IDX_POLLING`], so a busy host costs the driver no exit; before it
//! parks it sets the SQ event index to the SQ tail it has consumed up to.
//! Both sides order "write my word; full fence; read the other's word", so
//! a submission is either seen by the host's last check or rings the bell.

use crate::types::{CommandId, DmaAddr, Lba, QueueId};
use core::sync::atomic::{AtomicU32, Ordering};
/// The registration and memory layout of a queue pair, and the shadow
/// doorbell words, are part of the host/guest ABI (`dbos_abi::nvme`).
pub use dbos_abi::nvme::{
    ConfigError, QueueLayout, QueuePairConfig, CQ_HEAD_WORD, DOORBELL_BYTES, EVENT_IDX_POLLING,
    SQ_TAIL_WORD, WAIT_WORD,
};

#[allow(unused_imports)] // used by the module docs
use crate::types::MAX_TRANSFER_BLOCKS;

/// NVM command set opcodes served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Flush = 0x00,
    Write = 0x01,
    Read = 0x02,
}

impl Opcode {
    /// Decodes a raw opcode; `None` for unsupported ones.
    pub const fn from_raw(raw: u8) -> Option<Opcode> {
        match raw {
            0x00 => Some(Opcode::Flush),
            0x01 => Some(Opcode::Write),
            0x02 => Some(Opcode::Read),
            _ => None,
        }
    }
}

/// PRP Or SGL for Data Transfer (CDW0 bits 15:14): PRPs.
pub const PSDT_PRP: u8 = 0;
/// PSDT: SGL (here: one data block descriptor in DPTR).
pub const PSDT_SGL: u8 = 1;
/// SGL identifier byte of a data block descriptor (type 0, subtype 0).
pub const SGL_DATA_BLOCK: u8 = 0x00;

bitflags::bitflags! {
    /// The single-bit command flags of CDW12 of a read or write (the number
    /// of blocks is the field in bits 15:0, see [`Sqe::blocks`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Cdw12Flags: u32 {
        /// Force Unit Access: the write is durable when it completes.
        const FUA = 1 << 30;
    }
}

/// A 64-byte NVMe submission queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    /// Opcode (7:0), fused operation (9:8), PSDT (15:14), command id (31:16).
    pub cdw0: u32,
    /// Namespace id.
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    /// Metadata pointer (unused: the namespace has no metadata).
    pub mptr: u64,
    /// Data pointer: PRP1, PRP2 or an SGL descriptor.
    pub dptr: [u64; 2],
    /// Starting LBA, low dword.
    pub cdw10: u32,
    /// Starting LBA, high dword.
    pub cdw11: u32,
    /// 0-based number of blocks (15:0), FUA (30).
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<Sqe>() == 64);
const _: () = assert!(core::mem::size_of::<Cqe>() == 16);

impl Sqe {
    /// A zeroed entry with an opcode, a command id and a namespace.
    pub const fn new(opcode: Opcode, cid: CommandId, nsid: u32) -> Sqe {
        Sqe {
            cdw0: opcode as u32 | (cid.0 as u32) << 16,
            nsid,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr: [0; 2],
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// Raw opcode byte.
    pub const fn opcode_raw(&self) -> u8 {
        self.cdw0 as u8
    }

    /// Fused operation field.
    pub const fn fuse(&self) -> u8 {
        ((self.cdw0 >> 8) & 0x3) as u8
    }

    /// PRP or SGL for data transfer field.
    pub const fn psdt(&self) -> u8 {
        ((self.cdw0 >> 14) & 0x3) as u8
    }

    /// Command identifier.
    pub const fn cid(&self) -> CommandId {
        CommandId((self.cdw0 >> 16) as u16)
    }

    /// Replaces the command identifier.
    pub fn set_cid(&mut self, cid: CommandId) {
        self.cdw0 = (self.cdw0 & 0xffff) | (cid.0 as u32) << 16;
    }

    /// Starting LBA.
    pub const fn slba(&self) -> Lba {
        Lba(self.cdw10 as u64 | (self.cdw11 as u64) << 32)
    }

    /// Number of blocks (1..=65536; the field is 0-based).
    pub const fn blocks(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// The command flags of CDW12.
    pub const fn cdw12_flags(&self) -> Cdw12Flags {
        Cdw12Flags::from_bits_truncate(self.cdw12)
    }

    /// Force unit access.
    pub const fn fua(&self) -> bool {
        self.cdw12_flags().contains(Cdw12Flags::FUA)
    }

    /// Sets the LBA range; `blocks` must be in 1..=65536 (0 wraps to 65536).
    pub fn set_range(&mut self, lba: Lba, blocks: u32) {
        self.cdw10 = lba.0 as u32;
        self.cdw11 = (lba.0 >> 32) as u32;
        self.cdw12 = (self.cdw12 & !0xffff) | (blocks.wrapping_sub(1) & 0xffff);
    }

    /// Sets or clears FUA.
    pub fn set_fua(&mut self, fua: bool) {
        if fua {
            self.cdw12 |= Cdw12Flags::FUA.bits();
        } else {
            self.cdw12 &= !Cdw12Flags::FUA.bits();
        }
    }

    /// Sets a PRP data pointer.
    pub fn set_prp(&mut self, prp1: DmaAddr, prp2: DmaAddr) {
        self.cdw0 &= !(0x3 << 14);
        self.dptr = [prp1.0, prp2.0];
    }

    /// Sets a single contiguous buffer (an SGL data block descriptor).
    pub fn set_sgl_block(&mut self, addr: DmaAddr, len: u32) {
        self.cdw0 = (self.cdw0 & !(0x3 << 14)) | (PSDT_SGL as u32) << 14;
        self.dptr = [addr.0, len as u64 | (SGL_DATA_BLOCK as u64) << 56];
    }

    /// SGL descriptor fields of DPTR: (address, length, identifier byte).
    pub const fn sgl(&self) -> (DmaAddr, u32, u8) {
        (
            DmaAddr(self.dptr[0]),
            self.dptr[1] as u32,
            (self.dptr[1] >> 56) as u8,
        )
    }
}

/// A 16-byte NVMe completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific (0 here).
    pub dw0: u32,
    pub dw1: u32,
    /// SQ head pointer (15:0), SQ identifier (31:16).
    pub dw2: u32,
    /// Command id (15:0), phase tag (16), status field (31:17).
    pub dw3: u32,
}

impl Cqe {
    /// A completion entry.
    pub const fn new(
        cid: CommandId,
        sq_head: u16,
        sq_id: QueueId,
        status: crate::Status,
        phase: bool,
    ) -> Cqe {
        Cqe {
            dw0: 0,
            dw1: 0,
            dw2: sq_head as u32 | (sq_id.0 as u32) << 16,
            dw3: cid.0 as u32 | (phase as u32) << 16 | ((status.0 as u32) & 0x7fff) << 17,
        }
    }

    /// The SQ head the host had reached when it posted this entry.
    pub const fn sq_head(&self) -> u16 {
        self.dw2 as u16
    }

    /// The submission queue the command came from.
    pub const fn sq_id(&self) -> QueueId {
        QueueId((self.dw2 >> 16) as u16)
    }

    /// Command identifier.
    pub const fn cid(&self) -> CommandId {
        CommandId(self.dw3 as u16)
    }

    /// Phase tag.
    pub const fn phase(&self) -> bool {
        self.dw3 & (1 << 16) != 0
    }

    /// Status field.
    pub const fn status(&self) -> crate::Status {
        crate::Status((self.dw3 >> 17) as u16)
    }
}

/// Whether moving a ring index from `old` to `new` (forward, modulo `depth`)
/// passes the event index `event`, i.e. `event` is in `[old, new)` modulo
/// `depth`. An event index outside the ring (such as [`EVENT_IDX_POLLING`])
/// never asks for a doorbell.
pub const fn need_event(event: u32, new: u32, old: u32, depth: u32) -> bool {
    if event >= depth || new >= depth || old >= depth {
        return false;
    }
    let span = (new + depth - old) % depth;
    let dist = (event + depth - old) % depth;
    dist < span
}

/// Publishes a driver's index (an SQ tail or a CQ head, moving from `old`
/// to `new`) in its shadow doorbell `word` and says whether the host asked
/// for a real doorbell (its event index `event` lies in `[old, new)`): the
/// driver's side of the protocol, shared by the disk's and the network's
/// queue pairs.
///
/// Invariant: the index is written, then a full fence, then the event
/// index read; the host writes the event index, fences, and reads the
/// index once more before it parks. So either the host sees the new index
/// or this side sees the host's event index and rings.
pub fn publish_doorbell(
    word: &AtomicU32,
    event: &AtomicU32,
    old: u32,
    new: u32,
    depth: u32,
) -> bool {
    word.store(new, Ordering::Release);
    core::sync::atomic::fence(Ordering::SeqCst);
    need_event(event.load(Ordering::Relaxed), new, old, depth)
}

/// The shared dword at `ptr` as an atomic.
///
/// # Safety
/// `ptr` must be valid for reads and writes of 4 bytes, 4-byte aligned, and
/// stay so for `'a`; other parties may access it only atomically or with
/// volatile accesses.
pub(crate) unsafe fn shared_word<'a>(ptr: *mut u32) -> &'a AtomicU32 {
    // SAFETY: the caller guarantees validity, alignment and lifetime;
    // AtomicU32 has the same layout as u32.
    unsafe { AtomicU32::from_ptr(ptr) }
}

/// Copies a submission entry out of shared memory (the host's side).
#[cfg_attr(target_os = "none", allow(dead_code))]
///
/// # Safety
/// `slot` must be valid for a 64-byte read and 8-byte aligned.
pub(crate) unsafe fn read_sqe(slot: *const Sqe) -> Sqe {
    // SAFETY: guaranteed by the caller; volatile because the other side may
    // write the memory concurrently (a hostile one at any time).
    unsafe { core::ptr::read_volatile(slot) }
}

/// Writes a submission entry into shared memory (published later by the
/// release store of the SQ tail).
///
/// # Safety
/// `slot` must be valid for a 64-byte write and 8-byte aligned.
pub(crate) unsafe fn write_sqe(slot: *mut Sqe, sqe: &Sqe) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_volatile(slot, *sqe) }
}

/// Posts a completion entry (the host's side): the first three dwords,
/// then the last one (with the phase tag) with release ordering.
#[cfg_attr(target_os = "none", allow(dead_code))]
///
/// # Safety
/// `slot` must be valid for a 16-byte write and 16-byte aligned.
pub(crate) unsafe fn post_cqe(slot: *mut Cqe, cqe: &Cqe) {
    let words = slot as *mut u32;
    // SAFETY: guaranteed by the caller; the dwords are inside the entry.
    unsafe {
        core::ptr::write_volatile(words, cqe.dw0);
        core::ptr::write_volatile(words.add(1), cqe.dw1);
        core::ptr::write_volatile(words.add(2), cqe.dw2);
        shared_word(words.add(3)).store(cqe.dw3, Ordering::Release);
    }
}

/// Reads the completion entry in `slot` if its phase tag is `phase`.
///
/// # Safety
/// `slot` must be valid for a 16-byte read and 16-byte aligned.
pub(crate) unsafe fn peek_cqe(slot: *mut Cqe, phase: bool) -> Option<Cqe> {
    let words = slot as *mut u32;
    // SAFETY: guaranteed by the caller; the acquire load of dword 3 orders
    // the reads of dwords 0..3 after the host's release store.
    unsafe {
        let dw3 = shared_word(words.add(3)).load(Ordering::Acquire);
        if (dw3 & (1 << 16) != 0) != phase {
            return None;
        }
        Some(Cqe {
            dw0: core::ptr::read_volatile(words),
            dw1: core::ptr::read_volatile(words.add(1)),
            dw2: core::ptr::read_volatile(words.add(2)),
            dw3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NvmeError, Status};

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::new(Opcode::Write, CommandId(0xbeef), 1);
        s.set_range(Lba(0x1_2345_6789), 256);
        s.set_fua(true);
        s.set_sgl_block(DmaAddr(0x7000), 256 * 4096);
        assert_eq!(s.opcode_raw(), 0x01);
        assert_eq!(s.cid(), CommandId(0xbeef));
        assert_eq!(s.slba(), Lba(0x1_2345_6789));
        assert_eq!(s.blocks(), 256);
        assert_eq!(s.cdw12, 255 | 1 << 30);
        assert_eq!(Cdw12Flags::FUA.bits(), 0x4000_0000);
        assert_eq!(s.cdw12_flags(), Cdw12Flags::FUA);
        assert!(s.fua());
        assert_eq!(s.psdt(), PSDT_SGL);
        assert_eq!(s.sgl(), (DmaAddr(0x7000), 0x10_0000, 0));
        s.set_prp(DmaAddr(0x1000), DmaAddr(0x2000));
        assert_eq!(s.psdt(), PSDT_PRP);
        assert_eq!(s.cid(), CommandId(0xbeef));
        s.set_fua(false);
        assert_eq!(s.cdw12, 255);
        assert_eq!(s.cdw12_flags(), Cdw12Flags::empty());
        // Byte layout as NVMe defines it.
        // SAFETY: Sqe is plain old data of 64 bytes.
        let bytes: [u8; 64] = unsafe { core::mem::transmute(s) };
        assert_eq!(bytes[0], 0x01);
        assert_eq!(&bytes[2..4], &0xbeefu16.to_le_bytes());
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[24..32], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0x2000u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &0x1_2345_6789u64.to_le_bytes());
    }

    #[test]
    fn cqe_fields() {
        let st = Status::from_error(NvmeError::LbaOutOfRange);
        let c = Cqe::new(CommandId(7), 33, QueueId(2), st, true);
        assert_eq!(c.cid(), CommandId(7));
        assert_eq!(c.sq_head(), 33);
        assert_eq!(c.sq_id(), QueueId(2));
        assert!(c.phase());
        assert_eq!(c.status(), st);
        assert_eq!(c.dw3, 7 | 1 << 16 | 0x4080 << 17);
        let c = Cqe::new(CommandId(0xffff), 0, QueueId(0), Status::SUCCESS, false);
        assert!(!c.phase());
        assert_eq!(c.status(), Status::SUCCESS);
    }

    #[test]
    fn event_index() {
        // Host parked with the SQ consumed up to 5: moving 5 -> 6 rings.
        assert!(need_event(5, 6, 5, 8));
        // Moving 6 -> 7 does not ring again.
        assert!(!need_event(5, 7, 6, 8));
        // A batch 5 -> 1 (wrapping) passing 7 rings.
        assert!(need_event(7, 1, 5, 8));
        assert!(need_event(0, 1, 5, 8));
        assert!(!need_event(1, 1, 5, 8));
        assert!(!need_event(4, 1, 5, 8));
        // No movement never rings.
        assert!(!need_event(5, 5, 5, 8));
        // Polling host never asks for a doorbell.
        assert!(!need_event(EVENT_IDX_POLLING, 6, 5, 8));
        assert!(!need_event(8, 6, 5, 8));
    }
}
