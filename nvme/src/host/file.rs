//! The backing file: opened with `O_DIRECT`, sized once at creation, never
//! grown. Its length in 4 KiB blocks is the namespace capacity.
//!
//! Every [`BackingFile`] holds an exclusive `flock` on its file for as long
//! as it (or a backend's duplicate of its descriptor) is open, so two
//! devices, two VMs or two engines never drive one file at once: the second
//! opener gets [`FileError::Locked`], naming the holder when `/proc/locks`
//! tells it. `flock` locks belong to the open file description, so two
//! opens in one process conflict as well.

use crate::types::BLOCK_SIZE;
use std::format;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

/// A backing file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the file system does not support O_DIRECT")]
    DirectIoUnsupported { path: PathBuf },
    #[error("{path} is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: size {len} is not a non-zero multiple of {BLOCK_SIZE} bytes")]
    Size { path: PathBuf, len: u64 },
    #[error("{path} is in use: {holder} holds an exclusive lock on it (flock); one disk has one user at a time")]
    Locked { path: PathBuf, holder: LockHolder },
}

/// Who holds the lock on a file, as far as `/proc/locks` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockHolder {
    /// A process: its pid and command name (`/proc/PID/comm`), and whether
    /// it is this process (another open of the same file).
    Process {
        pid: u32,
        comm: Option<String>,
        this_process: bool,
    },
    /// Not found (the lock is held from another PID namespace, or was
    /// released just now).
    Unknown,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockHolder::Process {
                pid,
                comm,
                this_process,
            } => {
                write!(f, "process {pid}")?;
                if let Some(c) = comm {
                    write!(f, " ({c})")?;
                }
                if *this_process {
                    write!(f, ", this process, through another open of the file,")?;
                }
                Ok(())
            }
            LockHolder::Unknown => write!(f, "another open file description"),
        }
    }
}

/// Takes an exclusive, non-blocking `flock` on `file`.
fn lock(file: &File, path: &Path) -> Result<(), FileError> {
    loop {
        // SAFETY: plain syscall on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(FileError::Locked {
                    path: path.to_path_buf(),
                    holder: lock_holder(file),
                })
            }
            _ => {
                return Err(FileError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
}

/// The link count of an open file: `statx` asking for `STATX_NLINK` only.
///
/// Not `fstat` (nor `File::metadata`, which asks `statx` for the
/// timestamps too): on this machine's Linux 6.18 (ext4), a query of a
/// file's timestamps before each durable (`RWF_DSYNC`) 4 KiB write made
/// the write about 55 us slower (180-186 us against 122-130 us without
/// it; 135 us with this), presumably because a queried timestamp must be
/// updated finely by the next write, which the durable write then waits
/// to commit. The deletion gates check the link count at every flush and
/// FUA write (`poller::Poller::watch_for_deletion`,
/// `dbos_bufferpool::direct`).
pub fn link_count(file: &File) -> io::Result<u64> {
    let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx fills the struct we own; the path is an empty C
    // string, which with AT_EMPTY_PATH names the descriptor itself.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_NLINK,
            sx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and wrote the struct (zeroed before).
    let sx = unsafe { sx.assume_init() };
    if sx.stx_mask & libc::STATX_NLINK == 0 {
        // A file system that cannot say: ask the old way.
        use std::os::unix::fs::MetadataExt;
        return file.metadata().map(|m| m.nlink());
    }
    Ok(u64::from(sx.stx_nlink))
}

/// The holder of the `flock` on `file`, from `/proc/locks`.
fn lock_holder(file: &File) -> LockHolder {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return LockHolder::Unknown;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    match holder_in(&locks, meta.dev(), meta.ino()) {
        Some(pid) => LockHolder::Process {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim_end().to_string()),
            this_process: pid == std::process::id(),
        },
        None => LockHolder::Unknown,
    }
}

/// The pid of the granted `FLOCK` on device `dev`, inode `ino` in the text
/// of `/proc/locks` (lines like `1: FLOCK  ADVISORY  WRITE 12571
/// fe:00:10052806 0 EOF`; device numbers in hex, the inode in decimal;
/// waiters are marked `->` and skipped).
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == want => pid.parse().ok(),
            _ => None,
        }
    })
}

/// An `O_DIRECT` file holding the namespace.
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    path: PathBuf,
    blocks: u64,
}

/// What a file that is not a regular file is, for messages.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `fallocate` of bytes `offset..offset + len` of `file` (the length
/// grows to cover them if it must); unsupported: a warning, and Ok.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: plain syscall on a file descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, n) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        log::warn!("fallocate unsupported: the file stays sparse");
    }
    Ok(())
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

