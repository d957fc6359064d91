//! The hypercall server: decodes a hypercall exit (port and `rax`, see
//! [`dbos_abi::hypercall`]), hands the call to the service that owns it
//! (console, control, clock, host files, disk: one module each, behind
//! [`Service`]), and gives every service the same checked access to the
//! argument block and the buffers it names ([`Request`]). A bad request never
//! touches host memory outside guest RAM; it ends the guest with a
//! [`HypercallError`] naming the call.

use crate::clock::Clock;
use crate::console::Console;
use crate::control::Control;
use crate::disk::DiskService;
use crate::files::Files;
use crate::memory::GuestRam;
use dbos_abi::{argument_address, GuestBuf, GuestPhysAddr, Hypercall, Pod};

/// Largest console write accepted in one call.
pub const MAX_CONSOLE_WRITE: u64 = 64 * 1024;
/// Largest panic message, file name or fault reason accepted.
pub const MAX_REPORT_TEXT: u64 = 4096;

/// A malformed hypercall.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    #[error("hypercall {call:?}: the argument block at {addr:#x} is outside guest memory")]
    BadArgs {
        call: Hypercall,
        addr: GuestPhysAddr,
    },
    #[error("hypercall {call:?}: {what} buffer [{addr:#x}, +{len:#x}) is outside guest memory")]
    BadBuffer {
        call: Hypercall,
        what: &'static str,
        addr: GuestPhysAddr,
        len: u64,
    },
    #[error("hypercall {call:?}: {what} of {len} bytes exceeds the {limit}-byte limit")]
    TooLong {
        call: Hypercall,
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("hypercall {call:?}: expected a 32-bit out, got a {size}-byte access")]
    BadAccessSize { call: Hypercall, size: usize },
    #[error(
        "hypercall {call:?}: the out wrote {port_value:#x} but rax holds {rax:#x}; \
         a hypercall passes its argument block's address in rax and writes eax"
    )]
    TornAddress {
        call: Hypercall,
        port_value: u32,
        rax: u64,
    },
}

/// What the guest asked for when it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Exit(u32),
    Panic {
        message: String,
        file: String,
        line: u32,
        column: u32,
    },
    Fault {
        vector: u64,
        error_code: u64,
        rip: u64,
        cr2: u64,
        rsp: u64,
        rflags: u64,
        reason: String,
        /// The faulting context's general-purpose registers
        /// (`dbos_abi::FAULT_GPR_NAMES`).
        gprs: [u64; 15],
    },
}

/// The result of one hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The vCPU continues.
    Continue,
    /// The guest asked to stop.
    Stop(Stop),
}

/// The argument block's address of a hypercall exit: the `out`'s data must
/// be 4 bytes and equal the low half of `rax`, which holds the address.
pub fn decode(call: Hypercall, data: &[u8], rax: u64) -> Result<GuestPhysAddr, HypercallError> {
    block_address(call, port_value(call, data)?, rax)
}

