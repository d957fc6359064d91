//! The network queue pair: how a guest reaches the TCP connections the VMM
//! accepts on the ports given with `dbos run --listen`.
//!
//! # Shape
//!
//! A network queue pair has the NVMe queue pair's memory shape and
//! doorbell protocol ([`crate::nvme`]): a submission ring of 64-byte
//! [`NetSqe`]s, a completion ring of 16-byte [`NetCqe`]s with a phase tag,
//! shadow doorbells (SQ tail, CQ head, the waiting word) and event indexes,
//! registered once with [`Hypercall::NetCreateQueue`](crate::Hypercall::NetCreateQueue)
//! in a [`QueuePairConfig`](crate::QueuePairConfig) (laid out by
//! [`QueueLayout`](crate::QueueLayout)). A host poller thread serves it;
//! while it polls, the guest pays no exit per message; once it parks, it
//! says so through the SQ event index and the guest's next submission
//! rings the one exiting doorbell,
//! [`Hypercall::NetDoorbell`](crate::Hypercall::NetDoorbell). A guest CPU
//! with nothing to do may sleep until the next completion with the
//! waiting word and the queue's interrupt vector, as on the disk.
//!
//! # Commands
//!
//! The guest never names a host address: it takes connections from the
//! listeners the VMM offers ([`NetInfoArgs`]) and moves bytes between them
//! and its own buffers.
//!
//! | opcode | `conn` | `addr`, `len` | completes with |
//! |---|---|---|---|
//! | [`NetOp::Accept`] | listener index | - | a client connected: `result` = its [`ConnId`], `aux` = the listener |
//! | [`NetOp::Recv`] | connection | buffer to fill | bytes received (> 0), or 0: the client closed its side |
//! | [`NetOp::Send`] | connection | bytes to send | `len`, once every byte was handed to the socket |
//! | [`NetOp::Close`] | connection | - | the connection is closed, its pending commands completed first with [`NetStatus::Aborted`] |
//!
//! A connection belongs to the queue pair that accepted it; at most one
//! receive and one send are pending on it at a time ([`NetStatus::Busy`]
//! otherwise). Commands on one connection complete in no particular order
//! relative to other connections'. A command that can wait (accept,
//! receive, send to a slow client) stays pending without costing the
//! guest anything.
//!
//! # Validation
//!
//! The host checks every entry: the opcode, that reserved fields are zero,
//! a buffer of 1..=[`MAX_NET_IO`] bytes inside guest RAM, a connection id
//! this queue pair was given and has not closed, a command id not already
//! in flight. A bad entry completes with an error status and changes
//! nothing; a hostile guest can only fail its own commands.

use crate::Pod;

/// Bytes of a submission entry (as the disk's: the layouts are shared).
pub const NET_SQE_SIZE: u64 = crate::nvme::SQE_SIZE;
/// Bytes of a completion entry.
pub const NET_CQE_SIZE: u64 = crate::nvme::CQE_SIZE;

/// Most listeners a VM has (`--listen` given at most this often).
pub const MAX_LISTENERS: usize = 8;

/// Largest buffer of one receive or send.
pub const MAX_NET_IO: u32 = 1 << 20;

/// Most network queue pairs one VM serves at once.
pub const MAX_NET_QUEUES: usize = 64;

/// A connection, as the host names it to the guest that accepted it.
/// Ids are not reused soon: a stale id gets [`NetStatus::InvalidConnection`],
/// never another client's connection.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

impl core::fmt::Display for ConnId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// What a submission entry asks for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetOp {
    /// Take the next client of listener `conn`.
    Accept = 1,
    /// Receive up to `len` bytes into `addr`.
    Recv = 2,
    /// Send the `len` bytes at `addr`.
    Send = 3,
    /// Close the connection.
    Close = 4,
}

impl NetOp {
    /// Decodes an opcode; `None` for unknown ones.
    pub const fn from_raw(raw: u8) -> Option<NetOp> {
        match raw {
            1 => Some(NetOp::Accept),
            2 => Some(NetOp::Recv),
            3 => Some(NetOp::Send),
            4 => Some(NetOp::Close),
            _ => None,
        }
    }
}

