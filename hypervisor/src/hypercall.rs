//! The hypercall server: decodes a hypercall exit, validates every guest
//! address and length against guest memory and the limits below, and carries
//! the call out. A bad request never touches host memory outside guest RAM;
//! it ends the guest with a [`HypercallError`] naming the call.

use crate::console::Console;
use crate::disk::Disk;
use crate::files::Files;
use crate::memory::{GuestRam, MemoryError};
use libdbos::abi::{
    ClockArgs, ConsoleArgs, ExitArgs, FaultArgs, FileArgs, FileIoArgs, FileOpenArgs, GuestBuf,
    Hypercall, NvmeInfoArgs, NvmeQueueArgs, PanicArgs, Pod, StatsArgs, MAX_FILE_IO, MAX_FILE_NAME,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Largest console write accepted in one call.
pub const MAX_CONSOLE_WRITE: u64 = 64 * 1024;
/// Largest panic message, file name or fault reason accepted.
pub const MAX_REPORT_TEXT: u64 = 4096;

/// A malformed hypercall.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    #[error("hypercall {call:?}: the argument block at {addr:#x} is outside guest memory")]
    BadArgs { call: Hypercall, addr: u64 },
    #[error("hypercall {call:?}: {what} buffer [{addr:#x}, +{len:#x}) is outside guest memory")]
    BadBuffer {
        call: Hypercall,
        what: &'static str,
        addr: u64,
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

/// Serves hypercalls for one VM.
pub struct Server<'a> {
    pub ram: &'a GuestRam,
    pub console: &'a Console,
    pub started: Instant,
    /// VM exits of all vCPUs so far (including the one being served), and
    /// how many of them were `Stats` calls.
    pub exits: &'a AtomicU64,
    pub stats_calls: &'a AtomicU64,
    /// Files the user authorised.
    pub files: &'a Files,
    /// The NVMe disk, if the VM has one.
    pub disk: Option<&'a Disk>,
}

impl Server<'_> {
    /// Handles an `out` of `data` to the port of `call` from `vcpu`.
    pub fn handle(
        &self,
        vcpu: u32,
        call: Hypercall,
        data: &[u8],
    ) -> Result<Outcome, HypercallError> {
        let addr = match <[u8; 4]>::try_from(data) {
            Ok(bytes) => u64::from(u32::from_le_bytes(bytes)),
            Err(_) => {
                return Err(HypercallError::BadAccessSize {
                    call,
                    size: data.len(),
                })
            }
        };
        match call {
            Hypercall::Console => {
                let args: ConsoleArgs = self.args(call, addr)?;
                let text = self.buffer(call, "text", args.text, MAX_CONSOLE_WRITE)?;
                self.console.write(vcpu, &text);
                Ok(Outcome::Continue)
            }
            Hypercall::Exit => {
                let args: ExitArgs = self.args(call, addr)?;
                Ok(Outcome::Stop(Stop::Exit(args.status)))
            }
            Hypercall::Panic => {
                let args: PanicArgs = self.args(call, addr)?;
                let message = self.text(call, "message", args.message)?;
                let file = self.text(call, "file", args.file)?;
                Ok(Outcome::Stop(Stop::Panic {
                    message,
                    file,
                    line: args.line,
                    column: args.column,
                }))
            }
            Hypercall::Fault => {
                let args: FaultArgs = self.args(call, addr)?;
                let reason = self.text(call, "reason", args.reason)?;
                Ok(Outcome::Stop(Stop::Fault {
                    vector: args.vector,
                    error_code: args.error_code,
                    rip: args.rip,
                    cr2: args.cr2,
                    rsp: args.rsp,
                    rflags: args.rflags,
                    reason,
                }))
            }
            Hypercall::Stats => {
                let mut args: StatsArgs = self.args(call, addr)?;
                let stats_calls = self.stats_calls.fetch_add(1, Ordering::Relaxed) + 1;
                args.vm_exits = self
                    .exits
                    .load(Ordering::Relaxed)
                    .saturating_sub(stats_calls);
                self.ram
                    .write_pod(addr, &args)
                    .map_err(|_| HypercallError::BadArgs { call, addr })?;
                Ok(Outcome::Continue)
            }
            Hypercall::FileOpen => {
                let mut args: FileOpenArgs = self.args(call, addr)?;
                let name = self.buffer(call, "name", args.name, MAX_FILE_NAME)?;
                args.status = self.files.lookup(&name);
                self.write_back(call, addr, &args)
            }
            Hypercall::FileRead => {
                let mut args: FileIoArgs = self.args(call, addr)?;
                self.check_buffer(call, "data", args.buf, MAX_FILE_IO)?;
                let mut data = vec![0u8; args.buf.len as usize];
                args.status = self.files.read(args.handle, args.offset, &mut data);
                if args.status > 0 {
                    let n = args.status as usize;
                    self.ram.write(args.buf.addr, &data[..n]).map_err(|_| {
                        HypercallError::BadBuffer {
                            call,
                            what: "data",
                            addr: args.buf.addr,
                            len: args.buf.len,
                        }
                    })?;
                }
                self.write_back(call, addr, &args)
            }
            Hypercall::FileWrite => {
                let mut args: FileIoArgs = self.args(call, addr)?;
                let data = self.buffer(call, "data", args.buf, MAX_FILE_IO)?;
                args.status = self.files.write(args.handle, args.offset, &data);
                self.write_back(call, addr, &args)
            }
            Hypercall::FileFlush | Hypercall::FileSize => {
                let mut args: FileArgs = self.args(call, addr)?;
                args.status = if call == Hypercall::FileFlush {
                    self.files.flush(args.handle)
                } else {
                    self.files.size(args.handle)
                };
                self.write_back(call, addr, &args)
            }
            Hypercall::NvmeInfo => {
                let mut args: NvmeInfoArgs = self.args(call, addr)?;
                args.blocks = self.disk.map_or(0, Disk::blocks);
                args.block_size = dbos_nvme::BLOCK_SIZE;
                self.write_back(call, addr, &args)
            }
            Hypercall::NvmeCreateQueue => {
                let mut args: NvmeQueueArgs = self.args(call, addr)?;
                args.status = match (self.disk, u16::try_from(args.depth)) {
                    (None, _) => -i64::from(libc::ENODEV),
                    (Some(_), Err(_)) => -i64::from(libc::EINVAL),
                    (Some(disk), Ok(depth)) => {
                        let config = dbos_nvme::QueuePairConfig {
                            sq_addr: args.sq_addr,
                            cq_addr: args.cq_addr,
                            doorbell_addr: args.doorbell_addr,
                            event_idx_addr: args.event_idx_addr,
                            depth,
                            _reserved: [0; 3],
                        };
                        match disk.add_queue(config) {
                            Ok(id) => i64::from(id),
                            Err(e) => {
                                log::warn!("vCPU {vcpu}: queue pair refused: {e}");
                                -i64::from(libc::EINVAL)
                            }
                        }
                    }
                };
                self.write_back(call, addr, &args)
            }
            Hypercall::NvmeDoorbell => {
                if let Some(disk) = self.disk {
                    disk.ring();
                }
                Ok(Outcome::Continue)
            }
            Hypercall::Clock => {
                let mut args: ClockArgs = self.args(call, addr)?;
                args.nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.ram
                    .write_pod(addr, &args)
                    .map_err(|_| HypercallError::BadArgs { call, addr })?;
                Ok(Outcome::Continue)
            }
        }
    }

    fn args<T: Pod>(&self, call: Hypercall, addr: u64) -> Result<T, HypercallError> {
        self.ram
            .read_pod(addr)
            .map_err(|_| HypercallError::BadArgs { call, addr })
    }

    fn write_back<T: Pod>(
        &self,
        call: Hypercall,
        addr: u64,
        args: &T,
    ) -> Result<Outcome, HypercallError> {
        self.ram
            .write_pod(addr, args)
            .map_err(|_| HypercallError::BadArgs { call, addr })?;
        Ok(Outcome::Continue)
    }

    /// Checks a buffer's length against `limit` and its range against guest memory.
    fn check_buffer(
        &self,
        call: Hypercall,
        what: &'static str,
        buf: GuestBuf,
        limit: u64,
    ) -> Result<(), HypercallError> {
        if buf.len > limit {
            return Err(HypercallError::TooLong {
                call,
                what,
                len: buf.len,
                limit,
            });
        }
        self.ram
            .check(buf.addr, buf.len)
            .map_err(|_| HypercallError::BadBuffer {
                call,
                what,
                addr: buf.addr,
                len: buf.len,
            })
    }

    fn buffer(
        &self,
        call: Hypercall,
        what: &'static str,
        buf: GuestBuf,
        limit: u64,
    ) -> Result<Vec<u8>, HypercallError> {
        if buf.len > limit {
            return Err(HypercallError::TooLong {
                call,
                what,
                len: buf.len,
                limit,
            });
        }
        let mut bytes = vec![0u8; buf.len as usize];
        self.ram.read(buf.addr, &mut bytes).map_err(|e| match e {
            MemoryError::OutOfRange { .. } | MemoryError::Alloc(..) => HypercallError::BadBuffer {
                call,
                what,
                addr: buf.addr,
                len: buf.len,
            },
        })?;
        Ok(bytes)
    }

    fn text(
        &self,
        call: Hypercall,
        what: &'static str,
        buf: GuestBuf,
    ) -> Result<String, HypercallError> {
        let bytes = self.buffer(call, what, buf, MAX_REPORT_TEXT)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Range;

    static EXITS: AtomicU64 = AtomicU64::new(0);
    static STATS: AtomicU64 = AtomicU64::new(0);

    fn server<'a>(ram: &'a GuestRam, console: &'a Console) -> Server<'a> {
        static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
        let files = FILES.get_or_init(Files::default);
        Server {
            ram,
            console,
            started: Instant::now(),
            exits: &EXITS,
            stats_calls: &STATS,
            files,
            disk: None,
        }
    }

    fn setup() -> (GuestRam, Console) {
        (
            GuestRam::new(&[Range {
                start: 0,
                end: 0x10000,
            }])
            .unwrap(),
            Console::new(1, false, true),
        )
    }

    fn port_data(addr: u32) -> [u8; 4] {
        addr.to_le_bytes()
    }

    #[test]
    fn console_and_clock() {
        let (ram, console) = setup();
        let server = server(&ram, &console);
        ram.write(0x2000, b"hi there\n").unwrap();
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: GuestBuf {
                    addr: 0x2000,
                    len: 9,
                },
            },
        )
        .unwrap();
        assert_eq!(
            server.handle(0, Hypercall::Console, &port_data(0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(console.captured(), vec!["[vcpu0] hi there"]);

        ram.write_pod(0x1100, &ClockArgs { nanos: 0 }).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        server
            .handle(0, Hypercall::Clock, &port_data(0x1100))
            .unwrap();
        let clock: ClockArgs = ram.read_pod(0x1100).unwrap();
        assert!(clock.nanos >= 2_000_000);
    }

    #[test]
    fn hostile_arguments_are_rejected() {
        let (ram, console) = setup();
        let server = server(&ram, &console);
        assert_eq!(
            server.handle(0, Hypercall::Console, &port_data(0xfff8)),
            Err(HypercallError::BadArgs {
                call: Hypercall::Console,
                addr: 0xfff8
            })
        );
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: GuestBuf {
                    addr: 1 << 40,
                    len: 16,
                },
            },
        )
        .unwrap();
        assert_eq!(
            server.handle(0, Hypercall::Console, &port_data(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::Console,
                what: "text",
                addr: 1 << 40,
                len: 16
            })
        );
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: GuestBuf {
                    addr: 0x2000,
                    len: u64::MAX,
                },
            },
        )
        .unwrap();
        assert!(matches!(
            server.handle(0, Hypercall::Console, &port_data(0x1000)),
            Err(HypercallError::TooLong { .. })
        ));
        ram.write_pod(
            0x1000,
            &PanicArgs {
                message: GuestBuf {
                    addr: 0xff00,
                    len: 0x200,
                },
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            server.handle(0, Hypercall::Panic, &port_data(0x1000)),
            Err(HypercallError::BadBuffer {
                what: "message",
                ..
            })
        ));
        assert_eq!(
            server.handle(0, Hypercall::Exit, &[1, 0]),
            Err(HypercallError::BadAccessSize {
                call: Hypercall::Exit,
                size: 2
            })
        );
        assert!(console.captured().is_empty());
    }

    #[test]
    fn file_calls_check_buffers_and_handles() {
        let (ram, console) = setup();
        let server = server(&ram, &console);
        // No file is authorised: any name is ENOENT.
        ram.write(0x2000, b"data").unwrap();
        ram.write_pod(
            0x1000,
            &FileOpenArgs {
                name: GuestBuf {
                    addr: 0x2000,
                    len: 4,
                },
                status: 0,
            },
        )
        .unwrap();
        server
            .handle(0, Hypercall::FileOpen, &port_data(0x1000))
            .unwrap();
        assert_eq!(
            ram.read_pod::<FileOpenArgs>(0x1000).unwrap().status,
            -i64::from(libc::ENOENT)
        );
        // A read into a buffer outside guest memory stops the guest.
        let io = FileIoArgs {
            handle: 1,
            offset: 0,
            buf: GuestBuf {
                addr: 0xff00,
                len: 0x1000,
            },
            status: 0,
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            server.handle(0, Hypercall::FileRead, &port_data(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::FileRead,
                what: "data",
                addr: 0xff00,
                len: 0x1000
            })
        );
        let io = FileIoArgs {
            buf: GuestBuf {
                addr: 0,
                len: MAX_FILE_IO + 1,
            },
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert!(matches!(
            server.handle(0, Hypercall::FileWrite, &port_data(0x1000)),
            Err(HypercallError::TooLong {
                call: Hypercall::FileWrite,
                ..
            })
        ));
        // A valid buffer with an unknown handle is an error status, not a stop.
        let io = FileIoArgs {
            buf: GuestBuf {
                addr: 0x3000,
                len: 16,
            },
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            server.handle(0, Hypercall::FileRead, &port_data(0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(
            ram.read_pod::<FileIoArgs>(0x1000).unwrap().status,
            -i64::from(libc::EBADF)
        );
    }
}