/// The value a hypercall's `out` wrote: it must be a 32-bit access.
pub fn port_value(call: Hypercall, data: &[u8]) -> Result<u32, HypercallError> {
    let bytes = <[u8; 4]>::try_from(data).map_err(|_| HypercallError::BadAccessSize {
        call,
        size: data.len(),
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// The argument block's address: `rax`, whose low half must equal the
/// `out`'s value.
pub fn block_address(
    call: Hypercall,
    port_value: u32,
    rax: u64,
) -> Result<GuestPhysAddr, HypercallError> {
    argument_address(port_value, rax).map_err(|torn| HypercallError::TornAddress {
        call,
        port_value: torn.port_value,
        rax: torn.rax,
    })
}

/// One hypercall being served: who made it, which call, where its argument
/// block is, and checked access to guest memory.
pub struct Request<'a> {
    pub vcpu: u32,
    pub call: Hypercall,
    pub block: GuestPhysAddr,
    ram: &'a GuestRam,
}

impl Request<'_> {
    /// Reads the argument block.
    pub fn args<T: Pod>(&self) -> Result<T, HypercallError> {
        self.ram
            .read_pod(self.block.raw())
            .map_err(|_| self.bad_args())
    }

    /// Writes the argument block back (the call's results) and continues.
    pub fn write_back<T: Pod>(&self, args: &T) -> Result<Outcome, HypercallError> {
        self.ram
            .write_pod(self.block.raw(), args)
            .map_err(|_| self.bad_args())?;
        Ok(Outcome::Continue)
    }

    fn bad_args(&self) -> HypercallError {
        HypercallError::BadArgs {
            call: self.call,
            addr: self.block,
        }
    }

    fn bad_buffer(&self, what: &'static str, buf: GuestBuf) -> HypercallError {
        HypercallError::BadBuffer {
            call: self.call,
            what,
            addr: buf.addr,
            len: buf.len,
        }
    }

    /// Checks a buffer's length against `limit` and its range against guest memory.
    pub fn check_buffer(
        &self,
        what: &'static str,
        buf: GuestBuf,
        limit: u64,
    ) -> Result<(), HypercallError> {
        if buf.len > limit {
            return Err(HypercallError::TooLong {
                call: self.call,
                what,
                len: buf.len,
                limit,
            });
        }
        self.ram
            .check(buf.addr.raw(), buf.len)
            .map_err(|_| self.bad_buffer(what, buf))
    }

    /// Copies a guest buffer of at most `limit` bytes out of guest memory.
    pub fn buffer(
        &self,
        what: &'static str,
        buf: GuestBuf,
        limit: u64,
    ) -> Result<Vec<u8>, HypercallError> {
        self.check_buffer(what, buf, limit)?;
        let mut bytes = vec![0u8; buf.len as usize];
        self.ram
            .read(buf.addr.raw(), &mut bytes)
            .map_err(|_| self.bad_buffer(what, buf))?;
        Ok(bytes)
    }

    /// Copies `data` into a guest buffer that [`Request::check_buffer`] accepted.
    pub fn fill(
        &self,
        what: &'static str,
        buf: GuestBuf,
        data: &[u8],
    ) -> Result<(), HypercallError> {
        if data.len() as u64 > buf.len {
            return Err(self.bad_buffer(what, buf));
        }
        self.ram
            .write(buf.addr.raw(), data)
            .map_err(|_| self.bad_buffer(what, buf))
    }

    /// A report text (panic message, file, fault reason), escaped for the
    /// terminal like console output ([`crate::console::escape`]; newlines
    /// are kept).
    pub fn text(&self, what: &'static str, buf: GuestBuf) -> Result<String, HypercallError> {
        let bytes = self.buffer(what, buf, MAX_REPORT_TEXT)?;
        Ok(crate::console::escape(&bytes, true))
    }
}

/// A VMM service: serves the hypercalls it owns.
pub trait Service {
    /// Serves `req`, whose call is one this service owns.
    fn serve(&self, req: &Request<'_>) -> Result<Outcome, HypercallError>;
}

/// Every service of one VM, and which call goes to which.
pub struct Services<'a> {
    pub ram: &'a GuestRam,
    pub console: &'a Console,
    pub control: Control<'a>,
    pub clock: Clock,
    pub files: &'a Files,
    pub disk: DiskService<'a>,
}

impl Services<'_> {
    /// The service that owns `call`.
    fn owner(&self, call: Hypercall) -> &dyn Service {
        match call {
            Hypercall::Console => self.console,
            Hypercall::Exit | Hypercall::Panic | Hypercall::Fault | Hypercall::Stats => {
                &self.control
            }
            Hypercall::Clock => &self.clock,
            Hypercall::FileOpen
            | Hypercall::FileRead
            | Hypercall::FileWrite
            | Hypercall::FileFlush
            | Hypercall::FileSize => self.files,
            Hypercall::NvmeInfo | Hypercall::NvmeCreateQueue | Hypercall::NvmeDoorbell => {
                &self.disk
            }
        }
    }

    /// Serves `call` from `vcpu` with its argument block at `block`.
    pub fn handle(
        &self,
        vcpu: u32,
        call: Hypercall,
        block: GuestPhysAddr,
    ) -> Result<Outcome, HypercallError> {
        let req = Request {
            vcpu,
            call,
            block,
            ram: self.ram,
        };
        self.owner(call).serve(&req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Range;
    use dbos_abi::{ClockArgs, ConsoleArgs, FileIoArgs, FileOpenArgs, PanicArgs, MAX_FILE_IO};
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    static EXITS: AtomicU64 = AtomicU64::new(0);
    static STATS: AtomicU64 = AtomicU64::new(0);
    static KVM: Result<Vec<crate::kvmstats::VcpuStats>, String> = Err(String::new());

    fn services<'a>(ram: &'a GuestRam, console: &'a Console) -> Services<'a> {
        static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
        Services {
            ram,
            console,
            control: Control {
                vmm_exits: &EXITS,
                stats_calls: &STATS,
                kvm_stats: &KVM,
            },
            clock: Clock::new(Instant::now()),
            files: FILES.get_or_init(Files::default),
            disk: DiskService { disk: None },
        }
    }

    /// 64 KiB of RAM at 0 and 64 KiB at 5 GiB (above the 32-bit range).
    const HIGH: u64 = 5 << 30;

    fn setup() -> (GuestRam, Console) {
        (
            GuestRam::new(&[
                Range {
                    start: 0,
                    end: 0x10000,
                },
                Range {
                    start: HIGH,
                    end: HIGH + 0x10000,
                },
            ])
            .unwrap(),
            Console::new(1, false, true),
        )
    }

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr(a)
    }

    fn text(addr: u64, len: u64) -> GuestBuf {
        GuestBuf {
            addr: gpa(addr),
            len,
        }
    }

    #[test]
    fn decoding_the_exit() {
        let data = 0x1000u32.to_le_bytes();
        assert_eq!(decode(Hypercall::Console, &data, 0x1000), Ok(gpa(0x1000)));
        let high = (HIGH + 0x1000) as u32;
        assert_eq!(
            decode(Hypercall::Console, &high.to_le_bytes(), HIGH + 0x1000),
            Ok(gpa(HIGH + 0x1000))
        );
        assert_eq!(
            decode(Hypercall::Exit, &[1, 0], 1),
            Err(HypercallError::BadAccessSize {
                call: Hypercall::Exit,
                size: 2
            })
        );
        assert_eq!(
            decode(Hypercall::Exit, &data, 0x2000),
            Err(HypercallError::TornAddress {
                call: Hypercall::Exit,
                port_value: 0x1000,
                rax: 0x2000
            })
        );
    }

    #[test]
    fn console_and_clock_anywhere_in_ram() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        ram.write(HIGH + 0x2000, b"hi there\n").unwrap();
        ram.write_pod(
            HIGH + 0x1000,
            &ConsoleArgs {
                text: text(HIGH + 0x2000, 9),
            },
        )
        .unwrap();
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(HIGH + 0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(console.captured(), vec!["[vcpu0] hi there"]);

        ram.write_pod(0x1100, &ClockArgs { nanos: 0 }).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        services.handle(0, Hypercall::Clock, gpa(0x1100)).unwrap();
        let clock: ClockArgs = ram.read_pod(0x1100).unwrap();
        assert!(clock.nanos >= 2_000_000);
    }

    #[test]
    fn hostile_arguments_are_rejected() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(0xfff8)),
            Err(HypercallError::BadArgs {
                call: Hypercall::Console,
                addr: gpa(0xfff8)
            })
        );
        // Between the two RAM ranges, and past the end of the high one.
        for addr in [0x1_0000, HIGH + 0xfffc, u64::MAX - 4] {
            assert_eq!(
                services.handle(0, Hypercall::Exit, gpa(addr)),
                Err(HypercallError::BadArgs {
                    call: Hypercall::Exit,
                    addr: gpa(addr)
                })
            );
        }
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: text(1 << 40, 16),
            },
        )
        .unwrap();
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::Console,
                what: "text",
                addr: gpa(1 << 40),
                len: 16
            })
        );
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: text(0x2000, u64::MAX),
            },
        )
        .unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::Console, gpa(0x1000)),
            Err(HypercallError::TooLong { .. })
        ));
        ram.write_pod(
            0x1000,
            &PanicArgs {
                message: text(0xff00, 0x200),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::Panic, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                what: "message",
                ..
            })
        ));
        assert!(console.captured().is_empty());
    }

    #[test]
    fn file_calls_check_buffers_and_handles() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        // No file is authorised: any name is ENOENT.
        ram.write(0x2000, b"data").unwrap();
        ram.write_pod(
            0x1000,
            &FileOpenArgs {
                name: text(0x2000, 4),
                status: 0,
            },
        )
        .unwrap();
        services
            .handle(0, Hypercall::FileOpen, gpa(0x1000))
            .unwrap();
        assert_eq!(
            ram.read_pod::<FileOpenArgs>(0x1000).unwrap().status,
            -i64::from(libc::ENOENT)
        );
        // A read into a buffer outside guest memory stops the guest.
        let io = FileIoArgs {
            handle: 1,
            offset: 0,
            buf: text(0xff00, 0x1000),
            status: 0,
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            services.handle(0, Hypercall::FileRead, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::FileRead,
                what: "data",
                addr: gpa(0xff00),
                len: 0x1000
            })
        );
        let io = FileIoArgs {
            buf: text(0, MAX_FILE_IO + 1),
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::FileWrite, gpa(0x1000)),
            Err(HypercallError::TooLong {
                call: Hypercall::FileWrite,
                ..
            })
        ));
        // A valid buffer with an unknown handle is an error status, not a stop.
        let io = FileIoArgs {
            buf: text(0x3000, 16),
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            services.handle(0, Hypercall::FileRead, gpa(0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(
            ram.read_pod::<FileIoArgs>(0x1000).unwrap().status,
            -i64::from(libc::EBADF)
        );
    }

    #[test]
    fn disk_calls_without_a_disk() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        ram.write_pod(
            HIGH,
            &dbos_abi::NvmeQueueArgs {
                queue: dbos_abi::QueueLayout::new(8).unwrap().config(0x4000),
                status: 0,
            },
        )
        .unwrap();
        services
            .handle(0, Hypercall::NvmeCreateQueue, gpa(HIGH))
            .unwrap();
        assert_eq!(
            ram.read_pod::<dbos_abi::NvmeQueueArgs>(HIGH)
                .unwrap()
                .status,
            -i64::from(libc::ENODEV)
        );
        // The doorbell reads no block: any address continues.
        assert_eq!(
            services.handle(0, Hypercall::NvmeDoorbell, gpa(u64::MAX)),
            Ok(Outcome::Continue)
        );
    }
}
