//! The `fork()` baseline: a child process holds the snapshot's view, as
//! Redis's BGSAVE does.
//!
//! The heap is a plain `MAP_PRIVATE|MAP_ANONYMOUS` mapping, so `fork()` gives
//! the child a copy-on-write image of it frozen at the fork: the kernel
//! copies every page-table entry of the heap (its cost grows with the heap)
//! and every later first write to a page in the parent takes a copy-on-write
//! fault. [`ForkHeap::take`] forks one child per snapshot; the parent reads
//! the view through a request protocol: it writes a `Request` to the
//! child's request pipe, the child copies the range into a `MAP_SHARED`
//! buffer (or computes its checksum) and answers with a `Reply` on the
//! reply pipe. Releasing a snapshot kills the child (`SIGKILL`) and reaps it.
//!
//! # Why the child is safe in a multi-threaded process
//!
//! After `fork()` in a multi-threaded process the child has only the forking
//! thread; locks held by the other threads (the allocator's among them) stay
//! locked forever, so the child may only do async-signal-safe work. The
//! child runs `child_serve`, which only: calls `prctl`, `getppid`, `read`,
//! `write` and `_exit` (raw syscalls, async-signal-safe), copies memory with
//! `ptr::copy_nonoverlapping`, and runs [`Checksum::update`] (a loop over
//! bytes). It allocates nothing, takes no lock, never panics (all arithmetic
//! is checked, out-of-range requests get an error reply) and never returns:
//! it leaves with `_exit`, so no destructor or `atexit` handler of the
//! parent's state runs in it. Everything it uses (pipes, the shared buffer,
//! the heap's address) is set up by the parent before the fork.

use crate::sys::{check_heap_len, Mapping};
use crate::{Checksum, Snapshotter};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Size of the buffer a child copies requested ranges into: the most one
/// read request moves.
pub const SHARED_BUFFER: usize = 256 * 1024;

const OP_COPY: u64 = 1;
const OP_CHECKSUM: u64 = 2;
const STATUS_OK: u64 = 0;
const STATUS_BAD_RANGE: u64 = 1;
const STATUS_BAD_OP: u64 = 2;

/// A request from the parent to a snapshot's child.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    op: u64,
    offset: u64,
    len: u64,
}

/// The child's answer: a status and, for a checksum, its value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Reply {
    status: u64,
    value: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("heap size {0} is not a non-zero multiple of 4096")]
    HeapSize(usize),
    #[error("mapping the {what} ({len} bytes)")]
    Map {
        what: &'static str,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("creating a pipe to a snapshot child")]
    Pipe(#[source] io::Error),
    #[error("fork() for a snapshot")]
    Fork(#[source] io::Error),
    #[error("range {offset}+{len} is outside the heap of {heap_len} bytes")]
    OutOfRange {
        offset: usize,
        len: usize,
        heap_len: usize,
    },
    #[error("talking to snapshot child {pid}")]
    ChildIo {
        pid: libc::pid_t,
        #[source]
        source: io::Error,
    },
    #[error("snapshot child {pid} closed its pipe (it died)")]
    ChildGone { pid: libc::pid_t },
    #[error("snapshot child {pid} refused request (op {op}, {offset}+{len}) with status {status}")]
    ChildRefused {
        pid: libc::pid_t,
        op: u64,
        offset: usize,
        len: usize,
        status: u64,
    },
    #[error("reaping snapshot child {pid}")]
    Wait {
        pid: libc::pid_t,
        #[source]
        source: io::Error,
    },
}

/// A snapshot held by a child process.
#[derive(Debug)]
pub struct ForkSnapshot {
    pid: libc::pid_t,
    /// The pipes and the shared buffer; one request at a time.
    chan: Mutex<Channel>,
    reaped: bool,
    /// The heap's count of live snapshots, decremented when reaped.
    live: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Channel {
    request: OwnedFd,
    reply: OwnedFd,
    shared: Mapping,
}

impl ForkSnapshot {
    /// The child's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    fn kill_and_reap(&mut self) -> Result<(), ForkError> {
        if self.reaped {
            return Ok(());
        }
        self.reaped = true;
        self.live.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: signals our own child, which has not been reaped yet (so
        // its pid cannot have been reused).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(ForkError::Wait {
                    pid: self.pid,
                    source: err,
                });
            }
        }
    }

    fn request(
        &self,
        op: u64,
        offset: usize,
        len: usize,
        out: Option<&mut [u8]>,
    ) -> Result<u64, ForkError> {
        let chan = self.chan.lock().unwrap_or_else(|e| e.into_inner());
        let req = Request {
            op,
            offset: offset as u64,
            len: len as u64,
        };
        let io = |source| ForkError::ChildIo {
            pid: self.pid,
            source,
        };
        // SAFETY: `Request` is `repr(C)` plain old data without padding.
        let req_bytes = unsafe { as_bytes(&req) };
        write_all(chan.request.as_raw_fd(), req_bytes).map_err(io)?;
        let mut reply = Reply::default();
        // SAFETY: `Reply` is `repr(C)` plain old data, valid for any bytes.
        let reply_bytes = unsafe { as_bytes_mut(&mut reply) };
        if !read_exact(chan.reply.as_raw_fd(), reply_bytes).map_err(io)? {
            return Err(ForkError::ChildGone { pid: self.pid });
        }
        if reply.status != STATUS_OK {
            return Err(ForkError::ChildRefused {
                pid: self.pid,
                op,
                offset,
                len,
                status: reply.status,
            });
        }
        if let Some(out) = out {
            // SAFETY: the child wrote `len <= SHARED_BUFFER` bytes to the
            // shared buffer before replying (the reply orders them: the pipe
            // write/read is a full barrier between the processes) and writes
            // nothing more until our next request, which our lock excludes.
            let src = unsafe { std::slice::from_raw_parts(chan.shared.ptr(), out.len()) };
            out.copy_from_slice(src);
        }
        Ok(reply.value)
    }
}

