//! Host files the user authorised on the command line (`dbos run --file
//! NAME=PATH`), reached by name through hypercalls. One VM exit per call:
//! for setup and tools, not for the hot I/O path (that is the NVMe queue).

use crate::abi::{calls, Call, FileArgs, FileIoArgs, FileOpenArgs, MAX_FILE_IO};
use crate::hypercall::{self, buf};
use crate::memory::virt_to_phys;
use crate::platform::PAGE_SIZE;

/// A host file error: the host's `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The name was not authorised.
    pub const ENOENT: Errno = Errno(2);
    /// A buffer is not physically contiguous in a way the host can address.
    pub const EFAULT: Errno = Errno(14);
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "host errno {}", self.0)
    }
}

fn status(s: i64) -> Result<u64, Errno> {
    if s < 0 {
        Err(Errno((-s) as i32))
    } else {
        Ok(s as u64)
    }
}

/// An open host file.
#[derive(Debug)]
pub struct HostFile {
    handle: u64,
}

/// Splits `[addr, addr + len)` into pieces that are each physically
/// contiguous and at most `MAX_FILE_IO` long: the direct map and the image are
/// contiguous; any other range (a window) is split at page boundaries.
fn pieces(addr: u64, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let contiguous = addr >= crate::abi::DIRECT_MAP_BASE;
    let mut done = 0usize;
    core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let here = addr + done as u64;
        let limit = if contiguous {
            MAX_FILE_IO
        } else {
            PAGE_SIZE - (here % PAGE_SIZE)
        };
        let n = (len - done).min(limit as usize);
        let piece = (done, n);
        done += n;
        Some(piece)
    })
}

impl HostFile {
    /// Opens the file authorised as `name`.
    pub fn open(name: &str) -> Result<HostFile, Errno> {
        let mut args = FileOpenArgs {
            name: buf(name.as_bytes()),
            status: 0,
        };
        hypercall::call(calls::FileOpen, &mut args);
        status(args.status).map(|handle| HostFile { handle })
    }

    /// One read or write hypercall for a physically contiguous piece.
    fn transfer(
        &self,
        call: Call<FileIoArgs>,
        offset: u64,
        virt: u64,
        len: usize,
    ) -> Result<usize, Errno> {
        let phys = virt_to_phys(virt).ok_or(Errno::EFAULT)?;
        let mut args = FileIoArgs {
            handle: self.handle,
            offset,
            buf: crate::abi::GuestBuf {
                addr: crate::abi::GuestPhysAddr(phys),
                len: len as u64,
            },
            status: 0,
        };
        hypercall::call(call, &mut args);
        status(args.status).map(|n| n as usize)
    }

    /// Reads at `offset` into `data`; returns the bytes read (fewer at the end
    /// of the file).
    pub fn read_at(&self, offset: u64, data: &mut [u8]) -> Result<usize, Errno> {
        let base = data.as_mut_ptr() as u64;
        let mut total = 0;
        for (start, n) in pieces(base, data.len()) {
            let got = self.transfer(
                calls::FileRead,
                offset + start as u64,
                base + start as u64,
                n,
            )?;
            total += got;
            if got < n {
                break;
            }
        }
        Ok(total)
    }

    /// Writes all of `data` at `offset`, extending the file if needed.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let base = data.as_ptr() as u64;
        for (start, n) in pieces(base, data.len()) {
            self.transfer(
                calls::FileWrite,
                offset + start as u64,
                base + start as u64,
                n,
            )?;
        }
        Ok(())
    }

    /// Makes the file's data durable on the host (`fdatasync`).
    pub fn flush(&self) -> Result<(), Errno> {
        let mut args = FileArgs {
            handle: self.handle,
            status: 0,
        };
        hypercall::call(calls::FileFlush, &mut args);
        status(args.status).map(|_| ())
    }

    /// The file's current size in bytes.
    pub fn size(&self) -> Result<u64, Errno> {
        let mut args = FileArgs {
            handle: self.handle,
            status: 0,
        };
        hypercall::call(calls::FileSize, &mut args);
        status(args.status)
    }

    /// A handle number the host did not hand out, for testing its checks.
    pub fn from_raw_handle(handle: u64) -> HostFile {
        HostFile { handle }
    }
}