/// Opens `path` (`O_DIRECT`) and locks it, making sure the lock is on the
/// file at `path`: a power-cut write-back (`PowerCut::store`) renames a new
/// file over the path while its process holds the lock on the old one, and
/// an open made just before that rename would otherwise lock the old,
/// unlinked file once that process lets go of it. Such an open is retried.
fn open_locked(path: &Path) -> Result<File, FileError> {
    use std::os::unix::fs::MetadataExt;
    let io_err = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..16 {
        let file = open_direct(path, false)?;
        lock(&file, path)?;
        let ours = file.metadata().map_err(io_err)?;
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (ours.dev(), ours.ino()) => return Ok(file),
            // Replaced since we opened it: open what is there now.
            Ok(_) => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    Err(io_err(io::Error::other(
        "the file was replaced again and again while it was being opened",
    )))
}

impl BackingFile {
    /// Creates a new file of `bytes` bytes (a non-zero multiple of 4 KiB)
    /// and reserves its blocks with `fallocate`, so that the file system
    /// cannot run out of space for it later (where it supports that).
    /// Fails if the file exists. The new file is locked like one opened
    /// with [`BackingFile::open`].
    pub fn create(path: impl AsRef<Path>, bytes: u64) -> Result<BackingFile, FileError> {
        let path = path.as_ref();
        if bytes == 0 || !bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(FileError::Size {
                path: path.to_path_buf(),
                len: bytes,
            });
        }
        let file = open_direct(path, true)?;
        lock(&file, path)?;
        let err = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        libc::off_t::try_from(bytes).map_err(|_| FileError::Size {
            path: path.to_path_buf(),
            len: bytes,
        })?;
        if let Err(e) = allocate(&file, 0, bytes) {
            let _ = std::fs::remove_file(path);
            return Err(err(e));
        }
        // (Where fallocate is unsupported the file is sparse.)
        file.set_len(bytes).map_err(err)?;
        Ok(BackingFile {
            file,
            path: path.to_path_buf(),
            blocks: bytes / BLOCK_SIZE,
        })
    }

    /// Creates a new file of `bytes` bytes of which only the first
    /// `reserved` bytes and the last block are allocated: the rest is a
    /// hole that the store grows into, allocating it first with
    /// [`BackingFile::reserve`]. So the file's length is the most the
    /// store may grow to, and its blocks on disk are what it uses. Fails if
    /// the file exists; locked like [`BackingFile::create`].
    pub fn create_growable(
        path: impl AsRef<Path>,
        bytes: u64,
        reserved: u64,
    ) -> Result<BackingFile, FileError> {
        let path = path.as_ref();
        if bytes == 0
            || !bytes.is_multiple_of(BLOCK_SIZE)
            || !reserved.is_multiple_of(BLOCK_SIZE)
            || reserved >= bytes
            || libc::off_t::try_from(bytes).is_err()
        {
            return Err(FileError::Size {
                path: path.to_path_buf(),
                len: bytes,
            });
        }
        let file = open_direct(path, true)?;
        lock(&file, path)?;
        let made = allocate(&file, 0, reserved)
            .and_then(|()| allocate(&file, bytes - BLOCK_SIZE, BLOCK_SIZE))
            .and_then(|()| file.set_len(bytes));
        if let Err(source) = made {
            let _ = std::fs::remove_file(path);
            return Err(FileError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(BackingFile {
            file,
            path: path.to_path_buf(),
            blocks: bytes / BLOCK_SIZE,
        })
    }

    /// Allocates the file's blocks for bytes `offset..offset + len`
    /// (`fallocate`, keeping the length), so that writing them cannot fail
    /// for want of space; `ENOSPC` if the file system has no room. Where
    /// `fallocate` is unsupported nothing is reserved (a warning is
    /// logged).
    pub fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        allocate(&self.file, offset, len)
    }

    /// Opens an existing file; its length (a non-zero multiple of 4 KiB) is
    /// the capacity. Fails with [`FileError::Locked`] while another
    /// `BackingFile` (in any process) has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<BackingFile, FileError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(FileError::NotAFile {
                path: path.to_path_buf(),
                kind: file_kind(&meta.file_type()),
            });
        }
        let file = open_locked(path)?;
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

    /// Another handle on the same open file (a duplicated descriptor,
    /// which shares the lock; the lock is held until every handle is
    /// closed).
    pub fn try_clone(&self) -> io::Result<BackingFile> {
        Ok(BackingFile {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            blocks: self.blocks,
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

    /// A new open file description of the same file (`O_DIRECT`, through
    /// `/proc/self/fd`, so a rename does not matter), without the lock: for
    /// an io_uring instance to register. A ring releases its registered
    /// files asynchronously after it is closed, so a registered descriptor
    /// of the locked open would keep the file locked for a moment after its
    /// user is gone; the lock stays with this `BackingFile`'s descriptor and
    /// its duplicates ([`std::fs::File::try_clone`]), which are closed
    /// synchronously.
    pub fn reopen_unlocked(&self) -> Result<File, FileError> {
        open_direct(
            Path::new(&format!("/proc/self/fd/{}", self.file.as_raw_fd())),
            false,
        )
        .map_err(|e| match e {
            FileError::Io { source, .. } => FileError::Io {
                path: self.path.clone(),
                source,
            },
            FileError::DirectIoUnsupported { .. } => FileError::DirectIoUnsupported {
                path: self.path.clone(),
            },
            other => other,
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same open file, known by `path` from now on (after a rename).
    #[cfg(feature = "powercut")]
    pub(crate) fn renamed(self, path: PathBuf) -> BackingFile {
        BackingFile { path, ..self }
    }

    /// Whether the file has been deleted: its link count is 0 (`fstat`).
    /// Its data is still there for this open, but no longer reachable by
    /// any name, so nothing written to it survives its last close.
    pub fn is_deleted(&self) -> io::Result<bool> {
        link_count(&self.file).map(|n| n == 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_parsed() {
        let locks = "1: FLOCK  ADVISORY  WRITE 12571 fe:00:10052806 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 999 fe:00:77 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 4242 fe:00:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4343 fe:00:77 0 EOF\n";
        let dev = libc::makedev(0xfe, 0) as u64;
        assert_eq!(holder_in(locks, dev, 10052806), Some(12571));
        assert_eq!(holder_in(locks, dev, 77), Some(4343));
        assert_eq!(holder_in(locks, dev, 78), None);
        assert_eq!(holder_in(locks, libc::makedev(8, 1) as u64, 77), None);
    }
}
