//! The hypercall server: decodes a hypercall exit, validates every guest
//! address and length against guest memory and the limits below, and carries
//! the call out. A bad request never touches host memory outside guest RAM;
//! it ends the guest with a [`HypercallError`] naming the call.

use crate::console::Console;
use crate::memory::{GuestRam, MemoryError};
use libdbos::abi::Pod;
use libdbos::abi::{ClockArgs, ConsoleArgs, ExitArgs, FaultArgs, GuestBuf, Hypercall, PanicArgs};
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
                args.vm_exits = self.exits.load(Ordering::Relaxed).saturating_sub(stats_calls);
                self.ram
                    .write_pod(addr, &args)
                    .map_err(|_| HypercallError::BadArgs { call, addr })?;
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
        Server { ram, console, started: Instant::now(), exits: &EXITS, stats_calls: &STATS }
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
        let server = Server {
            ram: &ram,
            console: &console,
            started: Instant::now(),
        };
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
        let server = Server {
            ram: &ram,
            console: &console,
            started: Instant::now(),
        };
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
}
