//! The userfaultfd write-protect baseline.
//!
//! The heap is a plain `MAP_PRIVATE|MAP_ANONYMOUS` mapping, registered once
//! with a userfaultfd in write-protect mode (`UFFDIO_REGISTER_MODE_WP`).
//! [`UffdHeap::take`] write-protects the whole heap (`UFFDIO_WRITEPROTECT`
//! with `MODE_WP`): one ioctl, but the kernel still visits every page-table
//! entry of the region. The first write to a page afterwards blocks the
//! writer and sends a fault message to a handler thread, which copies the
//! page into every live snapshot that has no copy of it yet, then removes the
//! protection from that page (`UFFDIO_WRITEPROTECT` with mode 0, which also
//! wakes the writer).
//!
//! # Why a reader never sees a later write
//!
//! Invariant: *while a page is writable, every live snapshot holds its own
//! copy of it.* `take` protects every page and adds an empty snapshot under
//! the state lock; the handler copies a page into every live snapshot
//! lacking it and unprotects it under the same lock. So a snapshot lacking a
//! copy of a page has seen no write to it since its `take`, and the page is
//! still protected: a reader holding the lock may read it from the live heap.
//! A fault message read before a `take` and handled after it is still right:
//! the page was protected throughout, so the copy the handler makes for the
//! new snapshot is the page as it was at that `take`.
//!
//! # Kernel support
//!
//! Write-protection of anonymous private memory needs Linux 5.7+ and the
//! `UFFD_FEATURE_PAGEFAULT_FLAG_WP` feature. [`UffdHeap::new`] distinguishes
//! a kernel that lacks the feature ([`UffdError::Unsupported`]) from a kernel
//! that refuses us (`EPERM` etc.: [`UffdError::Refused`]). The `userfaultfd`
//! syscall is first tried without `UFFD_USER_MODE_ONLY` (so that the kernel's
//! own accesses to the heap, e.g. `read(2)` into it, are handled too), and
//! with it when refused with `EPERM` (`vm.unprivileged_userfaultfd = 0`
//! without `CAP_SYS_PTRACE`).
//!
//! If the handler thread fails (an ioctl error), writers blocked on a fault
//! would wait forever; it prints the error and aborts the process instead.

use crate::sys::{check_heap_len, Mapping};
use crate::{Snapshotter, PAGE_SIZE};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::string::String;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::{eprintln, format};

/// The userfaultfd ABI (`linux/userfaultfd.h`), which the `libc` crate does
/// not provide. Layouts and numbers as in the kernel's UAPI header.
mod abi {
    pub const UFFD_API: u64 = 0xAA;
    pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
    /// `_UFFDIO_WRITEPROTECT` (bit 6) among `uffdio_register.ioctls`.
    pub const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 0x06;

    /// `_IOWR(0xAA, nr, size)`.
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
    }
    pub const UFFDIO_API: u64 = iowr(0x3F, size_of::<UffdioApi>());
    pub const UFFDIO_REGISTER: u64 = iowr(0x00, size_of::<UffdioRegister>());
    pub const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, size_of::<UffdioWriteprotect>());

    #[repr(C)]
    #[derive(Default)]
    pub struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct UffdioWriteprotect {
        pub range: UffdioRange,
        pub mode: u64,
    }

    /// `struct uffd_msg`, with the page-fault member of its union.
    #[repr(C)]
    #[derive(Default)]
    pub struct UffdMsg {
        pub event: u8,
        pub reserved1: u8,
        pub reserved2: u16,
        pub reserved3: u32,
        pub flags: u64,
        pub address: u64,
        pub feat: u64,
    }

    const _: () = assert!(size_of::<UffdMsg>() == 32);
    const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
    const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
    const _: () = assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);
}

