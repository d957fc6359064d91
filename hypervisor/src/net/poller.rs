//! The network poller thread: serves every registered network queue pair
//! and every socket (listeners and connections) with one mio `Poll`.
//!
//! Each turn it handles control requests (queue pairs added and removed),
//! takes new submission entries from every queue pair (validating each:
//! a bad entry completes at once with its error status), polls the
//! sockets without blocking and carries on the commands they were waiting
//! for, and sends the completion interrupt of every queue pair that got a
//! completion while a CPU waits on it. While turns make progress it
//! spins; after the spin time without progress it parks: it sets each
//! queue pair's SQ event index to the tail it consumed, fences, looks at
//! the tails once more, and blocks in epoll until a socket is ready or the
//! doorbell (a mio `Waker`, rung by `NetDoorbell`) wakes it. An idle
//! poller costs no CPU.
//!
//! Commands (see `dbos_abi::net`): an accept waits in its listener's queue
//! until a client is there; a receive or send is tried at once and, if
//! the socket is not ready, when it becomes so (sockets are registered
//! edge-triggered for both directions, and a wait starts only after the
//! socket said `EWOULDBLOCK`); a close completes the connection's pending
//! commands with `Aborted` before its own completion.

use super::conn::{Conn, PendingIo, Table};
use super::guest::GuestSpan;
use super::queue::NetQueue;
use super::Stats;
use crate::memory::GuestRam;
use dbos_abi::net::{ConnId, NetOp, NetSqe, NetStatus, MAX_NET_IO, MAX_NET_QUEUES};
use dbos_abi::nvme::{ConfigError, QueuePairConfig};
use dbos_nvme::host::InterruptSender;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The waker's token.
pub const WAKER: Token = Token(usize::MAX);
/// Tokens of connections start here (below: listener indexes).
const CONN_BASE: usize = dbos_abi::net::MAX_LISTENERS;

/// A request to the poller thread.
pub enum Control {
    Add(QueuePairConfig, mpsc::Sender<Result<u16, ConfigError>>),
    /// `Err(())`: no such queue pair.
    Remove(u64, mpsc::Sender<Result<(), ()>>),
}

/// What the poller thread shares with the VMM's other threads.
pub struct Shared {
    pub stats: Stats,
    /// Requests; `None` once the poller has stopped.
    pub control: Mutex<Option<Vec<Control>>>,
    pub control_pending: AtomicBool,
    pub stop: AtomicBool,
    /// A doorbell was rung since the poller last armed the doorbells.
    pub rung: AtomicBool,
    pub waker: mio::Waker,
}

/// The poller (runs on its own thread: [`Poller::run`]).
pub struct Poller {
    ram: Arc<GuestRam>,
    poll: Poll,
    events: Events,
    listeners: Vec<mio::net::TcpListener>,
    /// Accepts waiting for a client, per listener: (queue slot, cid).
    accepts: Vec<VecDeque<(usize, u16)>>,
    conns: Table,
    queues: Vec<Option<NetQueue>>,
    shared: Arc<Shared>,
    spin: Duration,
    interrupts: Option<InterruptSender>,
}

/// A command's completion: status, result, conn, aux.
type Done = (NetStatus, u32, u32, u32);

fn interest() -> Interest {
    Interest::READABLE | Interest::WRITABLE
}

