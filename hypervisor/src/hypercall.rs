//! Hypercall requests: decodes a hypercall exit (port and `rax`, see
//! [`dbos_abi::hypercall`]) into the call and its argument block's address,
//! and gives every service the same checked access to the argument block
//! and the buffers it names ([`Request`]). A bad request never touches host
//! memory outside guest RAM; it ends the guest with a [`HypercallError`]
//! naming the call. Which service serves which call is
//! [`crate::services`]'s.

use crate::memory::GuestRam;
use dbos_abi::{argument_address, GuestBuf, GuestPhysAddr, Hypercall, Pod, ReadBlock};

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

/// The argument block, read from guest memory (checked).
impl ReadBlock for &Request<'_> {
    type Error = HypercallError;

    fn read<T: Pod>(&mut self) -> Result<T, HypercallError> {
        self.ram
            .read_pod(self.block.raw())
            .map_err(|_| self.bad_args())
    }
}

impl<'a> Request<'a> {
    /// Call `call` from `vcpu` with its argument block at `block`.
    pub fn new(vcpu: u32, call: Hypercall, block: GuestPhysAddr, ram: &'a GuestRam) -> Self {
        Request {
            vcpu,
            call,
            block,
            ram,
        }
    }
}

impl Request<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 KiB of RAM at 0 and 64 KiB at 5 GiB (above the 32-bit range).
    pub(crate) const HIGH: u64 = 5 << 30;

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr(a)
    }

    fn decode(call: Hypercall, data: &[u8], rax: u64) -> Result<GuestPhysAddr, HypercallError> {
        block_address(call, port_value(call, data)?, rax)
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
}
