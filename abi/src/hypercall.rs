//! Hypercalls: the numbers, how a call reaches the host, and the argument
//! block of each call.
//!
//! # Transport
//!
//! A hypercall is one `out dx, eax` to port [`HYPERCALL_PORT_BASE`] + the
//! call's [`Hypercall`] number, with `rax` holding the full 64-bit
//! guest-physical address of the call's argument block (one of the `*Args`
//! structs below). The `out` itself carries the low 32 bits; the host reads
//! `rax` from the vCPU's registers and refuses the call when the two disagree
//! ([`argument_address`]). An argument block may therefore live anywhere in
//! guest RAM, but it must be physically contiguous. Results are written back
//! into the block. One call is one VM exit.
//!
//! The hypervisor checks every address and length against guest memory
//! before using it and stops the guest with an error naming the call when
//! one is bad.
//!
//! Calls 0 to 3 ([`Hypercall::Console`], [`Hypercall::Exit`],
//! [`Hypercall::Panic`], [`Hypercall::Fault`]) keep their numbers and layouts
//! in every ABI version, so that a guest can always report an ABI mismatch.

use crate::net::{NetInfoArgs, NetQueueArgs, NetStatsArgs, QueueIdArgs};
use crate::nvme::QueuePairConfig;
use crate::{GuestPhysAddr, Pod};

/// First I/O port of the hypercall range.
pub const HYPERCALL_PORT_BASE: u16 = 0x0d00;

/// Longest file name accepted by [`Hypercall::FileOpen`].
pub const MAX_FILE_NAME: u64 = 256;
/// Largest buffer accepted by one [`Hypercall::FileRead`] or [`Hypercall::FileWrite`].
pub const MAX_FILE_IO: u64 = 16 << 20;

