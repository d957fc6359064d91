//! Process mode without a hand-off: a [`BlockDevice`] whose requests the
//! calling thread carries out itself, one system call each (`pread`,
//! `pwrite`, `pwritev2` with `RWF_DSYNC` for a FUA write, `fdatasync` for a
//! flush) on the `O_DIRECT` backing file. A miss then costs one system call
//! and no thread switch, as vmcache's `pread` does, and keeps working when
//! other work takes the CPUs: there is no poller thread that must get a
//! core for the caller to make progress. Requests run one at a time per
//! device (queue depth 1 per thread); a pool gives each thread that misses
//! a device of its own ([`DirectDevice::another`]).
//!
//! The queue pair over the poller ([`NvmeDevice`](crate::NvmeDevice) on
//! `dbos_nvme::host::process`) stays: it is how the guest does I/O, and the
//! method the benchmarks compare this one with.
//!
//! Like the poller, a device watches its file's link count: once the file
//! has been deleted, a flush or FUA write fails (and so does every later
//! write), because nothing written to a file without a name survives.

use crate::device::{BlockDevice, DeviceError, Io, IoBuf, IoKind, IoTag, BLOCK_SIZE};
use crate::immediate::Immediate;
use dbos_nvme::host::{link_count, BackingFile};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A device on an `O_DIRECT` file whose requests the caller carries out.
pub struct DirectDevice {
    file: Arc<BackingFile>,
    blocks: u64,
    /// Buffers handed out, results not yet polled.
    io: Immediate,
    /// The file was found deleted: writes and flushes fail from now on.
    deleted: bool,
}

impl DirectDevice {
    /// A device on `file` (opened `O_DIRECT`, locked).
    pub fn new(file: Arc<BackingFile>) -> DirectDevice {
        DirectDevice {
            blocks: file.blocks(),
            file,
            io: Immediate::default(),
            deleted: false,
        }
    }

    /// Another device on the same file (for another thread).
    pub fn another(&self) -> DirectDevice {
        DirectDevice::new(self.file.clone())
    }

    /// Carries out `io` (checked) on this thread.
    fn execute(&mut self, io: &Io) -> Result<(), DeviceError> {
        if io.kind == IoKind::Flush {
            self.check_deleted()?;
            return self
                .file
                .file()
                .sync_data()
                .map_err(|_| DeviceError::WriteFault);
        }
        let end = io.lba.checked_add(io.blocks as u64);
        if io.blocks == 0 || end.is_none_or(|e| e > self.blocks) {
            return Err(DeviceError::LbaOutOfRange);
        }
        let len = io.blocks as usize * BLOCK_SIZE;
        let ptr = self
            .io
            .buffer(io.addr, len)
            .ok_or(DeviceError::InvalidRequest)?;
        let offset = io.lba * BLOCK_SIZE as u64;
        match io.kind {
            IoKind::Read => {
                // SAFETY: `ptr..ptr + len` lies inside a buffer this device
                // allocated and owns (checked above), and the caller's
                // request hands it to the device until it is polled.
                let buf = unsafe { core::slice::from_raw_parts_mut(ptr, len) };
                self.file
                    .file()
                    .read_exact_at(buf, offset)
                    .map_err(|e| error(&e, DeviceError::UnrecoveredRead))
            }
            IoKind::Write | IoKind::WriteFua => {
                if self.deleted {
                    return Err(DeviceError::WriteFault);
                }
                // SAFETY: as for the read.
                let buf = unsafe { core::slice::from_raw_parts(ptr, len) };
                if io.kind == IoKind::WriteFua {
                    write_dsync(self.file.file(), buf, offset)?;
                    self.check_deleted()
                } else {
                    self.file
                        .file()
                        .write_all_at(buf, offset)
                        .map_err(|e| error(&e, DeviceError::WriteFault))
                }
            }
            IoKind::Flush => unreachable!("handled above"),
        }
    }

    /// Fails (from now on) if the file has been deleted.
    fn check_deleted(&mut self) -> Result<(), DeviceError> {
        // The link count alone (`link_count`: a query of the timestamps
        // would slow the durable write after it).
        if !self.deleted && link_count(self.file.file()).is_ok_and(|n| n == 0) {
            log::error!(
                "{} was deleted while in use: writes and flushes fail from now on",
                self.file.path().display()
            );
            self.deleted = true;
        }
        if self.deleted {
            Err(DeviceError::WriteFault)
        } else {
            Ok(())
        }
    }
}

/// The device error for an I/O error (`otherwise` unless the disk is full).
fn error(e: &std::io::Error, otherwise: DeviceError) -> DeviceError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => DeviceError::CapacityExceeded,
        _ => otherwise,
    }
}

/// One write of `buf` at `offset` that returns only once it is durable
/// (`pwritev2` with `RWF_DSYNC`: the FUA write).
fn write_dsync(file: &std::fs::File, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
    let mut done = 0;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_ptr() as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: one iovec over the live slice `buf[done..]`, read by the
        // kernel during the call only.
        let n = unsafe {
            libc::pwritev2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_DSYNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error(&e, DeviceError::WriteFault));
        }
        if n == 0 {
            return Err(DeviceError::WriteFault);
        }
        done += n as usize;
    }
    Ok(())
}

// SAFETY: every buffer handed out is a fresh allocation of this device,
// never handed out twice, valid until the device drops, and the device
// touches it only while carrying out a request that names it (inside
// `submit`); its address is its host address.
unsafe impl BlockDevice for DirectDevice {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        self.io.alloc(blocks)
    }

    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        let result = self.execute(io);
        Ok(self.io.complete(result))
    }

    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        self.io.poll()
    }

    fn in_flight(&self) -> usize {
        self.io.in_flight()
    }

    fn file_at(&self, lba: u64) -> Option<(i32, u64)> {
        (lba < self.blocks).then(|| (self.file.file().as_raw_fd(), lba * BLOCK_SIZE as u64))
    }

    /// Allocates the file's blocks (`fallocate`): a growable store's file
    /// is a hole past what it uses (`BackingFile::create_growable`).
    fn reserve(&mut self, first: u64, count: u64) -> Result<(), DeviceError> {
        if first.checked_add(count).is_none_or(|end| end > self.blocks) {
            return Err(DeviceError::LbaOutOfRange);
        }
        self.check_deleted()?;
        self.file
            .reserve(first * BLOCK_SIZE as u64, count * BLOCK_SIZE as u64)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => DeviceError::CapacityExceeded,
                _ => DeviceError::WriteFault,
            })
    }
}