/// A completion's status (15 bits of [`NetCqe::status_phase`]).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetStatus {
    Success = 0,
    /// Unknown opcode, or reserved fields not zero.
    InvalidCommand = 1,
    /// No such connection on this queue pair (never given, or closed).
    InvalidConnection = 2,
    /// The buffer is empty, longer than [`MAX_NET_IO`], or not inside guest
    /// RAM.
    InvalidBuffer = 3,
    /// A receive (or a send) is already pending on this connection.
    Busy = 4,
    /// The command id is already in flight on this queue pair.
    CidConflict = 5,
    /// The connection failed (reset by the client, or a socket error):
    /// nothing more can be sent or received; close it.
    Reset = 6,
    /// Cancelled: its connection was closed, or its queue pair given back.
    Aborted = 7,
    /// No listener with this index.
    InvalidListener = 8,
}

impl NetStatus {
    /// Decodes a status; `None` for unknown ones.
    pub const fn from_raw(raw: u16) -> Option<NetStatus> {
        Some(match raw {
            0 => NetStatus::Success,
            1 => NetStatus::InvalidCommand,
            2 => NetStatus::InvalidConnection,
            3 => NetStatus::InvalidBuffer,
            4 => NetStatus::Busy,
            5 => NetStatus::CidConflict,
            6 => NetStatus::Reset,
            7 => NetStatus::Aborted,
            8 => NetStatus::InvalidListener,
            _ => return None,
        })
    }

    /// What it means, in a few words.
    pub const fn describe(self) -> &'static str {
        match self {
            NetStatus::Success => "success",
            NetStatus::InvalidCommand => "invalid command",
            NetStatus::InvalidConnection => "no such connection",
            NetStatus::InvalidBuffer => "buffer outside guest memory or of a bad length",
            NetStatus::Busy => "another command of this kind is pending on the connection",
            NetStatus::CidConflict => "command id already in flight",
            NetStatus::Reset => "connection reset",
            NetStatus::Aborted => "aborted: the connection was closed",
            NetStatus::InvalidListener => "no such listener",
        }
    }
}

impl core::fmt::Display for NetStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A submission entry (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSqe {
    /// A [`NetOp`].
    pub opcode: u8,
    /// Must be 0.
    pub flags: u8,
    /// Command id, echoed in the completion; unique among the queue pair's
    /// commands in flight.
    pub cid: u16,
    /// The connection ([`ConnId`]), or the listener index for
    /// [`NetOp::Accept`].
    pub conn: u32,
    /// Guest-physical address of the buffer ([`NetOp::Recv`],
    /// [`NetOp::Send`]; 0 otherwise). It must be physically contiguous.
    pub addr: u64,
    /// Its length in bytes, 1..=[`MAX_NET_IO`] (0 otherwise).
    pub len: u32,
    /// Must be 0.
    pub _reserved0: u32,
    /// Must be 0.
    pub _reserved: [u64; 5],
}

/// A completion entry (16 bytes). The host writes the first 12 bytes, then
/// (release) the last dword, which carries the command id, the status and
/// the phase tag, as on the disk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCqe {
    /// Bytes received or sent, or the new [`ConnId`] of an accept.
    pub result: u32,
    /// The connection the command named (the listener, for an accept).
    pub conn: u32,
    /// For an accept: the listener's index; 0 otherwise.
    pub aux: u32,
    /// The command id of the submission.
    pub cid: u16,
    /// Bit 0: the phase tag; bits 15:1: the [`NetStatus`].
    pub status_phase: u16,
}

impl NetCqe {
    /// The phase tag.
    pub const fn phase(&self) -> bool {
        self.status_phase & 1 != 0
    }

    /// The raw status (15 bits).
    pub const fn status_raw(&self) -> u16 {
        self.status_phase >> 1
    }

    /// The status, `None` if the host wrote an unknown one.
    pub const fn status(&self) -> Option<NetStatus> {
        NetStatus::from_raw(self.status_raw())
    }

    /// The last dword for `cid`, `status` and `phase`.
    pub const fn last_dword(cid: u16, status: NetStatus, phase: bool) -> u32 {
        cid as u32 | (((status as u32) << 1 | phase as u32) << 16)
    }
}

/// Arguments of [`Hypercall::NetInfo`](crate::Hypercall::NetInfo); written
/// by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfoArgs {
    /// Listeners the VMM offers (0: the VM has no network).
    pub listeners: u32,
    /// Most connections open at once over all queue pairs; clients beyond
    /// it are closed by the host as they connect.
    pub max_connections: u32,
    /// Each listener's local port, listeners in the order of `--listen`.
    pub ports: [u16; MAX_LISTENERS],
}