/// Defines [`Hypercall`], its table, and the tie between each call and its
/// argument block from one list, so that the numbers, [`Hypercall::ALL`],
/// [`Hypercall::COUNT`], the decoding and the block types cannot drift:
///
/// - [`calls`]: one [`Call`] per call, typed by its block, which is how the
///   guest names a call (`hypercall::call(calls::Console, &mut ConsoleArgs
///   { .. })`): it cannot pass a call another call's block;
/// - [`Args`]: a call with its block as the host reads it
///   ([`Args::read`]), so each VMM service gets the decoded request.
macro_rules! hypercalls {
    ($( $(#[$doc:meta])* $name:ident = $nr:literal => $block:ty, )*) => {
        /// Hypercall numbers; the port is `HYPERCALL_PORT_BASE + number`.
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Hypercall {
            $( $(#[$doc])* $name = $nr, )*
        }

        impl Hypercall {
            /// Every call, in number order.
            pub const ALL: &'static [Hypercall] = &[$(Self::$name),*];

            /// The call's name, as in the source.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$name => stringify!($name), )*
                }
            }
        }

        impl TryFrom<u16> for Hypercall {
            type Error = UnknownHypercall;

            /// Decodes a call number.
            fn try_from(nr: u16) -> Result<Self, UnknownHypercall> {
                match nr {
                    $( $nr => Ok(Self::$name), )*
                    _ => Err(UnknownHypercall(nr)),
                }
            }
        }

        /// Each call, typed by its argument block (see [`Call`]).
        #[allow(non_upper_case_globals)]
        pub mod calls {
            use super::*;
            $(
                $(#[$doc])*
                pub const $name: Call<$block> = Call::new(Hypercall::$name);
            )*
        }

        /// A hypercall and its argument block, as the host read it.
        #[derive(Clone, Copy, Debug)]
        pub enum Args {
            $( $(#[$doc])* $name($block), )*
        }

        impl Args {
            /// Reads `call`'s argument block with `block` (a block of size
            /// zero is not read: any address will do).
            pub fn read<R: ReadBlock>(call: Hypercall, block: &mut R) -> Result<Args, R::Error> {
                Ok(match call {
                    $( Hypercall::$name => Args::$name(read_block::<$block, R>(block)?), )*
                })
            }

            /// The call.
            pub fn call(&self) -> Hypercall {
                match self {
                    $( Args::$name(_) => Hypercall::$name, )*
                }
            }
        }
    };
}

/// A call number tied to the type of its argument block: the constants of
/// [`calls`] are the only values, so a call and a block of another call
/// cannot meet.
#[derive(Debug)]
pub struct Call<A> {
    call: Hypercall,
    _block: core::marker::PhantomData<fn(A)>,
}

impl<A> Clone for Call<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Call<A> {}

impl<A> Call<A> {
    const fn new(call: Hypercall) -> Call<A> {
        Call {
            call,
            _block: core::marker::PhantomData,
        }
    }

    /// The call's number.
    pub const fn hypercall(self) -> Hypercall {
        self.call
    }
}

/// Where the host reads argument blocks from (guest memory, checked).
pub trait ReadBlock {
    type Error;
    /// Reads a block of type `T` at the call's block address.
    fn read<T: Pod>(&mut self) -> Result<T, Self::Error>;
}

fn read_block<T: Pod, R: ReadBlock>(r: &mut R) -> Result<T, R::Error> {
    if core::mem::size_of::<T>() == 0 {
        return Ok(T::default());
    }
    r.read()
}

hypercalls! {
    /// Write bytes to the console ([`ConsoleArgs`]).
    Console = 0 => ConsoleArgs,
    /// Stop the whole guest with a status ([`ExitArgs`]).
    Exit = 1 => ExitArgs,
    /// Report a panic and stop the guest ([`PanicArgs`]).
    Panic = 2 => PanicArgs,
    /// Report an unhandled exception and stop the guest ([`FaultArgs`]).
    Fault = 3 => FaultArgs,
    /// Read the host's monotonic clock ([`ClockArgs`]).
    Clock = 4 => ClockArgs,
    /// Read the exit counters: the VMM's and KVM's ([`StatsArgs`]).
    Stats = 5 => StatsArgs,
    /// Open a file the user authorised with `--file NAME=PATH` ([`FileOpenArgs`]).
    FileOpen = 6 => FileOpenArgs,
    /// Read from an open file ([`FileIoArgs`]).
    FileRead = 7 => FileIoArgs,
    /// Write to an open file ([`FileIoArgs`]).
    FileWrite = 8 => FileIoArgs,
    /// Make an open file's data durable, `fdatasync` ([`FileArgs`]).
    FileFlush = 9 => FileArgs,
    /// The current size of an open file ([`FileArgs`]).
    FileSize = 10 => FileArgs,
    /// Describe the NVMe disk ([`NvmeInfoArgs`]).
    NvmeInfo = 11 => NvmeInfoArgs,
    /// Register a queue pair with the host's poller ([`NvmeQueueArgs`]).
    NvmeCreateQueue = 12 => NvmeQueueArgs,
    /// The real (exiting) NVMe doorbell: wakes the parked poller. Its block
    /// ([`DoorbellArgs`]) is empty and not read (any address will do); the
    /// driver rings it only when the poller has said (through the shadow
    /// doorbells' event indexes) that it is going idle.
    NvmeDoorbell = 13 => DoorbellArgs,
    /// Declare a DMA region ([`DmaRegionArgs`]): a guest-physical range
    /// the guest does disk I/O from (a pool's frames, the log's buffers,
    /// queue rings), which the host registers with its I/O engine so that
    /// I/O there costs no per-request pinning.
    DmaDeclare = 14 => DmaRegionArgs,
    /// Give back a DMA region declared with exactly this range
    /// ([`DmaRegionArgs`]).
    DmaRelease = 15 => DmaRegionArgs,
    /// Read the disk's DMA counters ([`DmaStatsArgs`]).
    DmaStats = 16 => DmaStatsArgs,
    /// Describe the network: the listeners the VMM offers ([`NetInfoArgs`]).
    NetInfo = 17 => NetInfoArgs,
    /// Register a network queue pair with the host's network poller
    /// ([`NetQueueArgs`]).
    NetCreateQueue = 18 => NetQueueArgs,
    /// The real (exiting) network doorbell: wakes the parked network
    /// poller; its block ([`DoorbellArgs`]) is not read.
    NetDoorbell = 19 => DoorbellArgs,
    /// Give a network queue pair back ([`QueueIdArgs`]): the host stops
    /// serving it and closes its connections.
    NetDestroyQueue = 20 => QueueIdArgs,
    /// Read the network's counters ([`NetStatsArgs`]).
    NetStats = 21 => NetStatsArgs,
    /// Give a disk queue pair back ([`QueueIdArgs`]): the host stops
    /// serving it.
    NvmeDestroyQueue = 22 => QueueIdArgs,
}

impl Hypercall {
    /// Number of calls; numbers are dense, `0..COUNT`, so a per-call table
    /// can be an array indexed by `call as usize`.
    pub const COUNT: usize = Self::ALL.len();

    /// The call for an I/O port.
    pub fn from_port(port: u16) -> Result<Self, UnknownHypercall> {
        let nr = port
            .checked_sub(HYPERCALL_PORT_BASE)
            .ok_or(UnknownHypercall(u16::MAX))?;
        Self::try_from(nr)
    }

    /// The I/O port of this call.
    pub const fn port(self) -> u16 {
        HYPERCALL_PORT_BASE + self as u16
    }
}

const _: () = {
    let mut i = 0;
    while i < Hypercall::COUNT {
        assert!(
            Hypercall::ALL[i] as usize == i,
            "hypercall numbers must be dense"
        );
        i += 1;
    }
};

/// A port or number that names no hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHypercall(pub u16);

/// The low half of `rax` differs from the value the `out` wrote: not a
/// well-formed hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornAddress {
    pub port_value: u32,
    pub rax: u64,
}

/// The argument block's address of a hypercall whose `out` wrote
/// `port_value` while `rax` held `rax` (see the module documentation).
pub fn argument_address(port_value: u32, rax: u64) -> Result<GuestPhysAddr, TornAddress> {
    if rax as u32 == port_value {
        Ok(GuestPhysAddr(rax))
    } else {
        Err(TornAddress { port_value, rax })
    }
}

/// A byte buffer in guest-physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestBuf {
    pub addr: GuestPhysAddr,
    pub len: u64,
}

/// Arguments of [`Hypercall::Console`]: bytes to append to this vCPU's console.
/// The host prints complete lines, prefixed by the vCPU index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleArgs {
    pub text: GuestBuf,
}

/// Arguments of [`Hypercall::Exit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitArgs {
    /// Becomes the hypervisor's process exit status.
    pub status: u32,
    pub _reserved: u32,
}

/// Arguments of [`Hypercall::Panic`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicArgs {
    pub message: GuestBuf,
    pub file: GuestBuf,
    pub line: u32,
    pub column: u32,
}

