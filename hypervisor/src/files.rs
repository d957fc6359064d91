//! Host files a guest may use: only those the user named on the command line
//! (`dbos run --file NAME=PATH`), by name. The guest never names a host path;
//! a handle is an index into this list.
//!
//! These calls are for setup and tools (loading data, writing results); the
//! hot I/O path is the NVMe queue.

use crate::hypercall::{HypercallError, Outcome, Request};
use dbos_abi::{FileArgs, FileIoArgs, FileOpenArgs, MAX_FILE_IO, MAX_FILE_NAME};
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
    /// Opens every granted file read-write, creating it if missing. All or
    /// nothing: the grants are checked first (no name twice), existing files
    /// are opened before any missing one is created, and when anything fails
    /// the files this call created are removed again, so a failed setup
    /// leaves no new file behind.
    pub fn open(grants: &[FileGrant]) -> Result<Files, FileOpenError> {
        let error = |g: &FileGrant, source| FileOpenError {
            name: g.name.clone(),
            path: g.path.clone(),
            source,
        };
        if let Some(name) = duplicate_name(grants) {
            let g = grants
                .iter()
                .rfind(|g| g.name == name)
                .unwrap_or(&grants[0]);
            return Err(error(
                g,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "name given twice"),
            ));
        }
        // Existing files first: most failures (a directory, no permission)
        // show up here, before anything is created.
        let mut opened: Vec<Option<File>> = Vec::with_capacity(grants.len());
        for g in grants {
            match open_rw(&g.path, false) {
                Ok(file) => opened.push(Some(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => opened.push(None),
                Err(e) => return Err(error(g, e)),
            }
        }
        let mut created: Vec<&Path> = Vec::new();
        let mut files = Vec::with_capacity(grants.len());
        for (g, file) in grants.iter().zip(opened) {
            let file = match file {
                Some(file) => Ok(file),
                None => open_rw(&g.path, true).inspect(|_| created.push(&g.path)),
            };
            match file {
                Ok(file) => files.push((g.name.clone(), file)),
                Err(e) => {
                    for path in created {
                        if let Err(e) = std::fs::remove_file(path) {
                            log::warn!("cannot remove {} again: {e}", path.display());
                        }
                    }
                    return Err(error(g, e));
                }
            }
        }
        Ok(Files { files })
    }

    /// Files already open, by name (for the fuzz targets; [`Files::open`]
    /// is the way to grant files).
    #[doc(hidden)]
    pub fn from_open(files: Vec<(String, File)>) -> Files {
        Files { files }
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

/// The first name granted more than once, if any.
pub fn duplicate_name(grants: &[FileGrant]) -> Option<&str> {
    grants
        .iter()
        .enumerate()
        .find(|(i, g)| grants[..*i].iter().any(|h| h.name == g.name))
        .map(|(_, g)| g.name.as_str())
}

/// Opens an existing file read-write, or creates a new one (`create`; it
/// must not exist yet, so that what this call creates is known exactly).
fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(path)
}

/// The host-file calls: open by name, read, write, flush, size. A bad
/// handle or an I/O error is an errno in the block's status; a buffer outside
/// guest memory stops the guest.
impl Files {
    /// [`Hypercall::FileOpen`](dbos_abi::Hypercall::FileOpen).
    pub fn open_call(
        &self,
        req: &Request<'_>,
        mut args: FileOpenArgs,
    ) -> Result<Outcome, HypercallError> {
        let name = req.buffer("name", args.name, MAX_FILE_NAME)?;
        args.status = self.lookup(&name);
        req.write_back(&args)
    }

    /// [`Hypercall::FileRead`](dbos_abi::Hypercall::FileRead).
    pub fn read_call(
        &self,
        req: &Request<'_>,
        mut args: FileIoArgs,
    ) -> Result<Outcome, HypercallError> {
        req.check_buffer("data", args.buf, MAX_FILE_IO)?;
        let mut data = vec![0u8; args.buf.len as usize];
        args.status = self.read(args.handle, args.offset, &mut data);
        if args.status > 0 {
            req.fill("data", args.buf, &data[..args.status as usize])?;
        }
        req.write_back(&args)
    }

    /// [`Hypercall::FileWrite`](dbos_abi::Hypercall::FileWrite).
    pub fn write_call(
        &self,
        req: &Request<'_>,
        mut args: FileIoArgs,
    ) -> Result<Outcome, HypercallError> {
        let data = req.buffer("data", args.buf, MAX_FILE_IO)?;
        args.status = self.write(args.handle, args.offset, &data);
        req.write_back(&args)
    }

    /// [`Hypercall::FileFlush`](dbos_abi::Hypercall::FileFlush).
    pub fn flush_call(
        &self,
        req: &Request<'_>,
        mut args: FileArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = self.flush(args.handle);
        req.write_back(&args)
    }

    /// [`Hypercall::FileSize`](dbos_abi::Hypercall::FileSize).
    pub fn size_call(
        &self,
        req: &Request<'_>,
        mut args: FileArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = self.size(args.handle);
        req.write_back(&args)
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

    #[test]
    fn a_failed_setup_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let grant = |name: &str, file: &str| FileGrant {
            name: name.into(),
            path: dir.path().join(file),
        };
        // A name given twice: refused before anything is opened.
        let err = Files::open(&[grant("a", "f1"), grant("a", "f2")]).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AlreadyExists);
        // A grant that cannot be opened (a directory), after one that would
        // be created: the new file is not left behind.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = Files::open(&[grant("a", "f1"), grant("b", "d")]).unwrap_err();
        assert_eq!(err.name, "b");
        // One that can only fail at creation (its directory is missing),
        // after one that was created.
        let err = Files::open(&[grant("a", "f1"), grant("b", "no/such/f")]).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the directory d"
        );
        // The path appears once in the message.
        let msg = err.to_string();
        assert_eq!(msg.matches("no/such/f").count(), 1, "{msg}");
        assert_eq!(duplicate_name(&[grant("a", "1"), grant("b", "2")]), None);
        assert_eq!(
            duplicate_name(&[grant("a", "1"), grant("b", "2"), grant("b", "3")]),
            Some("b")
        );
    }
}
