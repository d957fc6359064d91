//! The backing file: opened with `O_DIRECT`, sized once at creation, never
//! grown. Its length in 4 KiB blocks is the namespace capacity.

use crate::types::BLOCK_SIZE;
use std::format;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A backing file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the file system does not support O_DIRECT")]
    DirectIoUnsupported { path: PathBuf },
    #[error("{path}: size {len} is not a non-zero multiple of {BLOCK_SIZE} bytes")]
    Size { path: PathBuf, len: u64 },
}

/// An `O_DIRECT` file holding the namespace.
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    path: PathBuf,
    blocks: u64,
}

fn open_direct(path: &Path, create: bool) -> Result<File, FileError> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC);
    if create {
        opts.create_new(true);
    }
    opts.open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::EINVAL) {
            FileError::DirectIoUnsupported {
                path: path.to_path_buf(),
            }
        } else {
            FileError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

impl BackingFile {
    /// Creates a new file of `bytes` bytes (a non-zero multiple of 4 KiB)
    /// and reserves its blocks with `fallocate`, so that the file system
    /// cannot run out of space for it later (where it supports that).
    /// Fails if the file exists.
    pub fn create(path: impl AsRef<Path>, bytes: u64) -> Result<BackingFile, FileError> {
        let path = path.as_ref();
        if bytes == 0 || !bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(FileError::Size {
                path: path.to_path_buf(),
                len: bytes,
            });
        }
        let file = open_direct(path, true)?;
        let err = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = libc::off_t::try_from(bytes).map_err(|_| FileError::Size {
            path: path.to_path_buf(),
            len: bytes,
        })?;
        // SAFETY: plain syscall on a file descriptor we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                let _ = std::fs::remove_file(path);
                return Err(err(e));
            }
            log::warn!(
                "{}: fallocate unsupported, the file is sparse",
                path.display()
            );
            file.set_len(bytes).map_err(err)?;
        }
        Ok(BackingFile {
            file,
            path: path.to_path_buf(),
            blocks: bytes / BLOCK_SIZE,
        })
    }

    /// Opens an existing file; its length (a non-zero multiple of 4 KiB) is
    /// the capacity.
    pub fn open(path: impl AsRef<Path>) -> Result<BackingFile, FileError> {
        let path = path.as_ref();
        let file = open_direct(path, false)?;
        let len = file
            .metadata()
            .map_err(|source| FileError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if len == 0 || len % BLOCK_SIZE != 0 {
            return Err(FileError::Size {
                path: path.to_path_buf(),
                len,
            });
        }
        Ok(BackingFile {
            file,
            path: path.to_path_buf(),
            blocks: len / BLOCK_SIZE,
        })
    }

    /// Capacity in 4 KiB blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether files in `dir` can be opened with `O_DIRECT` (tmpfs cannot).
    pub fn direct_io_supported(dir: impl AsRef<Path>) -> bool {
        let probe = dir
            .as_ref()
            .join(format!(".odirect-probe-{}", std::process::id()));
        let ok = open_direct(&probe, true).is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
}