/// Arguments of [`Hypercall::Fault`]: an exception no hook handled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultArgs {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Why the handler gave up, e.g. "no hook registered" (may be empty).
    pub reason: GuestBuf,
    /// The faulting context's general-purpose registers, in the order of
    /// [`FAULT_GPR_NAMES`].
    pub gprs: [u64; 15],
}

/// The registers in [`FaultArgs::gprs`], in order.
pub const FAULT_GPR_NAMES: [&str; 15] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

/// Arguments of [`Hypercall::Clock`]; `nanos` is written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockArgs {
    /// Nanoseconds on the host's monotonic clock since the VM was created.
    pub nanos: u64,
    /// The host's wall clock: nanoseconds since the Unix epoch (ABI 7).
    pub unix_nanos: u64,
}

/// Arguments of [`Hypercall::Stats`]; written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsArgs {
    /// Exits to the VMM (returns from `KVM_RUN`: hypercalls, unknown ports,
    /// MMIO) taken so far by all vCPUs, not counting `Stats` calls
    /// themselves, so that the difference of two readings is exactly the
    /// exits to the VMM taken in between. Exits KVM handles in the kernel
    /// are not among them.
    pub vmm_exits: u64,
    /// All VM exits KVM has counted so far on all vCPUs (its per-vCPU
    /// `exits` statistic: those it handled in the kernel included), less
    /// one per `Stats` call (the call's own exit), or [`KVM_EXITS_UNKNOWN`]
    /// when this host's KVM does not offer its statistics.
    pub kvm_exits: u64,
}