/// Arguments of [`Hypercall::NetCreateQueue`](crate::Hypercall::NetCreateQueue):
/// a network queue pair's registration, in guest-physical addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetQueueArgs {
    pub queue: crate::QueuePairConfig,
    /// Written by the host: the queue id (>= 0), or a negative errno
    /// (`-ENODEV` without `--listen`, `-EINVAL` for a bad layout,
    /// `-EFAULT` for rings outside guest RAM, `-ENOSPC` beyond
    /// [`MAX_NET_QUEUES`]).
    pub status: i64,
}

/// Arguments of the calls that give a queue pair back
/// ([`Hypercall::NetDestroyQueue`](crate::Hypercall::NetDestroyQueue),
/// [`Hypercall::NvmeDestroyQueue`](crate::Hypercall::NvmeDestroyQueue)).
/// When the call returns, the host no longer reads or writes the queue
/// pair's memory, and the guest may reuse it; commands still pending on it
/// are dropped without completions (on the network: its connections are
/// closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueIdArgs {
    /// The id the create call returned.
    pub queue: u64,
    /// Written by the host: 0, or a negative errno (`-ENODEV`: no such
    /// device; `-ENOENT`: no such queue pair).
    pub status: i64,
}

/// Arguments of [`Hypercall::NetStats`](crate::Hypercall::NetStats): the
/// network's counters since the VM started (all zero without a network);
/// written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatsArgs {
    /// Commands the poller took from submission rings.
    pub commands: u64,
    /// Completions it posted.
    pub completions: u64,
    /// Times the parked poller was woken (by a doorbell, a socket, or
    /// both).
    pub wakeups: u64,
    /// Real doorbells rung by the guest.
    pub doorbells: u64,
    /// Clients accepted.
    pub accepted: u64,
    /// Clients closed at connect because `max_connections` were open.
    pub refused: u64,
    /// Commands refused as invalid (every error status but
    /// [`NetStatus::Reset`] and [`NetStatus::Aborted`]).
    pub invalid: u64,
    /// Bytes received from clients into guest memory.
    pub bytes_received: u64,
    /// Bytes sent to clients from guest memory.
    pub bytes_sent: u64,
    /// Completion interrupts sent to sleeping CPUs.
    pub interrupts: u64,
}

// SAFETY: each is #[repr(C)] with only integer fields (or a transparent
// u32, or `QueuePairConfig`, itself Pod), laid out without padding, as the
// tests check size by size; every bit pattern is valid.
unsafe impl Pod for NetSqe {}
// SAFETY: see above.
unsafe impl Pod for NetCqe {}
// SAFETY: see above.
unsafe impl Pod for NetInfoArgs {}
// SAFETY: see above.
unsafe impl Pod for NetQueueArgs {}
// SAFETY: see above.
unsafe impl Pod for QueueIdArgs {}
// SAFETY: see above.
unsafe impl Pod for NetStatsArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<NetSqe>() as u64, NET_SQE_SIZE);
        assert_eq!(size_of::<NetCqe>() as u64, NET_CQE_SIZE);
        assert_eq!(offset_of!(NetSqe, conn), 4);
        assert_eq!(offset_of!(NetSqe, addr), 8);
        assert_eq!(offset_of!(NetSqe, len), 16);
        assert_eq!(offset_of!(NetCqe, cid), 12);
        assert_eq!(size_of::<NetInfoArgs>(), 24);
        assert_eq!(size_of::<NetQueueArgs>(), 48);
        assert_eq!(size_of::<QueueIdArgs>(), 16);
        assert_eq!(size_of::<NetStatsArgs>(), 80);
    }

    #[test]
    fn codes_round_trip() {
        for raw in 0..=255u8 {
            if let Some(op) = NetOp::from_raw(raw) {
                assert_eq!(op as u8, raw);
            }
        }
        assert_eq!(NetOp::from_raw(0), None);
        assert_eq!(NetOp::from_raw(5), None);
        for raw in 0..=20u16 {
            match NetStatus::from_raw(raw) {
                Some(s) => assert_eq!(s as u16, raw),
                None => assert!(raw > 8),
            }
        }
    }

    #[test]
    fn completion_dword() {
        let dw = NetCqe::last_dword(0xbeef, NetStatus::Reset, true);
        let cqe = NetCqe {
            cid: dw as u16,
            status_phase: (dw >> 16) as u16,
            ..NetCqe::default()
        };
        assert_eq!(cqe.cid, 0xbeef);
        assert!(cqe.phase());
        assert_eq!(cqe.status(), Some(NetStatus::Reset));
        let dw = NetCqe::last_dword(7, NetStatus::Success, false);
        assert_eq!(dw, 7);
    }
}