#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("heap size {0} is not a non-zero multiple of 4096")]
    HeapSize(usize),
    #[error("mapping the heap ({len} bytes)")]
    Map {
        len: usize,
        #[source]
        source: io::Error,
    },
    /// The kernel lacks what the baseline needs (no userfaultfd syscall, or
    /// no write-protection of anonymous memory).
    #[error("this kernel does not support userfaultfd write-protection: {0}")]
    Unsupported(String),
    /// The kernel has the feature but refused us (permissions, limits).
    #[error("the kernel refused {what}")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} on the userfaultfd")]
    Ioctl {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting the fault handler thread")]
    Thread(#[source] io::Error),
    #[error("range {offset}+{len} is outside the heap of {heap_len} bytes")]
    OutOfRange {
        offset: usize,
        len: usize,
        heap_len: usize,
    },
}

/// One copied page, shared by every snapshot it was copied for.
type Page = Arc<[u8; PAGE_SIZE]>;

/// The live snapshots: id to (page index to copy).
#[derive(Default)]
struct State {
    next_id: u64,
    live: BTreeMap<u64, HashMap<usize, Page>>,
}

/// Counters of the handler's work.
#[derive(Debug, Default)]
pub struct UffdStats {
    /// Write-protect faults handled.
    pub faults: AtomicU64,
    /// Pages copied (one copy may serve several snapshots).
    pub pages_copied: AtomicU64,
}

/// A snapshot of a [`UffdHeap`].
pub struct UffdSnapshot {
    id: u64,
    state: Arc<Mutex<State>>,
    released: bool,
}

impl std::fmt::Debug for UffdSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdSnapshot")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for UffdSnapshot {
    fn drop(&mut self) {
        if !self.released {
            lock(&self.state).live.remove(&self.id);
        }
    }
}

/// A `MAP_PRIVATE|MAP_ANONYMOUS` heap snapshotted by userfaultfd
/// write-protection.
pub struct UffdHeap {
    heap: Mapping,
    uffd: Arc<OwnedFd>,
    state: Arc<Mutex<State>>,
    stats: Arc<UffdStats>,
    /// Written to stop the handler.
    stop: OwnedFd,
    handler: Option<JoinHandle<()>>,
    /// Whether `UFFD_USER_MODE_ONLY` was needed.
    user_mode_only: bool,
}