/// [`StatsArgs::kvm_exits`] when KVM's statistics cannot be read.
pub const KVM_EXITS_UNKNOWN: u64 = u64::MAX;

/// Arguments of [`Hypercall::FileOpen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOpenArgs {
    /// The name given on the command line (`--file NAME=PATH`), UTF-8.
    pub name: GuestBuf,
    /// Written by the host: a handle (> 0) on success, or a negative errno
    /// (`-ENOENT` for a name that was not authorised).
    pub status: i64,
}

/// Arguments of [`Hypercall::FileRead`] and [`Hypercall::FileWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileIoArgs {
    pub handle: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// The guest buffer (physically contiguous, at most [`MAX_FILE_IO`] bytes).
    pub buf: GuestBuf,
    /// Written by the host: bytes transferred (a read past the end is short),
    /// or a negative errno.
    pub status: i64,
}

/// Arguments of [`Hypercall::FileFlush`] and [`Hypercall::FileSize`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileArgs {
    pub handle: u64,
    /// Written by the host: 0 (flush) or the size (size) on success, or a
    /// negative errno.
    pub status: i64,
}

/// Arguments of [`Hypercall::NvmeInfo`]; written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmeInfoArgs {
    /// Capacity in logical blocks (0: the VM has no disk).
    pub blocks: u64,
    /// Bytes per logical block.
    pub block_size: u64,
}

/// Arguments of [`Hypercall::NvmeCreateQueue`]: the queue pair's
/// registration, in guest-physical addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmeQueueArgs {
    pub queue: QueuePairConfig,
    /// Written by the host: the queue id (>= 0), or a negative errno
    /// (`-ENODEV` without a disk, `-EINVAL` for a bad layout).
    pub status: i64,
}

/// Most bytes one DMA region may have (one io_uring fixed buffer).
pub const MAX_DMA_REGION: u64 = 1 << 30;

/// Most DMA regions declared at once.
pub const MAX_DMA_REGIONS: u64 = 64;

/// Arguments of [`Hypercall::DmaDeclare`] and [`Hypercall::DmaRelease`].
///
/// A region is 4 KiB aligned in address and length, non-empty, at most
/// [`MAX_DMA_REGION`] bytes, inside one range of guest RAM, and overlaps
/// no declared region. `status` is written by the host: 0, or a negative
/// errno: `-ENODEV` (no disk), `-EINVAL` (misaligned, empty or too large),
/// `-EFAULT` (not inside one RAM range: past RAM's end, across a gap,
/// wrapping), `-EEXIST` (overlaps a declared region), `-ENOSPC` (more than
/// [`MAX_DMA_REGIONS`]), `-ENOMEM` (beyond the host's pinning limit,
/// `RLIMIT_MEMLOCK`: the host says so on its standard error),
/// `-EOPNOTSUPP` (this disk registers nothing: its I/O uses plain buffers
/// anyway), `-ENOENT` (release of a range not declared as such). A refused
/// declaration changes nothing: I/O from the range is still served, with
/// plain buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaRegionArgs {
    pub region: GuestBuf,
    pub status: i64,
}

