//! Host files a guest may use: only those the user named on the command line
//! (`dbos run --file NAME=PATH`), by name. The guest never names a host path;
//! a handle is an index into this list.
//!
//! These calls are for setup and tools (loading data, writing results); the
//! hot I/O path is the NVMe queue.

use crate::hypercall::{HypercallError, Outcome, Request, Service};
use dbos_abi::{FileArgs, FileIoArgs, FileOpenArgs, Hypercall, MAX_FILE_IO, MAX_FILE_NAME};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file authorised for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileGrant {
    pub name: String,
    pub path: PathBuf,
}

impl std::str::FromStr for FileGrant {
    type Err = String;

    /// Parses `NAME=PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=PATH"))?;
        if name.is_empty() || name.len() as u64 > MAX_FILE_NAME {
            return Err(format!(
                "file name {name:?} must be 1 to {} bytes",
                MAX_FILE_NAME
            ));
        }
        if path.is_empty() {
            return Err(format!("no path given for file {name:?}"));
        }
        Ok(FileGrant {
            name: name.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// A file could not be opened for the guest.
#[derive(Debug, thiserror::Error)]
#[error("cannot open file {name:?} ({}) for the guest: {source}", .path.display())]
pub struct FileOpenError {
    pub name: String,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The open files of one VM.
#[derive(Debug, Default)]
pub struct Files {
    files: Vec<(String, File)>,
}

fn errno(e: &std::io::Error) -> i64 {
    -i64::from(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Files {
    /// Opens every granted file read-write, creating it if missing.
    pub fn open(grants: &[FileGrant]) -> Result<Files, FileOpenError> {
        let mut files = Vec::new();
        for g in grants {
            if files.iter().any(|(n, _): &(String, File)| *n == g.name) {
                return Err(FileOpenError {
                    name: g.name.clone(),
                    path: g.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "name given twice",
                    ),
                });
            }
            let file = open_rw(&g.path).map_err(|source| FileOpenError {
                name: g.name.clone(),
                path: g.path.clone(),
                source,
            })?;
            files.push((g.name.clone(), file));
        }
        Ok(Files { files })
    }

    /// The handle of the file called `name`, or `-ENOENT`.
    pub fn lookup(&self, name: &[u8]) -> i64 {
        self.files
            .iter()
            .position(|(n, _)| n.as_bytes() == name)
            .map_or(-i64::from(libc::ENOENT), |i| i as i64 + 1)
    }

    fn get(&self, handle: u64) -> Result<&File, i64> {
        usize::try_from(handle)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .and_then(|i| self.files.get(i))
            .map(|(_, f)| f)
            .ok_or(-i64::from(libc::EBADF))
    }

    /// Reads at `offset` into `buf`; bytes read (short at end of file) or -errno.
    pub fn read(&self, handle: u64, offset: u64, buf: &mut [u8]) -> i64 {
        let file = match self.get(handle) {
            Ok(f) => f,
            Err(e) => return e,
        };
        if offset.checked_add(buf.len() as u64).is_none() {
            return -i64::from(libc::EINVAL);
        }
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return errno(&e),
            }
        }
        done as i64
    }

    /// Writes `buf` at `offset` (extending the file if needed); bytes written or -errno.
    pub fn write(&self, handle: u64, offset: u64, buf: &[u8]) -> i64 {
        let file = match self.get(handle) {
            Ok(f) => f,
            Err(e) => return e,
        };
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return -i64::from(libc::EINVAL);
        }
        match file.write_all_at(buf, offset) {
            Ok(()) => buf.len() as i64,
            Err(e) => errno(&e),
        }
    }

    /// `fdatasync`: 0 or -errno.
    pub fn flush(&self, handle: u64) -> i64 {
        match self.get(handle).map(File::sync_data) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => errno(&e),
            Err(e) => e,
        }
    }

    /// Current size or -errno.
    pub fn size(&self, handle: u64) -> i64 {
        match self.get(handle).map(File::metadata) {
            Ok(Ok(m)) => m.len() as i64,
            Ok(Err(e)) => errno(&e),
            Err(e) => e,
        }
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// The host-file calls: open by name, read, write, flush, size. A bad
/// handle or an I/O error is an errno in the block's status; a buffer outside
/// guest memory stops the guest.
impl Service for Files {
    fn serve(&self, req: &Request<'_>) -> Result<Outcome, HypercallError> {
        match req.call {
            Hypercall::FileOpen => {
                let mut args: FileOpenArgs = req.args()?;
                let name = req.buffer("name", args.name, MAX_FILE_NAME)?;
                args.status = self.lookup(&name);
                req.write_back(&args)
            }
            Hypercall::FileRead => {
                let mut args: FileIoArgs = req.args()?;
                req.check_buffer("data", args.buf, MAX_FILE_IO)?;
                let mut data = vec![0u8; args.buf.len as usize];
                args.status = self.read(args.handle, args.offset, &mut data);
                if args.status > 0 {
                    req.fill("data", args.buf, &data[..args.status as usize])?;
                }
                req.write_back(&args)
            }
            Hypercall::FileWrite => {
                let mut args: FileIoArgs = req.args()?;
                let data = req.buffer("data", args.buf, MAX_FILE_IO)?;
                args.status = self.write(args.handle, args.offset, &data);
                req.write_back(&args)
            }
            call => {
                debug_assert!(matches!(call, Hypercall::FileFlush | Hypercall::FileSize));
                let mut args: FileArgs = req.args()?;
                args.status = if call == Hypercall::FileFlush {
                    self.flush(args.handle)
                } else {
                    self.size(args.handle)
                };
                req.write_back(&args)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse() {
        let g: FileGrant = "data=/tmp/x=y".parse().unwrap();
        assert_eq!(
            g,
            FileGrant {
                name: "data".into(),
                path: "/tmp/x=y".into()
            }
        );
        assert!("data".parse::<FileGrant>().is_err());
        assert!("=/tmp/x".parse::<FileGrant>().is_err());
        assert!("data=".parse::<FileGrant>().is_err());
    }

    #[test]
    fn io_by_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let files = Files::open(&[FileGrant {
            name: "f".into(),
            path: path.clone(),
        }])
        .unwrap();
        assert_eq!(files.lookup(b"f"), 1);
        assert_eq!(files.lookup(b"g"), -i64::from(libc::ENOENT));
        assert_eq!(files.write(1, 3, b"abc"), 3);
        assert_eq!(files.size(1), 6);
        let mut buf = [9u8; 8];
        assert_eq!(files.read(1, 0, &mut buf), 6, "short read at end of file");
        assert_eq!(&buf[..6], b"\0\0\0abc");
        assert_eq!(files.flush(1), 0);
        assert_eq!(files.read(2, 0, &mut buf), -i64::from(libc::EBADF));
        assert_eq!(files.read(0, 0, &mut buf), -i64::from(libc::EBADF));
        assert_eq!(
            files.write(1, u64::MAX - 1, b"abc"),
            -i64::from(libc::EINVAL)
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0abc");
        let twice = Files::open(&[
            FileGrant {
                name: "f".into(),
                path: path.clone(),
            },
            FileGrant {
                name: "f".into(),
                path,
            },
        ]);
        assert!(twice.is_err());
    }
}