impl Poller {
    pub fn new(
        ram: Arc<GuestRam>,
        poll: Poll,
        mut listeners: Vec<mio::net::TcpListener>,
        max_connections: usize,
        shared: Arc<Shared>,
        spin: Duration,
        interrupts: Option<InterruptSender>,
    ) -> std::io::Result<Poller> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(l, Token(i), Interest::READABLE)?;
        }
        Ok(Poller {
            ram,
            poll,
            events: Events::with_capacity(256),
            accepts: vec![VecDeque::new(); listeners.len()],
            listeners,
            conns: Table::new(max_connections),
            queues: Vec::new(),
            shared,
            spin,
            interrupts,
        })
    }

    /// Serves until asked to stop; then closes every connection and
    /// answers the requests left with "stopped".
    pub fn run(mut self) {
        let mut idle_since: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.turn() {
                idle_since = None;
                continue;
            }
            let now = Instant::now();
            if now.duration_since(*idle_since.get_or_insert(now)) < self.spin {
                std::hint::spin_loop();
                continue;
            }
            self.park();
            idle_since = None;
        }
        for slot in self.conns.all() {
            self.close_conn(slot, false);
        }
        let left = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(left); // The requesters see their reply channels closed.
        log::debug!("net: poller stopped");
    }

    /// One pass; whether anything happened.
    fn turn(&mut self) -> bool {
        let mut work = false;
        if self.shared.control_pending.load(Ordering::Acquire) {
            self.handle_control();
            work = true;
        }
        for qi in 0..self.queues.len() {
            work |= self.fetch(qi);
        }
        work |= self.poll_sockets(Some(Duration::ZERO));
        self.notify_waiters();
        work
    }

    /// Arms the doorbells, re-checks, and blocks until a doorbell, a
    /// socket or a request wakes the poller (unless something arrived
    /// meanwhile).
    fn park(&mut self) {
        self.shared.rung.store(false, Ordering::SeqCst);
        for q in self.queues.iter_mut().flatten() {
            q.arm();
        }
        fence(Ordering::SeqCst);
        let busy = |p: &Poller| {
            p.shared.control_pending.load(Ordering::SeqCst)
                || p.shared.stop.load(Ordering::SeqCst)
                || p.queues.iter().flatten().any(NetQueue::moved)
        };
        while !busy(self) {
            self.shared.stats.parks.fetch_add(1, Ordering::Relaxed);
            let sockets = self.poll_sockets(None);
            // A wake-up is a doorbell, a socket or a request; the waker's
            // event left over from a request or doorbell already served
            // is not one (the poller goes back to sleep).
            let requested = self.shared.control_pending.load(Ordering::SeqCst)
                || self.queues.iter().flatten().any(NetQueue::moved);
            if sockets || self.shared.rung.load(Ordering::SeqCst) || requested {
                self.shared.stats.wakeups.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                break; // Stopping is not a wake-up.
            }
            self.shared.stats.parks.fetch_sub(1, Ordering::Relaxed);
        }
        for q in self.queues.iter().flatten() {
            q.disarm();
        }
        self.notify_waiters();
    }

    /// Polls the sockets (`None`: blocks) and serves what is ready;
    /// whether a socket was ready.
    fn poll_sockets(&mut self, timeout: Option<Duration>) -> bool {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                log::error!("net: epoll failed: {e}");
                // Do not spin on a failing epoll.
                std::thread::sleep(Duration::from_millis(1));
            }
            return false;
        }
        let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        let mut any = false;
        for token in tokens {
            match token {
                WAKER => {}
                Token(i) if i < CONN_BASE => {
                    any = true;
                    self.accept_ready(i);
                }
                Token(t) => {
                    any = true;
                    self.try_recv(t - CONN_BASE);
                    self.try_send(t - CONN_BASE);
                }
            }
        }
        any
    }

    fn handle_control(&mut self) {
        self.shared.control_pending.store(false, Ordering::SeqCst);
        let msgs = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for msg in msgs {
            match msg {
                Control::Add(config, reply) => {
                    let _ = reply.send(self.add_queue(&config));
                }
                Control::Remove(id, reply) => {
                    let _ = reply.send(self.remove_queue(id));
                }
            }
        }
    }

    fn add_queue(&mut self, config: &QueuePairConfig) -> Result<u16, ConfigError> {
        let q = NetQueue::new(&self.ram, config, self.interrupts.is_some())?;
        let slot = match self.queues.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.queues.len() < MAX_NET_QUEUES => {
                self.queues.push(None);
                self.queues.len() - 1
            }
            None => return Err(ConfigError::TooManyQueues(MAX_NET_QUEUES)),
        };
        fence(Ordering::SeqCst);
        log::debug!("net: serving queue pair {slot} of depth {}", q.depth);
        self.queues[slot] = Some(q);
        Ok(slot as u16)
    }

    /// Stops serving a queue pair: its accepts are dropped, its
    /// connections closed (their pending commands dropped without
    /// completions), and its memory is not touched again.
    fn remove_queue(&mut self, id: u64) -> Result<(), ()> {
        let qi = usize::try_from(id).map_err(|_| ())?;
        if self.queues.get(qi).is_none_or(Option::is_none) {
            return Err(());
        }
        for waiting in &mut self.accepts {
            waiting.retain(|&(q, _)| q != qi);
        }
        for slot in self.conns.owned_by(qi) {
            self.close_conn(slot, false);
        }
        self.queues[qi] = None;
        log::debug!("net: queue pair {qi} given back");
        Ok(())
    }

    /// Takes and starts the new entries of queue pair `qi`.
    fn fetch(&mut self, qi: usize) -> bool {
        let mut n = 0;
        while let Some(sqe) = self.queues[qi].as_mut().and_then(NetQueue::take) {
            n += 1;
            self.start(qi, &sqe);
        }
        self.shared.stats.commands.fetch_add(n, Ordering::Relaxed);
        n > 0
    }

    /// Validates and starts one command.
    fn start(&mut self, qi: usize, sqe: &NetSqe) {
        let cid = sqe.cid;
        match self.check(qi, sqe) {
            Err(status) => {
                self.shared.stats.invalid.fetch_add(1, Ordering::Relaxed);
                self.post(qi, cid, (status, 0, sqe.conn, 0));
            }
            Ok(op) => {
                if let Some(q) = self.queues[qi].as_mut() {
                    q.set_cid_busy(cid, true);
                }
                match op {
                    Started::Accept(l) => {
                        self.accepts[l].push_back((qi, cid));
                        self.accept_ready(l);
                    }
                    Started::Recv(slot, span) => {
                        if let Some(c) = self.conns.get_mut(slot) {
                            c.recv = Some(PendingIo { cid, span, done: 0 });
                        }
                        self.try_recv(slot);
                    }
                    Started::Send(slot, span) => {
                        if let Some(c) = self.conns.get_mut(slot) {
                            c.send = Some(PendingIo { cid, span, done: 0 });
                        }
                        self.try_send(slot);
                    }
                    Started::Close(slot) => {
                        self.close_conn(slot, true);
                        self.finish(qi, cid, (NetStatus::Success, 0, sqe.conn, 0));
                    }
                }
            }
        }
    }

    /// The checks of `dbos_abi::net`, in order: command id in flight,
    /// opcode and reserved fields, the listener or connection, the buffer,
    /// a command of the kind already pending.
    fn check(&self, qi: usize, sqe: &NetSqe) -> Result<Started, NetStatus> {
        let q = self.queues[qi].as_ref().ok_or(NetStatus::InvalidCommand)?;
        if q.cid_busy(sqe.cid) {
            return Err(NetStatus::CidConflict);
        }
        let op = NetOp::from_raw(sqe.opcode).ok_or(NetStatus::InvalidCommand)?;
        if sqe.flags != 0 || sqe._reserved0 != 0 || sqe._reserved != [0; 5] {
            return Err(NetStatus::InvalidCommand);
        }
        if matches!(op, NetOp::Accept | NetOp::Close) && (sqe.addr != 0 || sqe.len != 0) {
            return Err(NetStatus::InvalidCommand);
        }
        if op == NetOp::Accept {
            let l = sqe.conn as usize;
            return if l < self.listeners.len() {
                Ok(Started::Accept(l))
            } else {
                Err(NetStatus::InvalidListener)
            };
        }
        let slot = self
            .conns
            .slot_of(ConnId(sqe.conn))
            .filter(|&s| self.conn(s).is_some_and(|c| c.queue == qi))
            .ok_or(NetStatus::InvalidConnection)?;
        if op == NetOp::Close {
            return Ok(Started::Close(slot));
        }
        if sqe.len == 0 || sqe.len > MAX_NET_IO {
            return Err(NetStatus::InvalidBuffer);
        }
        let span = GuestSpan::new(&self.ram, sqe.addr, u64::from(sqe.len))
            .ok_or(NetStatus::InvalidBuffer)?;
        let c = self.conn(slot).ok_or(NetStatus::InvalidConnection)?;
        if op == NetOp::Recv {
            if c.recv.is_some() {
                return Err(NetStatus::Busy);
            }
            Ok(Started::Recv(slot, span))
        } else {
            if c.send.is_some() {
                return Err(NetStatus::Busy);
            }
            Ok(Started::Send(slot, span))
        }
    }

    fn conn(&self, slot: usize) -> Option<&Conn> {
        self.conns.get(slot)
    }

    /// Posts a completion of a valid command (its id is free again).
    fn finish(&mut self, qi: usize, cid: u16, done: Done) {
        if let Some(q) = self.queues[qi].as_mut() {
            q.set_cid_busy(cid, false);
        }
        self.post(qi, cid, done);
    }

    fn post(&mut self, qi: usize, cid: u16, (status, result, conn, aux): Done) {
        if let Some(q) = self.queues.get_mut(qi).and_then(Option::as_mut) {
            q.post(cid, status, result, conn, aux);
            self.shared
                .stats
                .completions
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands clients of listener `l` to the accepts waiting there; while
    /// `max_connections` are open, clients are accepted and closed at
    /// once (refused).
    fn accept_ready(&mut self, l: usize) {
        loop {
            let refuse = self.conns.full();
            if !refuse && self.accepts[l].is_empty() {
                return;
            }
            let (mut stream, peer) = match self.listeners[l].accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    log::warn!("net: accept on listener {l} failed: {e}");
                    return;
                }
            };
            if refuse {
                log::debug!("net: {peer} refused: the connection limit is reached");
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(slot) = self.conns.next_slot() else {
                continue; // not reached: not full
            };
            let _ = stream.set_nodelay(true);
            let token = Token(CONN_BASE + slot);
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, interest())
            {
                log::warn!("net: cannot watch the connection of {peer}: {e}; closed");
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some((qi, cid)) = self.accepts[l].pop_front() else {
                continue; // not reached: checked above
            };
            let conn = Conn {
                stream,
                queue: qi,
                recv: None,
                send: None,
                failed: false,
            };
            let Some((_, id)) = self.conns.insert(conn) else {
                continue; // not reached: not full
            };
            self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            log::debug!("net: {peer} accepted on listener {l} as {id}");
            self.finish(qi, cid, (NetStatus::Success, id.0, l as u32, l as u32));
        }
    }

    /// Carries on the receive pending on connection `slot`, if any.
    fn try_recv(&mut self, slot: usize) {
        let id = self.conns.id_of(slot).0;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(span) = c.recv.as_ref().map(|p| p.span) else {
            return;
        };
        if c.failed {
            self.fail(slot);
            return;
        }
        let fd = c.stream.as_raw_fd();
        let n = loop {
            match span.recv(fd, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("net: {}: receive failed: {e}", ConnId(id));
                    self.fail(slot);
                    return;
                }
            }
        };
        self.shared
            .stats
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Some((qi, p)) = self
            .conns
            .get_mut(slot)
            .and_then(|c| Some((c.queue, c.recv.take()?)))
        {
            self.finish(qi, p.cid, (NetStatus::Success, n as u32, id, 0));
        }
    }

    /// Carries on the send pending on connection `slot`, if any: every
    /// byte handed to the socket, it completes with its length.
    fn try_send(&mut self, slot: usize) {
        let id = self.conns.id_of(slot).0;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.send.is_none() {
            return;
        }
        if c.failed {
            self.fail(slot);
            return;
        }
        let fd = c.stream.as_raw_fd();
        let qi = c.queue;
        let Some(p) = c.send.as_mut() else {
            return;
        };
        let mut sent = 0u64;
        let outcome = loop {
            if p.done >= p.span.len() {
                break Ok(());
            }
            match p.span.send(fd, p.done) {
                Ok(n) => {
                    p.done += n;
                    sent += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        self.shared
            .stats
            .bytes_sent
            .fetch_add(sent, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                if let Some(p) = self.conns.get_mut(slot).and_then(|c| c.send.take()) {
                    self.finish(qi, p.cid, (NetStatus::Success, p.done as u32, id, 0));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                log::debug!("net: {}: send failed: {e}", ConnId(id));
                self.fail(slot);
            }
        }
    }

    /// The socket of `slot` failed: its pending commands complete with
    /// `Reset`, and so will every later receive and send.
    fn fail(&mut self, slot: usize) {
        let id = self.conns.id_of(slot).0;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.failed = true;
        let qi = c.queue;
        let pending = [c.recv.take(), c.send.take()];
        for p in pending.into_iter().flatten() {
            self.finish(qi, p.cid, (NetStatus::Reset, 0, id, 0));
        }
    }

    /// Closes connection `slot`. Its pending commands complete with
    /// `Aborted` if `complete`; otherwise (its queue pair is being given
    /// back, or the poller stops) they are dropped.
    fn close_conn(&mut self, slot: usize, complete: bool) {
        let id = self.conns.id_of(slot).0;
        let Some(mut c) = self.conns.remove(slot) else {
            return;
        };
        if let Err(e) = self.poll.registry().deregister(&mut c.stream) {
            log::debug!("net: deregistering {}: {e}", ConnId(id));
        }
        if complete {
            for p in [c.recv.take(), c.send.take()].into_iter().flatten() {
                self.finish(c.queue, p.cid, (NetStatus::Aborted, 0, id, 0));
            }
        }
        log::debug!("net: {} closed", ConnId(id));
    }

    /// Sends the completion interrupt of every queue pair that got
    /// completions while a CPU waits on it.
    fn notify_waiters(&mut self) {
        let mut fenced = false;
        for q in self.queues.iter_mut().flatten() {
            if !std::mem::take(&mut q.posted) || q.interrupt == 0 {
                continue;
            }
            if !fenced {
                fence(Ordering::SeqCst);
                fenced = true;
            }
            if let (Some(cpu), Some(send)) = (q.take_waiter(), &self.interrupts) {
                send(cpu, q.interrupt);
                self.shared.stats.interrupts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A valid command, ready to start.
enum Started {
    Accept(usize),
    Recv(usize, GuestSpan),
    Send(usize, GuestSpan),
    Close(usize),
}