impl Drop for ForkSnapshot {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `release` reports them.
        let _ = self.kill_and_reap();
    }
}

/// A `MAP_PRIVATE|MAP_ANONYMOUS` heap whose snapshots are forked children.
#[derive(Debug)]
pub struct ForkHeap {
    heap: Mapping,
    live: Arc<AtomicUsize>,
}

impl ForkHeap {
    /// Maps and populates a zeroed heap of `len` bytes.
    pub fn new(len: usize) -> Result<ForkHeap, ForkError> {
        if !check_heap_len(len) {
            return Err(ForkError::HeapSize(len));
        }
        let heap = Mapping::anonymous(len, false).map_err(|source| ForkError::Map {
            what: "heap",
            len,
            source,
        })?;
        Ok(ForkHeap {
            heap,
            live: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), ForkError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.heap.len() => Ok(()),
            _ => Err(ForkError::OutOfRange {
                offset,
                len,
                heap_len: self.heap.len(),
            }),
        }
    }
}

// SAFETY: `heap()` is the start of the owned, page-aligned mapping of
// `heap_len()` bytes, which lives as long as `self`.
unsafe impl Snapshotter for ForkHeap {
    type Snapshot = ForkSnapshot;
    type Error = ForkError;

    fn heap(&self) -> *mut u8 {
        self.heap.ptr()
    }

    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn take(&self) -> Result<ForkSnapshot, ForkError> {
        let shared = Mapping::anonymous(SHARED_BUFFER, true).map_err(|source| ForkError::Map {
            what: "shared buffer",
            len: SHARED_BUFFER,
            source,
        })?;
        let (req_read, req_write) = pipe().map_err(ForkError::Pipe)?;
        let (reply_read, reply_write) = pipe().map_err(ForkError::Pipe)?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let args = ChildArgs {
            parent,
            heap: self.heap.ptr(),
            heap_len: self.heap.len(),
            shared: shared.ptr(),
            requests: req_read.as_raw_fd(),
            replies: reply_write.as_raw_fd(),
        };
        // SAFETY: fork() itself is sound; the child immediately calls
        // `child_serve`, which only does async-signal-safe work and never
        // returns (see the module documentation).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(ForkError::Fork(io::Error::last_os_error()));
        }
        if pid == 0 {
            child_serve(&args);
        }
        drop(req_read);
        drop(reply_write);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(ForkSnapshot {
            pid,
            chan: Mutex::new(Channel {
                request: req_write,
                reply: reply_read,
                shared,
            }),
            reaped: false,
            live: Arc::clone(&self.live),
        })
    }

    fn read(&self, snap: &ForkSnapshot, offset: usize, buf: &mut [u8]) -> Result<(), ForkError> {
        self.check_range(offset, buf.len())?;
        for (i, chunk) in buf.chunks_mut(SHARED_BUFFER).enumerate() {
            let len = chunk.len();
            snap.request(OP_COPY, offset + i * SHARED_BUFFER, len, Some(chunk))?;
        }
        Ok(())
    }

    /// Computed in the child: only 8 bytes cross the pipe.
    fn checksum(&self, snap: &ForkSnapshot, offset: usize, len: usize) -> Result<u64, ForkError> {
        self.check_range(offset, len)?;
        snap.request(OP_CHECKSUM, offset, len, None)
    }

    fn release(&self, mut snap: ForkSnapshot) -> Result<(), ForkError> {
        snap.kill_and_reap()
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// What the child needs, prepared before the fork.
struct ChildArgs {
    parent: libc::pid_t,
    heap: *const u8,
    heap_len: usize,
    shared: *mut u8,
    requests: RawFd,
    replies: RawFd,
}

/// The child's loop: serve requests until the request pipe closes or the
/// parent dies, then `_exit`. Async-signal-safe only (module documentation).
fn child_serve(args: &ChildArgs) -> ! {
    // SAFETY: prctl/getppid/_exit are raw syscalls, async-signal-safe. Die
    // with the parent; if it already died before the prctl, leave now.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != args.parent {
            libc::_exit(0);
        }
    }
    loop {
        let mut req = Request::default();
        // SAFETY: `Request` is plain old data, valid for any bytes.
        let bytes = unsafe { as_bytes_mut(&mut req) };
        match read_exact(args.requests, bytes) {
            Ok(true) => {}
            // SAFETY: `_exit` is async-signal-safe and never returns.
            _ => unsafe { libc::_exit(0) },
        }
        let reply = serve_one(args, &req);
        // SAFETY: `Reply` is `repr(C)` plain old data without padding.
        let bytes = unsafe { as_bytes(&reply) };
        if write_all(args.replies, bytes).is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

fn serve_one(args: &ChildArgs, req: &Request) -> Reply {
    let bad = |status| Reply { status, value: 0 };
    let (Ok(offset), Ok(len)) = (usize::try_from(req.offset), usize::try_from(req.len)) else {
        return bad(STATUS_BAD_RANGE);
    };
    if offset
        .checked_add(len)
        .is_none_or(|end| end > args.heap_len)
    {
        return bad(STATUS_BAD_RANGE);
    }
    // SAFETY: `offset..offset+len` lies in the heap (checked), which the
    // child's copy-on-write image maps for its whole life; nothing in the
    // child writes it.
    let view = unsafe { std::slice::from_raw_parts(args.heap.add(offset), len) };
    match req.op {
        OP_COPY if len <= SHARED_BUFFER => {
            // SAFETY: the shared buffer holds SHARED_BUFFER bytes and the
            // parent does not touch it until our reply.
            unsafe { std::ptr::copy_nonoverlapping(view.as_ptr(), args.shared, len) };
            Reply {
                status: STATUS_OK,
                value: 0,
            }
        }
        OP_COPY => bad(STATUS_BAD_RANGE),
        OP_CHECKSUM => {
            let mut sum = Checksum::new();
            sum.update(view);
            Reply {
                status: STATUS_OK,
                value: sum.finish(),
            }
        }
        _ => bad(STATUS_BAD_OP),
    }
}

/// The bytes of a plain-old-data value.
///
/// # Safety
///
/// `T` must have no padding bytes.
unsafe fn as_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: `v` is valid for `size_of::<T>()` bytes, all initialised (no
    // padding, by the caller's promise).
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

/// The bytes of a plain-old-data value, writable.
///
/// # Safety
///
/// Every bit pattern must be a valid `T`.
unsafe fn as_bytes_mut<T>(v: &mut T) -> &mut [u8] {
    // SAFETY: `v` is valid and exclusively borrowed for `size_of::<T>()`
    // bytes; any bytes written are a valid `T` (the caller's promise).
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast(), size_of::<T>()) }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on end of file. Raw
/// `read(2)` only: used in the forked child.
fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most `buf.len() - done` bytes into `buf` from
        // `done`, which is in bounds.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(done).cast(), buf.len() - done) };
        if n == 0 {
            return Ok(false);
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(true)
}

/// Writes all of `buf`. Raw `write(2)` only: used in the forked child.
fn write_all(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reads at most `buf.len() - done` bytes of `buf` from `done`.
        let n = unsafe { libc::write(fd, buf.as_ptr().add(done).cast(), buf.len() - done) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