impl std::fmt::Debug for UffdHeap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdHeap")
            .field("heap", &self.heap)
            .field("stats", &self.stats)
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ioctl(fd, request, arg)`.
fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request this module passes is a userfaultfd ioctl whose
    // argument is the `repr(C)` struct `T` of the kernel's ABI (module
    // `abi`), valid and exclusively borrowed for the call.
    if unsafe { libc::ioctl(fd, request as _, arg as *mut T) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `UFFDIO_WRITEPROTECT` of `start..start+len`: protect if `protect`, else
/// unprotect and wake the writers waiting on the range.
fn write_protect(fd: RawFd, start: usize, len: usize, protect: bool) -> io::Result<()> {
    let mut wp = abi::UffdioWriteprotect {
        range: abi::UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: if protect {
            abi::UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    ioctl(fd, abi::UFFDIO_WRITEPROTECT, &mut wp)
}

/// Opens a userfaultfd; `Ok((fd, user_mode_only))`.
fn open_uffd() -> Result<(OwnedFd, bool), UffdError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    for user_only in [false, true] {
        let f = flags
            | if user_only {
                abi::UFFD_USER_MODE_ONLY
            } else {
                0
            };
        // SAFETY: the userfaultfd syscall takes only flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, f) };
        if fd >= 0 {
            // SAFETY: the syscall just returned this descriptor to us alone.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, user_only));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS) => {
                return Err(UffdError::Unsupported(
                    "the userfaultfd syscall is missing (ENOSYS)".into(),
                ))
            }
            Some(libc::EPERM) if !user_only => continue,
            _ => {
                return Err(UffdError::Refused {
                    what: "userfaultfd()",
                    source: err,
                })
            }
        }
    }
    unreachable!("the loop returns on its second pass")
}

impl UffdHeap {
    /// Maps and populates a zeroed heap of `len` bytes, registers it for
    /// write-protection and starts the fault handler thread.
    pub fn new(len: usize) -> Result<UffdHeap, UffdError> {
        if !check_heap_len(len) {
            return Err(UffdError::HeapSize(len));
        }
        // Probe the features with a first descriptor (UFFDIO_API may be
        // called once per descriptor), then enable them on a second one.
        let (probe, _) = open_uffd()?;
        let mut api = abi::UffdioApi {
            api: abi::UFFD_API,
            ..Default::default()
        };
        ioctl(probe.as_raw_fd(), abi::UFFDIO_API, &mut api).map_err(|source| UffdError::Ioctl {
            what: "UFFDIO_API (probe)",
            source,
        })?;
        drop(probe);
        if api.features & abi::UFFD_FEATURE_PAGEFAULT_FLAG_WP == 0 {
            return Err(UffdError::Unsupported(format!(
                "UFFD_FEATURE_PAGEFAULT_FLAG_WP missing (features {:#x}; needs Linux 5.7+)",
                api.features
            )));
        }
        let features =
            abi::UFFD_FEATURE_PAGEFAULT_FLAG_WP | (api.features & abi::UFFD_FEATURE_WP_UNPOPULATED);
        let (uffd, user_mode_only) = open_uffd()?;
        let mut api = abi::UffdioApi {
            api: abi::UFFD_API,
            features,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), abi::UFFDIO_API, &mut api).map_err(|source| UffdError::Ioctl {
            what: "UFFDIO_API",
            source,
        })?;

        let heap =
            Mapping::anonymous(len, false).map_err(|source| UffdError::Map { len, source })?;
        let mut reg = abi::UffdioRegister {
            range: abi::UffdioRange {
                start: heap.ptr() as u64,
                len: len as u64,
            },
            mode: abi::UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), abi::UFFDIO_REGISTER, &mut reg).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::EINVAL) => UffdError::Unsupported(format!(
                    "UFFDIO_REGISTER_MODE_WP on anonymous memory refused: {source}"
                )),
                _ => UffdError::Ioctl {
                    what: "UFFDIO_REGISTER",
                    source,
                },
            }
        })?;
        if reg.ioctls & abi::UFFDIO_WRITEPROTECT_BIT == 0 {
            return Err(UffdError::Unsupported(format!(
                "UFFDIO_WRITEPROTECT not offered for the heap (ioctls {:#x})",
                reg.ioctls
            )));
        }

        // SAFETY: eventfd takes an initial value and flags.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(UffdError::Thread(io::Error::last_os_error()));
        }
        // SAFETY: eventfd just returned this descriptor to us alone.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let uffd = Arc::new(uffd);
        let state = Arc::new(Mutex::new(State::default()));
        let stats = Arc::new(UffdStats::default());
        let handler = Handler {
            uffd: Arc::clone(&uffd),
            stop: stop.as_raw_fd(),
            heap: heap.ptr() as usize,
            heap_len: len,
            state: Arc::clone(&state),
            stats: Arc::clone(&stats),
        };
        let handler = std::thread::Builder::new()
            .name("uffd-wp".into())
            .spawn(move || handler.run())
            .map_err(UffdError::Thread)?;
        Ok(UffdHeap {
            heap,
            uffd,
            state,
            stats,
            stop,
            handler: Some(handler),
            user_mode_only,
        })
    }

    /// The handler's counters.
    pub fn stats(&self) -> &UffdStats {
        &self.stats
    }

    /// Whether the descriptor had to be opened with `UFFD_USER_MODE_ONLY`
    /// (then a kernel access to a protected page, e.g. `read(2)` into the
    /// heap, fails with `EFAULT` instead of being handled).
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), UffdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.heap.len() => Ok(()),
            _ => Err(UffdError::OutOfRange {
                offset,
                len,
                heap_len: self.heap.len(),
            }),
        }
    }
}

impl Drop for UffdHeap {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        // The uffd closes after the handler stopped (it holds an `Arc`), then
        // the heap is unmapped (field order).
    }
}

// SAFETY: `heap()` is the start of the owned, page-aligned mapping of
// `heap_len()` bytes, which lives as long as `self`.
unsafe impl Snapshotter for UffdHeap {
    type Snapshot = UffdSnapshot;
    type Error = UffdError;

    fn heap(&self) -> *mut u8 {
        self.heap.ptr()
    }

    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn take(&self) -> Result<UffdSnapshot, UffdError> {
        let mut state = lock(&self.state);
        write_protect(
            self.uffd.as_raw_fd(),
            self.heap.ptr() as usize,
            self.heap.len(),
            true,
        )
        .map_err(|source| UffdError::Ioctl {
            what: "UFFDIO_WRITEPROTECT of the heap",
            source,
        })?;
        let id = state.next_id;
        state.next_id += 1;
        state.live.insert(id, HashMap::new());
        Ok(UffdSnapshot {
            id,
            state: Arc::clone(&self.state),
            released: false,
        })
    }

    fn read(&self, snap: &UffdSnapshot, offset: usize, buf: &mut [u8]) -> Result<(), UffdError> {
        self.check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done;
            let page = at / PAGE_SIZE;
            let in_page = at % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            let state = lock(&self.state);
            let copies = state
                .live
                .get(&snap.id)
                .expect("a snapshot handle outlives its entry only after release");
            match copies.get(&page) {
                Some(copy) => out.copy_from_slice(&copy[in_page..in_page + n]),
                None => {
                    // SAFETY: in the heap (checked); the snapshot has no copy
                    // of the page, so it is write-protected and unwritten
                    // since the snapshot (module invariant), and it stays so
                    // while we hold the state lock.
                    let src = unsafe { std::slice::from_raw_parts(self.heap.ptr().add(at), n) };
                    out.copy_from_slice(src);
                }
            }
            drop(state);
            done += n;
        }
        Ok(())
    }

    fn release(&self, mut snap: UffdSnapshot) -> Result<(), UffdError> {
        snap.released = true;
        lock(&self.state).live.remove(&snap.id);
        Ok(())
    }

    fn live(&self) -> usize {
        lock(&self.state).live.len()
    }
}

/// The fault handler thread's state.
struct Handler {
    uffd: Arc<OwnedFd>,
    stop: RawFd,
    heap: usize,
    heap_len: usize,
    state: Arc<Mutex<State>>,
    stats: Arc<UffdStats>,
}

impl Handler {
    fn run(self) {
        if let Err(e) = self.serve() {
            eprintln!("dbos-snapshot: userfaultfd handler failed, aborting (blocked writers would hang): {e}");
            std::process::abort();
        }
    }

    fn serve(&self) -> io::Result<()> {
        let fd = self.uffd.as_raw_fd();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[1].revents != 0 {
                return Ok(());
            }
            let mut msg = abi::UffdMsg::default();
            // SAFETY: reads at most one `uffd_msg` (32 bytes) into `msg`,
            // a plain-old-data struct valid for any bytes.
            let n = unsafe {
                libc::read(
                    fd,
                    (&mut msg as *mut abi::UffdMsg).cast(),
                    size_of::<abi::UffdMsg>(),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(err);
            }
            if msg.event != abi::UFFD_EVENT_PAGEFAULT
                || msg.flags & abi::UFFD_PAGEFAULT_FLAG_WP == 0
            {
                continue;
            }
            let addr = msg.address as usize & !(PAGE_SIZE - 1);
            if addr < self.heap || addr >= self.heap + self.heap_len {
                continue;
            }
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
            self.copy_and_unprotect(addr)?;
        }
    }

    /// Copies the page at `addr` into every live snapshot lacking it, then
    /// unprotects it (waking its writers), all under the state lock.
    fn copy_and_unprotect(&self, addr: usize) -> io::Result<()> {
        let page = (addr - self.heap) / PAGE_SIZE;
        let mut state = lock(&self.state);
        let mut copy: Option<Page> = None;
        for copies in state.live.values_mut() {
            if copies.contains_key(&page) {
                continue;
            }
            let copy = copy.get_or_insert_with(|| {
                let mut bytes = [0u8; PAGE_SIZE];
                // SAFETY: `addr` is a page of the heap (checked by the
                // caller); it is write-protected, so no writer changes it
                // while we copy.
                unsafe {
                    std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), PAGE_SIZE)
                };
                Arc::new(bytes)
            });
            copies.insert(page, Arc::clone(copy));
        }
        if copy.is_some() {
            self.stats.pages_copied.fetch_add(1, Ordering::Relaxed);
        }
        write_protect(self.uffd.as_raw_fd(), addr, PAGE_SIZE, false)
    }
}