/// Arguments of [`Hypercall::DmaStats`]; written by the host (all zero
/// without a disk).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaStatsArgs {
    /// Disk reads and writes served with fixed buffers (the buffer lay in a
    /// declared region) since the VM started.
    pub fixed_ios: u64,
    /// Disk reads and writes served with plain buffers.
    pub plain_ios: u64,
    /// DMA regions declared now.
    pub regions: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The block of [`Hypercall::NvmeDoorbell`]: empty (the host reads none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DoorbellArgs {}

// Every `Pod` impl below holds for one reason: each type is #[repr(C)] with only integer
// fields, `GuestPhysAddr` (a transparent u64), `GuestBuf` or
// `QueuePairConfig` (themselves Pod), laid out without padding, as
// `layouts_are_stable` checks size by size.
// SAFETY: see above.
unsafe impl Pod for GuestBuf {}
// SAFETY: see above.
unsafe impl Pod for ConsoleArgs {}
// SAFETY: see above.
unsafe impl Pod for ExitArgs {}
// SAFETY: see above.
unsafe impl Pod for PanicArgs {}
// SAFETY: see above.
unsafe impl Pod for FaultArgs {}
// SAFETY: see above.
unsafe impl Pod for ClockArgs {}
// SAFETY: see above.
unsafe impl Pod for StatsArgs {}
// SAFETY: see above.
unsafe impl Pod for FileOpenArgs {}
// SAFETY: see above.
unsafe impl Pod for FileIoArgs {}
// SAFETY: see above.
unsafe impl Pod for FileArgs {}
// SAFETY: see above.
unsafe impl Pod for NvmeInfoArgs {}
// SAFETY: see above.
unsafe impl Pod for NvmeQueueArgs {}
// SAFETY: see above (no fields at all).
unsafe impl Pod for DoorbellArgs {}
// SAFETY: see above.
unsafe impl Pod for DmaRegionArgs {}
// SAFETY: see above.
unsafe impl Pod for DmaStatsArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn ports_and_numbers_round_trip() {
        assert_eq!(Hypercall::COUNT, 23);
        for (i, &call) in Hypercall::ALL.iter().enumerate() {
            assert_eq!(call as usize, i);
            assert_eq!(Hypercall::try_from(i as u16), Ok(call));
            assert_eq!(Hypercall::from_port(call.port()), Ok(call));
        }
        assert_eq!(
            Hypercall::try_from(Hypercall::COUNT as u16),
            Err(UnknownHypercall(23))
        );
        assert!(Hypercall::from_port(HYPERCALL_PORT_BASE - 1).is_err());
        assert!(Hypercall::from_port(HYPERCALL_PORT_BASE + 23).is_err());
        assert!(Hypercall::from_port(0x3f8).is_err());
        assert_eq!(Hypercall::NvmeCreateQueue.name(), "NvmeCreateQueue");
    }

    #[test]
    fn frozen_calls_keep_their_numbers() {
        assert_eq!(Hypercall::Console as u16, 0);
        assert_eq!(Hypercall::Exit as u16, 1);
        assert_eq!(Hypercall::Panic as u16, 2);
        assert_eq!(Hypercall::Fault as u16, 3);
        assert_eq!(size_of::<ConsoleArgs>(), 16);
        assert_eq!(size_of::<ExitArgs>(), 8);
    }

    #[test]
    fn argument_addresses_are_64_bit() {
        assert_eq!(
            argument_address(0x1000, 0x1_0000_1000),
            Ok(GuestPhysAddr(0x1_0000_1000))
        );
        assert_eq!(argument_address(0x1000, 0x1000), Ok(GuestPhysAddr(0x1000)));
        assert_eq!(
            argument_address(0x1000, 0x2000),
            Err(TornAddress {
                port_value: 0x1000,
                rax: 0x2000
            })
        );
    }

    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<GuestBuf>(), 16);
        assert_eq!(size_of::<PanicArgs>(), 40);
        // ABI 3: 64 bytes and the 15 general-purpose registers.
        assert_eq!(size_of::<FaultArgs>(), 64 + 15 * 8);
        assert_eq!(size_of::<ClockArgs>(), 16);
        assert_eq!(size_of::<StatsArgs>(), 16);
        assert_eq!(size_of::<FileOpenArgs>(), 24);
        assert_eq!(size_of::<FileIoArgs>(), 40);
        assert_eq!(size_of::<FileArgs>(), 16);
        assert_eq!(size_of::<NvmeInfoArgs>(), 16);
        assert_eq!(size_of::<NvmeQueueArgs>(), 48);
        assert_eq!(size_of::<DmaRegionArgs>(), 24);
        assert_eq!(size_of::<DmaStatsArgs>(), 32);
    }
}
