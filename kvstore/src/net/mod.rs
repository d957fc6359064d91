//! The process server's I/O: the sans-I/O sessions
//! ([`crate::server::Session`]) served over TCP sockets by `threads` event
//! loops (mio: epoll), each owning the connections it accepted.
//!
//! One round of a loop: read what every ready connection sent, run the
//! complete requests of each (pipelined ones too), send the replies of
//! those that wrote nothing, and hold the others' until their writes are
//! durable. The loop never blocks on the log: it posts the highest ticket
//! its connections wait for to the flusher thread and goes on serving;
//! the flusher waits for the highest ticket posted by any loop (one log
//! write for all of them) and wakes the loops, which release the replies
//! whose tickets are durable. So no reply announces a write before it is
//! durable, and one log write carries many clients' commands.
//!
//! Connections are spread over the loops: the loop that accepts a
//! connection hands it to the loop serving the fewest (`Balance`), so
//! clients that connect in a burst do not all land on the loop that won
//! the race for the listener (every loop is woken by a connection; the
//! first to accept would take the whole backlog).
//!
//! A loop does not block on the disk for a lookup: a GET (any command
//! that reads by point lookups) that needs a page that is not resident
//! stops its connection, the loop reads the page with an io_uring of its
//! own (`net::reads`) and serves its other connections meanwhile, and runs the
//! connection again once the page is in. So one loop keeps as many reads
//! in flight as it has clients waiting for pages. Other commands that need
//! the disk (writes, scans) still wait in the loop, after the loop's reads
//! in flight have completed.
//!
//! Limits: `maxclients` (a client over it gets Redis's error and is
//! closed), `client-query-buffer-limit` (a client that sends more than it
//! without completing a request is closed), and back-pressure on output:
//! a client that does not read its replies stops being served once
//! [`OUTPUT_HIGH_WATER`] of them wait for it (its requests stay in the
//! socket), so it costs bounded memory and nothing to other clients.

use crate::server::engine::{KvEngine, Ticket, UnixMs};
use crate::server::session::{Blocked, Session, Shared, OUTPUT_HIGH_WATER};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use reads::{Reads, Started};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::vec::Vec;

mod reads;

const LISTENER: Token = Token(usize::MAX);
const WAKE: Token = Token(usize::MAX - 1);
const READS: Token = Token(usize::MAX - 2);

/// Times a connection's request may stop for a page read in, run again
/// and stop again without finishing (its pages evicted again meanwhile:
/// an MGET of more leaves than the pool holds) before it runs the waiting
/// way.
const MAX_READ_RETRIES: u32 = 8;
const READ_CHUNK: usize = 16 * 1024;

/// Connections the kernel completes and queues before the server accepts
/// them (Redis's `tcp-backlog` is 511). The standard library listens with
/// 128: a burst of connections (a client pool opening) overflows that
/// before an event loop wakes, and each connection over it waits a second
/// for its SYN to be sent again.
const BACKLOG: i32 = 1024;

