//! Pages an event loop reads without blocking: an io_uring of the loop's
//! own, and for each read in flight the connections waiting for it.
//!
//! A lookup that needs a page that is not resident stops its connection
//! (`Session::process_async`); the loop asks the engine to prepare the
//! read (`KvEngine::begin_read`: the page latched, a frame reserved),
//! queues it here, and serves its other connections. The reads queued in
//! a round go to the kernel in one `io_uring_enter` before the loop polls;
//! their completions signal an eventfd the loop's epoll watches, and the
//! loop finishes them (`KvEngine::finish_read`: the page checked and
//! unlatched) and runs the waiting connections again.
//!
//! The invariant that keeps this from deadlocking: while a read of the
//! loop is in flight its page is latched, and another thread that needs
//! the page waits for this loop; so the loop never waits for anything of
//! the engine (a latch, a blocking read) while it has reads in flight. It
//! first completes all of them ([`Reads::drain`]).

use crate::server::engine::{BeginRead, DeviceError, KvEngine, PageId, PendingRead};
use crate::server::session::Shared;
use io_uring::{opcode, types, IoUring};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::vec::Vec;

/// Reads in flight at most per loop; a loop that has this many completes
/// them before it starts another.
const MAX_IN_FLIGHT: u32 = 128;

/// What [`Reads::start`] did for a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Started {
    /// The connection waits for a read in flight (its own or another's).
    Waiting,
    /// The page is resident after all: run the connection again.
    Resident,
    /// The read cannot be started without waiting (the page is latched by
    /// another thread, the engine cannot read asynchronously, or this loop
    /// has [`MAX_IN_FLIGHT`] reads): run the connection in a way that
    /// waits, after [`Reads::drain`].
    MustWait,
}

/// The loop's reads (see the module documentation).
pub(super) struct Reads {
    ring: IoUring,
    /// Signalled by the ring on every completion; registered with the
    /// loop's epoll. Held open for the ring's life (dropped after it).
    _eventfd: OwnedFd,
    /// Each read in flight and the connections that wait for it.
    pending: Vec<(PendingRead, Vec<usize>)>,
    /// Reads queued since the last submission.
    queued: u32,
    /// Connections whose reads completed, to be run again.
    pub done: Vec<usize>,
}

impl Reads {
    /// A ring for this loop, its completions signalled to `registry` as
    /// `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Reads> {
        let ring = IoUring::new(MAX_IN_FLIGHT)?;
        // SAFETY: `eventfd` takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        registry.register(
            &mut SourceFd(&eventfd.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        Ok(Reads {
            ring,
            _eventfd: eventfd,
            pending: Vec::new(),
            queued: 0,
            done: Vec::new(),
        })
    }

    /// No read in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Makes connection `conn` wait for page `page`: joins a read in
    /// flight, or starts one.
    pub fn start<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        page: PageId,
        conn: usize,
    ) -> io::Result<Started> {
        let engine = &shared.engine;
        if let Some((_, waiting)) = self.pending.iter_mut().find(|(r, _)| r.id == page) {
            waiting.push(conn);
            return Ok(Started::Waiting);
        }
        if self.pending.len() >= MAX_IN_FLIGHT as usize {
            return Ok(Started::MustWait);
        }
        let read = match engine.begin_read(page) {
            Ok(BeginRead::Started(read)) => read,
            Ok(BeginRead::Resident) => return Ok(Started::Resident),
            Ok(BeginRead::Busy) | Ok(BeginRead::Unsupported) => return Ok(Started::MustWait),
            Err(e) => {
                // The waiting lookup meets the same trouble and reports it.
                log::warn!("starting a read of page {}: {e}", page.0);
                return Ok(Started::MustWait);
            }
        };
        let sqe = opcode::Read::new(types::Fd(read.fd), read.dest(), PendingRead::LEN as u32)
            .offset(read.offset)
            .build()
            .user_data(page.0);
        // SAFETY: the read writes `PendingRead::LEN` bytes at `dest`, the
        // page's memory in the pool, which nothing else writes while the
        // read is pending (its page is latched) and which stays mapped as
        // long as the pool lives; the pool outlives this loop, which
        // completes every read before it returns (`drain`). The ring has
        // room: at most MAX_IN_FLIGHT (its size) reads are queued or in
        // flight.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            // Cannot happen (see above); the page must not stay latched.
            let _ = engine.finish_read(read, Err(DeviceError::QueueFull));
            return Ok(Started::MustWait);
        }
        self.pending.push((read, std::vec![conn]));
        self.queued += 1;
        shared.stats.async_reads.fetch_add(1, Ordering::Relaxed);
        Ok(Started::Waiting)
    }

    /// Hands the reads queued since the last call to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.queued > 0 {
            self.ring.submit()?;
            self.queued = 0;
        }
        Ok(())
    }

    /// Finishes the reads that have completed; their connections go to
    /// [`done`](Self::done).
    pub fn reap<E: KvEngine>(&mut self, engine: &E) {
        if self.pending.is_empty() {
            return;
        }
        // The eventfd is not read: epoll reports it (edge-triggered) on
        // every completion's signal whatever its count, and the
        // completions are taken from the ring's memory.
        let completed: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (page, res) in completed {
            let Some(at) = self.pending.iter().position(|(r, _)| r.id.0 == page) else {
                log::error!("a completion for page {page}, which this loop is not reading");
                continue;
            };
            let (read, waiting) = self.pending.swap_remove(at);
            let result = if res == PendingRead::LEN as i32 {
                Ok(())
            } else {
                log::warn!(
                    "reading page {page}: {}",
                    if res < 0 {
                        std::format!("{}", io::Error::from_raw_os_error(-res))
                    } else {
                        std::format!("{res} of {} bytes", PendingRead::LEN)
                    }
                );
                Err(DeviceError::UnrecoveredRead)
            };
            if let Err(e) = engine.finish_read(read, result) {
                // The page stays unread; the connections run again and
                // their lookups read it the waiting way, reporting what
                // they find.
                log::warn!("page {page}: {e}");
            }
            self.done.extend(waiting);
        }
    }

    /// Completes every read in flight (waiting for them): before the loop
    /// waits for anything else of the engine, and before it returns.
    pub fn drain<E: KvEngine>(&mut self, engine: &E) -> io::Result<()> {
        while !self.pending.is_empty() {
            let want = self.pending.len();
            self.queued = 0;
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Their pages stay latched: say so loudly (the caller
                    // closes the connection it was serving).
                    log::error!(
                        "waiting for {want} page reads in flight failed: {e}; their pages stay \
                         latched"
                    );
                    return Err(e);
                }
            }
            self.reap(engine);
        }
        Ok(())
    }
}