/// Listens again with a backlog of `n` (Linux updates a listening
/// socket's backlog on a second `listen`; the kernel caps it at
/// `net.core.somaxconn`).
fn set_backlog(listener: &std::net::TcpListener, n: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `listen` on a descriptor the listener owns and keeps open
    // for the call; no memory is passed.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The wall clock as the server's commands take it.
pub fn wall_clock() -> UnixMs {
    UnixMs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

struct Conn {
    stream: TcpStream,
    session: Session,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already sent.
    sent: usize,
    /// The socket may hold more input than was read (reading stopped for
    /// back-pressure).
    unread: bool,
    /// The socket is registered for writability too.
    want_write: bool,
    /// Close once the output is sent.
    closing: bool,
    /// Requests were left unanswered because the output passed the high
    /// water mark (they are in `input`).
    stalled: bool,
    /// This round's event said the socket is readable and its peer has
    /// not closed: a read that returns less than asked emptied the socket,
    /// and anything arriving later raises a new event (epoll reports the
    /// socket's state when the event is taken, end of input included, and
    /// queues it again on every arrival after that), so reading may stop
    /// there instead of paying a read that only says "would block". False:
    /// read until the socket says it would block.
    short_read_drains: bool,
    /// The socket was read until it was empty and no event has come
    /// since: nothing to read (epoll raises an event for whatever arrives
    /// later).
    drained: bool,
    /// The ticket the output waits for.
    ticket: Option<Ticket>,
    /// The request at the start of `input` waits for a page being read
    /// (`reads`): the connection is not served until it is in.
    parked: bool,
    /// `input` holds requests to run before more is read (the page the
    /// connection waited for is in).
    rerun: bool,
    /// Times in a row the request at the start of `input` stopped for a
    /// page (see [`MAX_READ_RETRIES`]).
    retries: u32,
}

/// Waits for durability on behalf of the event loops, so that no loop
/// blocks on the log: a loop posts the highest ticket its connections
/// wait for and goes on serving; this thread waits for the highest ticket
/// posted (one log write for all of them: group commit across loops and
/// rounds) and wakes the loops whose tickets that write made durable,
/// which then send the replies waiting for them.
struct Flusher {
    requested: Mutex<u64>,
    posted: Condvar,
    /// The log failed: no waiting reply may be sent.
    failed: AtomicBool,
    /// Per loop, the lowest ticket its waiting replies need, until it is
    /// woken for it (0: none). A loop with nothing waiting is not woken by
    /// a log write.
    awaited: Vec<AtomicU64>,
}

/// The connections each event loop serves, the connections handed to it
/// by another loop's accept, and its waker (also the flusher's).
struct Balance {
    served: Vec<AtomicUsize>,
    inbox: Vec<Mutex<Vec<TcpStream>>>,
    wakers: Vec<Waker>,
}

impl Balance {
    /// The loop that is to serve a new connection accepted by loop `me`:
    /// the one serving the fewest (`me` among equals, so that one loop
    /// needs no hand-off), counted as serving it from now on.
    fn choose(&self, me: usize) -> usize {
        let load = |i: usize| self.served[i].load(Ordering::Relaxed);
        let mut best = me;
        for i in 0..self.served.len() {
            if load(i) < load(best) {
                best = i;
            }
        }
        self.served[best].fetch_add(1, Ordering::Relaxed);
        best
    }

    /// Hands `stream` to loop `to` and wakes it.
    fn hand_off(&self, to: usize, stream: TcpStream) {
        self.inbox[to]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream);
        if let Err(e) = self.wakers[to].wake() {
            log::warn!("waking event loop {to}: {e}");
        }
    }

    /// The connections handed to loop `me`.
    fn take(&self, me: usize) -> Vec<TcpStream> {
        std::mem::take(&mut *self.inbox[me].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Flusher {
    /// Asks for a log write that makes ticket `t` durable.
    fn post(&self, t: Ticket) {
        let mut r = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        if t.0 > *r {
            *r = t.0;
            self.posted.notify_one();
        }
    }

    /// Loop `me`'s lowest waiting ticket is `t`: it is woken once a log
    /// write makes `t` durable. The caller reads the durable ticket after
    /// this, and the flusher reads `awaited` after making a ticket
    /// durable (both behind a SeqCst fence), so at least one of them sees
    /// the other's write: a caller that finds `t` durable serves its
    /// clients without waiting for a wake-up.
    fn await_from(&self, me: usize, t: Ticket) {
        self.awaited[me].store(t.0, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Makes posted tickets durable until shutdown (or a log failure),
    /// waking the loops of `loops` that may then send replies.
    fn run<E: KvEngine>(&self, shared: &Shared<E>, loops: &Balance) {
        let mut done = 0;
        while !shared.shutting_down() && !self.failed.load(Ordering::Acquire) {
            let t = {
                let mut r = self.requested.lock().unwrap_or_else(|e| e.into_inner());
                while *r <= done && !shared.shutting_down() {
                    r = self
                        .posted
                        .wait_timeout(r, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                *r
            };
            if t <= done {
                continue;
            }
            shared.stats.durable_waits.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = shared.engine.wait(Ticket(t)) {
                // Not durable: no client may be told otherwise.
                log::error!("the log failed; no waiting reply will be sent: {e}");
                self.failed.store(true, Ordering::Release);
            }
            done = t;
            std::sync::atomic::fence(Ordering::SeqCst);
            let failed = self.failed.load(Ordering::Acquire);
            for (a, w) in self.awaited.iter().zip(&loops.wakers) {
                // Woken: a loop whose lowest awaited ticket is durable
                // (cleared; if the loop changed it meanwhile, the loop
                // reads the durable ticket after its change), or every
                // loop if the log failed.
                let v = a.load(Ordering::SeqCst);
                let due = v != 0
                    && v <= done
                    && a.compare_exchange(v, 0, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if due || failed {
                    let _ = w.wake();
                }
            }
        }
    }
}

/// How [`serve`] serves.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Event loops.
    pub threads: usize,
    /// After a round that had events, a loop polls without sleeping for
    /// up to this long before it sleeps in `epoll_wait` (zero: it sleeps
    /// at once). The next requests of busy clients then find it awake,
    /// without a wake-up's cost; an idle loop sleeps as before, so the
    /// polling costs CPU only while clients keep it busy. It pays where
    /// requests need only the CPU (the memory engine); where they wait for
    /// the disk, the polling loop takes a core from the I/O's completions
    /// (measured slower on the btree engine).
    pub busy_poll: Duration,
    /// Lookups read their pages without blocking the loop (`reads`); if
    /// false (or io_uring is not available), a lookup waits for its page
    /// in the loop as every other command does.
    pub async_reads: bool,
}

/// Serves `listener` until a `SHUTDOWN` (see [`Options`]).
pub fn serve<E: KvEngine + Send + 'static>(
    shared: Arc<Shared<E>>,
    listener: std::net::TcpListener,
    options: Options,
) -> io::Result<()> {
    let Options {
        threads,
        busy_poll,
        async_reads,
    } = options;
    listener.set_nonblocking(true)?;
    set_backlog(&listener, BACKLOG)?;
    let n = threads.max(1);
    let mut polls = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        wakers.push(Waker::new(poll.registry(), WAKE)?);
        polls.push(poll);
    }
    let flusher = Arc::new(Flusher {
        requested: Mutex::new(0),
        posted: Condvar::new(),
        failed: AtomicBool::new(false),
        awaited: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let balance = Arc::new(Balance {
        served: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        inbox: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
        wakers,
    });
    let mut handles = Vec::new();
    for (i, poll) in polls.into_iter().enumerate() {
        let l = TcpListener::from_std(listener.try_clone()?);
        let (shared, flusher, balance) = (shared.clone(), flusher.clone(), balance.clone());
        handles.push(
            std::thread::Builder::new()
                .name(std::format!("dbos-kv-loop{i}"))
                .spawn(move || {
                    let me = Loop {
                        index: i,
                        flusher: &flusher,
                        balance: &balance,
                    };
                    event_loop(&shared, &me, poll, l, busy_poll, async_reads)
                })?,
        );
    }
    let flushing = {
        let (shared, flusher, balance) = (shared.clone(), flusher.clone(), balance.clone());
        std::thread::Builder::new()
            .name("dbos-kv-flush".into())
            .spawn(move || flusher.run(&shared, &balance))?
    };
    let mut result = Ok(());
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("an event loop panicked")),
        }
    }
    if flushing.join().is_err() {
        result = Err(io::Error::other("the flusher panicked"));
    }
    result
}

/// What an event loop shares with the others.
struct Loop<'a> {
    /// Its place in [`Balance`].
    index: usize,
    flusher: &'a Flusher,
    balance: &'a Balance,
}

fn event_loop<E: KvEngine>(
    shared: &Shared<E>,
    me: &Loop,
    mut poll: Poll,
    mut listener: TcpListener,
    busy_poll: Duration,
    async_reads: bool,
) -> io::Result<()> {
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut ready: Vec<usize> = Vec::new();
    // Connections to serve in the next round without an event: their
    // output drained while requests were held back, or their replies
    // became durable.
    let mut carry: Vec<usize> = Vec::new();
    // Connections whose replies wait for their ticket to be durable.
    let mut waiting: Vec<usize> = Vec::new();
    let mut chunk = std::vec![0u8; READ_CHUNK];
    // Lookups read their pages without blocking the loop where io_uring
    // is there; else they wait as every other command does. An engine
    // whose reads never wait needs no ring.
    let mut reads = if async_reads && shared.engine.reads_storage() {
        Reads::new(poll.registry(), READS)
            .inspect_err(|e| {
                log::info!(
                    "event loop {}: no io_uring ({e}); lookups wait for the disk",
                    me.index
                )
            })
            .ok()
    } else {
        None
    };
    // The last round had events: poll before sleeping (`busy_poll`).
    let mut busy = false;
    // Replies posted to the flusher may already be durable: release them
    // in the next round without sleeping.
    let mut recheck = false;
    while !shared.shutting_down() {
        let timeout = if carry.is_empty() && !std::mem::take(&mut recheck) {
            100
        } else {
            0
        };
        if let Some(r) = reads.as_mut() {
            r.submit()?;
        }
        // Events found by polling busily; else the loop polls (and, with
        // nothing to carry, sleeps) as usual.
        let mut found = false;
        if busy && timeout > 0 && !busy_poll.is_zero() {
            poll_busily(&mut poll, &mut events, busy_poll)?;
            found = !events.is_empty();
        }
        if !found {
            match poll.poll(&mut events, Some(Duration::from_millis(timeout))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        busy = !events.is_empty();
        ready.clear();
        ready.append(&mut carry);
        for ev in events.iter() {
            match ev.token() {
                LISTENER => {
                    for stream in accept(shared, me, &mut listener) {
                        adopt(shared, me, &poll, &mut conns, &mut free, stream);
                    }
                }
                WAKE => {
                    for stream in me.balance.take(me.index) {
                        adopt(shared, me, &poll, &mut conns, &mut free, stream);
                    }
                }
                READS => {}
                t => {
                    if let Some(c) = conns.get_mut(t.0).and_then(|c| c.as_mut()) {
                        c.short_read_drains =
                            ev.is_readable() && !ev.is_read_closed() && !ev.is_error();
                        c.drained = false;
                    }
                    ready.push(t.0)
                }
            }
        }
        // Connections whose pages are in run again.
        if let Some(r) = reads.as_mut() {
            r.reap(&shared.engine);
            resume(&mut conns, &mut r.done, &mut ready);
        }
        // Replies now durable are released (or, if the log failed, their
        // connections closed unanswered).
        let durable = shared.engine.durable();
        let failed = me.flusher.failed.load(Ordering::Acquire);
        waiting.retain(|&i| {
            let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) else {
                return false;
            };
            match c.ticket {
                Some(t) if t > durable && !failed => true,
                Some(_) if failed => {
                    c.output.clear();
                    c.sent = 0;
                    c.closing = true;
                    c.ticket = None;
                    ready.push(i);
                    false
                }
                _ => {
                    c.ticket = None;
                    shared.stats.durable_clients.fetch_add(1, Ordering::Relaxed);
                    ready.push(i);
                    false
                }
            }
        });
        ready.sort_unstable();
        ready.dedup();
        // Read and run.
        let mut post: Option<Ticket> = None;
        for &i in &ready {
            let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            // Only this round's event can say a short read empties the
            // socket.
            let short_read_drains = std::mem::take(&mut c.short_read_drains);
            flush(shared, c);
            if c.closing || c.ticket.is_some() || c.parked {
                continue;
            }
            let mut served = Served {
                conn: i,
                reads: reads.as_mut(),
            };
            if let Err(e) = read_and_run(shared, c, &mut chunk, short_read_drains, &mut served) {
                log::debug!("client {}: {e}", c.session.id());
                c.closing = true;
                c.output.clear();
                c.sent = 0;
            }
            match c.ticket {
                Some(t) if t <= durable => c.ticket = None,
                Some(t) => {
                    post = post.max(Some(t));
                    waiting.push(i);
                }
                None => {}
            }
        }
        // Connections whose reads completed while the loop drained them
        // run in the next round.
        if let Some(r) = reads.as_mut() {
            resume(&mut conns, &mut r.done, &mut carry);
        }
        if let Some(t) = post {
            let reading = reads.as_ref().is_some_and(|r| !r.is_empty());
            if waiting.len() == 1 && ready.len() == 1 && !reading {
                // One client and nothing else to do: waiting here costs
                // less than the hand-off to the flusher and back (not
                // with reads in flight: see `reads`).
                shared.stats.durable_waits.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = shared.engine.wait(t) {
                    log::error!("the log failed; no waiting reply will be sent: {e}");
                    me.flusher.failed.store(true, Ordering::Release);
                } else if let Some(c) = conns.get_mut(waiting[0]).and_then(|c| c.as_mut()) {
                    c.ticket = None;
                    shared.stats.durable_clients.fetch_add(1, Ordering::Relaxed);
                    waiting.clear();
                }
            } else {
                me.flusher.post(t);
            }
        }
        // Woken once the first of the waiting replies may be sent; if that
        // is already so, the next round runs without sleeping.
        let lowest = waiting
            .iter()
            .filter_map(|&i| conns.get(i).and_then(|c| c.as_ref()).and_then(|c| c.ticket))
            .min();
        if let Some(low) = lowest {
            me.flusher.await_from(me.index, low);
            recheck = shared.engine.durable() >= low;
        }
        // Send what may be sent; serve again what back-pressure held.
        for &i in &ready {
            let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            if c.ticket.is_some() {
                continue;
            }
            flush(shared, c);
            let drained = c.sent == c.output.len();
            if c.closing && drained || update_interest(&poll, c, i).is_err() {
                close(shared, me, &poll, &mut conns, &mut free, i);
            } else if drained && (c.stalled || c.unread) {
                carry.push(i);
            }
        }
    }
    if let Some(r) = reads.as_mut() {
        // No page may stay latched by a read nobody finishes.
        r.drain(&shared.engine)?;
    }
    for i in 0..conns.len() {
        if conns[i].is_some() {
            close(shared, me, &poll, &mut conns, &mut free, i);
        }
    }
    Ok(())
}

/// Makes the connections in `done` (their pages are in) run again, adding
/// them to `to`.
fn resume(conns: &mut [Option<Conn>], done: &mut Vec<usize>, to: &mut Vec<usize>) {
    for i in done.drain(..) {
        if let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) {
            c.parked = false;
            c.rerun = true;
            to.push(i);
        }
    }
}

/// The connection being served and its loop's reads.
struct Served<'a> {
    conn: usize,
    reads: Option<&'a mut Reads>,
}

/// Polls without sleeping until an event comes or `budget` has passed
/// (then `events` is empty).
fn poll_busily(poll: &mut Poll, events: &mut Events, budget: Duration) -> io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match poll.poll(events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !events.is_empty() || start.elapsed() > budget {
            return Ok(());
        }
        core::hint::spin_loop();
    }
}

/// Accepts the connections waiting on the listener; returns those this
/// loop is to serve, having handed the others to the loops serving fewer.
fn accept<E: KvEngine>(
    shared: &Shared<E>,
    me: &Loop,
    listener: &mut TcpListener,
) -> Vec<TcpStream> {
    let mut mine = Vec::new();
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return mine,
            Err(e) => {
                // Out of file descriptors and the like: the clients
                // already connected go on.
                log::warn!("accept: {e}");
                return mine;
            }
        };
        let connected = shared.stats.connected_clients.load(Ordering::Relaxed);
        if connected as usize >= shared.config.maxclients.load(Ordering::Relaxed) {
            shared
                .stats
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let _ = stream.write(b"-ERR max number of clients reached\r\n");
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Counted at once, so that a burst over `maxclients` is refused
        // whichever loop serves it.
        shared
            .stats
            .connected_clients
            .fetch_add(1, Ordering::Relaxed);
        match me.balance.choose(me.index) {
            i if i == me.index => mine.push(stream),
            i => me.balance.hand_off(i, stream),
        }
    }
}

/// Starts serving `stream`, accepted for this loop (by it or another).
fn adopt<E: KvEngine>(
    shared: &Shared<E>,
    me: &Loop,
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
    mut stream: TcpStream,
) {
    let i = free.pop().unwrap_or_else(|| {
        conns.push(None);
        conns.len() - 1
    });
    if let Err(e) = poll
        .registry()
        .register(&mut stream, Token(i), Interest::READABLE)
    {
        log::warn!("registering a connection: {e}");
        free.push(i);
        shared
            .stats
            .connected_clients
            .fetch_sub(1, Ordering::Relaxed);
        me.balance.served[me.index].fetch_sub(1, Ordering::Relaxed);
        return;
    }
    conns[i] = Some(Conn {
        stream,
        session: shared.session(),
        input: Vec::new(),
        output: Vec::new(),
        sent: 0,
        unread: false,
        short_read_drains: false,
        drained: false,
        want_write: false,
        closing: false,
        stalled: false,
        ticket: None,
        parked: false,
        rerun: false,
        retries: 0,
    });
}

/// Runs the requests left from before (if any), then reads what the socket
/// holds (until it would block, or, if `short_read_drains`, until a read
/// returns less than asked) and runs the requests read; stops reading
/// while the connection waits for a page.
fn read_and_run<E: KvEngine>(
    shared: &Shared<E>,
    c: &mut Conn,
    chunk: &mut [u8],
    short_read_drains: bool,
    served: &mut Served<'_>,
) -> io::Result<()> {
    let limit = shared
        .config
        .client_query_buffer_limit
        .load(Ordering::Relaxed);
    c.unread = false;
    if c.stalled || std::mem::take(&mut c.rerun) {
        run(shared, c, served)?;
    }
    // Parked: the rest stays in the socket until the page is in.
    while !c.parked && !c.drained {
        if c.output.len() - c.sent >= OUTPUT_HIGH_WATER || c.input.len() > limit {
            // Back-pressure: leave the rest in the socket.
            c.unread = true;
            break;
        }
        match c.stream.read(chunk) {
            Ok(0) => {
                c.closing = true;
                break;
            }
            Ok(n) => {
                shared
                    .stats
                    .net_input_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                c.input.extend_from_slice(&chunk[..n]);
                run(shared, c, served)?;
                if c.closing {
                    break;
                }
                if short_read_drains && n < chunk.len() {
                    c.drained = true;
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.drained = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the complete requests in `c.input`. A lookup that needs a page
/// not resident parks the connection on its read (the loop goes on with
/// others); a request that must wait for the engine otherwise runs after
/// the loop's reads in flight have completed (see [`reads`]).
fn run<E: KvEngine>(shared: &Shared<E>, c: &mut Conn, served: &mut Served<'_>) -> io::Result<()> {
    // The next request must run the waiting way (after a drain).
    let mut wait = false;
    loop {
        if c.sent > 0 && c.sent == c.output.len() {
            c.output.clear();
            c.sent = 0;
        }
        let p = match served.reads.as_deref() {
            Some(r) if !wait => {
                c.session
                    .process_async(shared, &c.input, &mut c.output, r.is_empty())
            }
            _ => c.session.process(shared, &c.input, &mut c.output),
        };
        c.input.drain(..p.consumed);
        c.ticket = c.ticket.max(p.ticket);
        c.closing |= p.close;
        c.stalled = c.output.len() >= OUTPUT_HIGH_WATER;
        if p.consumed > 0 || wait {
            c.retries = 0;
        }
        let Some(reads) = served.reads.as_deref_mut() else {
            return Ok(());
        };
        match p.blocked {
            None => return Ok(()),
            Some(Blocked::Read(page)) if c.retries < MAX_READ_RETRIES => {
                c.retries += 1;
                match reads.start(shared, page, served.conn)? {
                    Started::Waiting => {
                        c.parked = true;
                        return Ok(());
                    }
                    Started::Resident => {}
                    Started::MustWait => {
                        reads.drain(&shared.engine)?;
                        shared.stats.waiting_runs.fetch_add(1, Ordering::Relaxed);
                        wait = true;
                    }
                }
            }
            Some(_) => {
                reads.drain(&shared.engine)?;
                shared.stats.waiting_runs.fetch_add(1, Ordering::Relaxed);
                wait = true;
            }
        }
    }
}

/// Sends what output is ready (not while it waits for durability).
fn flush<E: KvEngine>(shared: &Shared<E>, c: &mut Conn) {
    if c.ticket.is_some() {
        return;
    }
    while c.sent < c.output.len() {
        match c.stream.write(&c.output[c.sent..]) {
            Ok(0) => break,
            Ok(n) => {
                c.sent += n;
                shared
                    .stats
                    .net_output_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.closing = true;
                c.output.clear();
                c.sent = 0;
                return;
            }
        }
    }
    if c.sent == c.output.len() {
        c.output.clear();
        c.sent = 0;
    }
}

/// Registers for writability while output is pending (what was held back
/// is served again from the `carry` list once it is sent).
fn update_interest(poll: &Poll, c: &mut Conn, i: usize) -> io::Result<()> {
    let pending = c.sent < c.output.len();
    if pending != c.want_write {
        let interest = if pending {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut c.stream, Token(i), interest)?;
        c.want_write = pending;
    }
    Ok(())
}

fn close<E: KvEngine>(
    shared: &Shared<E>,
    me: &Loop,
    poll: &Poll,
    conns: &mut [Option<Conn>],
    free: &mut Vec<usize>,
    i: usize,
) {
    if let Some(mut c) = conns[i].take() {
        let _ = poll.registry().deregister(&mut c.stream);
        shared
            .stats
            .connected_clients
            .fetch_sub(1, Ordering::Relaxed);
        me.balance.served[me.index].fetch_sub(1, Ordering::Relaxed);
        free.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(n: usize) -> (Balance, Vec<Poll>) {
        let polls: Vec<Poll> = (0..n).map(|_| Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Waker::new(p.registry(), WAKE).unwrap())
            .collect();
        let b = Balance {
            served: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            inbox: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            wakers,
        };
        (b, polls)
    }

    #[test]
    fn connections_go_to_the_loop_serving_the_fewest() {
        let (b, _polls) = balance(4);
        // Loop 2 accepts a burst of 8: two each, its own first.
        let chosen: Vec<usize> = (0..8).map(|_| b.choose(2)).collect();
        assert_eq!(chosen, [2, 0, 1, 3, 2, 0, 1, 3]);
        let served: Vec<usize> = b.served.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert_eq!(served, [2, 2, 2, 2]);
        // Loop 1's clients leave: the next two go there, whoever accepts.
        b.served[1].store(0, Ordering::Relaxed);
        assert_eq!(b.choose(3), 1);
        assert_eq!(b.choose(0), 1);
        assert_eq!(b.choose(0), 0);
    }

    #[test]
    fn a_handed_off_connection_wakes_its_loop() {
        let (b, mut polls) = balance(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        b.hand_off(1, TcpStream::from_std(stream));
        let mut events = Events::with_capacity(4);
        polls[1]
            .poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(
            events.iter().any(|e| e.token() == WAKE),
            "loop 1 was not woken"
        );
        assert_eq!(b.take(1).len(), 1);
        assert!(b.take(1).is_empty());
        assert!(b.take(0).is_empty());
    }
}
