//! Tests of the network against a real poller thread and real TCP
//! clients on 127.0.0.1: each test builds guest RAM, lays out queue pairs
//! in it with `QueueLayout`, and acts as the guest driver (writes entries,
//! moves the shadow SQ tail, rings the doorbell when the event index asks
//! for it, reads completions by their phase tag).

use super::*;
use crate::layout::Range;
use dbos_abi::net::{ConnId, NetCqe, NetOp, NetSqe, NetStatus, MAX_NET_IO, MAX_NET_QUEUES};
use dbos_abi::nvme::{QueueLayout, CQ_HEAD_WORD, EVENT_IDX_POLLING, SQ_TAIL_WORD, WAIT_WORD};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// 8 MiB of RAM at 0 and 64 KiB at 5 GiB.
const HIGH: u64 = 5 << 30;
const QUEUE_A: u64 = 0x1_0000;
const QUEUE_B: u64 = 0x2_0000;
/// Buffers live from here (4 MiB up to the end of low RAM).
const BUF: u64 = 0x40_0000;
const DEPTH: u16 = 32;
const TIMEOUT: Duration = Duration::from_secs(20);

fn ram() -> Arc<GuestRam> {
    Arc::new(
        GuestRam::new(&[
            Range {
                start: 0,
                end: 8 << 20,
            },
            Range {
                start: HIGH,
                end: HIGH + 0x1_0000,
            },
        ])
        .unwrap(),
    )
}

fn start(ram: &Arc<GuestRam>, spin: Duration, max: u32) -> Network {
    let config = NetConfig {
        poll_spin: spin,
        max_connections: max,
        ..NetConfig::new(vec!["127.0.0.1:0".parse().unwrap()])
    };
    Network::start(&config, ram, None).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The guest's side of one queue pair.
struct Driver<'a> {
    ram: &'a GuestRam,
    net: &'a Network,
    config: QueuePairConfig,
    id: u16,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
}

impl<'a> Driver<'a> {
    fn new(ram: &'a GuestRam, net: &'a Network, base: u64) -> Driver<'a> {
        let config = QueueLayout::new(DEPTH).unwrap().config(base);
        let id = net.add_queue(config).unwrap();
        Driver {
            ram,
            net,
            config,
            id,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        }
    }

    fn event_idx(&self) -> u32 {
        read_u32(
            self.ram,
            self.config.event_idx_addr + 4 * SQ_TAIL_WORD as u64,
        )
    }

    /// Submits `sqe`; rings the doorbell if the host asked for it.
    /// Returns whether it rang.
    fn submit(&mut self, sqe: NetSqe) -> bool {
        let slot = self.config.sq_addr + u64::from(self.sq_tail) * 64;
        self.ram.write_pod(slot, &sqe).unwrap();
        self.sq_tail = (self.sq_tail + 1) % u32::from(DEPTH);
        std::sync::atomic::fence(Ordering::SeqCst);
        write_u32(
            self.ram,
            self.config.doorbell_addr + 4 * SQ_TAIL_WORD as u64,
            self.sq_tail,
        );
        std::sync::atomic::fence(Ordering::SeqCst);
        let ring = self.event_idx() != EVENT_IDX_POLLING;
        if ring {
            self.net.ring();
        }
        ring
    }

    fn peek(&self) -> Option<NetCqe> {
        let cqe: NetCqe = self
            .ram
            .read_pod(self.config.cq_addr + u64::from(self.cq_head) * 16)
            .unwrap();
        (cqe.phase() == self.phase).then_some(cqe)
    }

    /// The next completion (consumed).
    fn next(&mut self) -> NetCqe {
        let t0 = Instant::now();
        loop {
            if let Some(cqe) = self.peek() {
                self.cq_head = (self.cq_head + 1) % u32::from(DEPTH);
                if self.cq_head == 0 {
                    self.phase = !self.phase;
                }
                write_u32(
                    self.ram,
                    self.config.doorbell_addr + 4 * CQ_HEAD_WORD as u64,
                    self.cq_head,
                );
                return cqe;
            }
            assert!(t0.elapsed() < TIMEOUT, "no completion");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Asserts that no completion arrives within a short while.
    fn none_within(&self, d: Duration) {
        std::thread::sleep(d);
        assert_eq!(self.peek(), None);
    }

    /// Submits and waits for the completion (of this command: the only one
    /// expected).
    fn call(&mut self, sqe: NetSqe) -> NetCqe {
        self.submit(sqe);
        let cqe = self.next();
        assert_eq!(cqe.cid, sqe.cid, "{cqe:?}");
        cqe
    }

    fn accept(&mut self, cid: u16, client: impl FnOnce()) -> ConnId {
        self.submit(sqe(NetOp::Accept, cid, 0, 0, 0));
        client();
        let cqe = self.next();
        assert_eq!(
            (cqe.cid, cqe.status(), cqe.conn, cqe.aux),
            (cid, Some(NetStatus::Success), 0, 0)
        );
        ConnId(cqe.result)
    }
}

fn read_u32(ram: &GuestRam, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    ram.read(addr, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn write_u32(ram: &GuestRam, addr: u64, v: u32) {
    ram.write(addr, &v.to_le_bytes()).unwrap();
}

fn sqe(op: NetOp, cid: u16, conn: u32, addr: u64, len: u32) -> NetSqe {
    NetSqe {
        opcode: op as u8,
        cid,
        conn,
        addr,
        len,
        ..NetSqe::default()
    }
}

fn status(cqe: &NetCqe) -> NetStatus {
    cqe.status().unwrap()
}

fn connect(net: &Network) -> TcpStream {
    let c = TcpStream::connect(net.addrs()[0]).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c
}

#[test]
fn accept_and_echo() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut client = None;
    let id = q.accept(1, || client = Some(connect(&net)));
    let mut client = client.unwrap();
    assert_eq!(id, ConnId(1 << 16), "slot 0, generation 1");
    client.write_all(b"hello, guest").unwrap();
    let cqe = q.call(sqe(NetOp::Recv, 2, id.0, BUF, 100));
    assert_eq!(
        (status(&cqe), cqe.result, cqe.conn),
        (NetStatus::Success, 12, id.0)
    );
    let mut got = [0u8; 12];
    ram.read(BUF, &mut got).unwrap();
    assert_eq!(&got, b"hello, guest");
    // Echo it back from high RAM.
    ram.write(HIGH + 0x100, b"hello, guest").unwrap();
    let cqe = q.call(sqe(NetOp::Send, 3, id.0, HIGH + 0x100, 12));
    assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, 12));
    let mut back = [0u8; 12];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello, guest");
    let cqe = q.call(sqe(NetOp::Close, 4, id.0, 0, 0));
    assert_eq!((status(&cqe), cqe.conn), (NetStatus::Success, id.0));
    assert_eq!(client.read(&mut back).unwrap(), 0, "the client sees EOF");
    let s = net.stats();
    assert_eq!(
        (s.commands, s.completions, s.accepted, s.invalid),
        (4, 4, 1, 0)
    );
    assert_eq!((s.bytes_received, s.bytes_sent, s.refused), (12, 12, 0));
    let info = net.info();
    assert_eq!(info.listeners, 1);
    assert_eq!(info.max_connections, 16);
    assert_eq!(info.ports[0], net.addrs()[0].port());
    assert_eq!(info.ports[1], 0);
    assert!(net.stop().is_some());
    assert!(net.stop().is_none());
}

#[test]
fn large_sends_continue_as_the_socket_drains() {
    const TOTAL: usize = 4 << 20;
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut client = None;
    let id = q.accept(1, || client = Some(connect(&net)));
    let mut client = client.unwrap();
    let pattern: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    ram.write(BUF, &pattern).unwrap();
    // The client reads only after a while: the sends outgrow the socket
    // buffers and go on as it drains them.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut got = vec![0u8; TOTAL];
        client.read_exact(&mut got).unwrap();
        got
    });
    let chunk = MAX_NET_IO as usize;
    for (i, off) in (0..TOTAL).step_by(chunk).enumerate() {
        let cqe = q.call(sqe(
            NetOp::Send,
            10 + i as u16,
            id.0,
            BUF + off as u64,
            chunk as u32,
        ));
        assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, MAX_NET_IO));
    }
    let got = reader.join().unwrap();
    assert!(got == pattern, "the bytes arrive in order, intact");
    assert_eq!(net.stats().bytes_sent, TOTAL as u64);
}

#[test]
fn client_close_is_a_receive_of_zero() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut client = None;
    let id = q.accept(1, || client = Some(connect(&net)));
    // A receive waits for the client...
    q.submit(sqe(NetOp::Recv, 2, id.0, BUF, 64));
    q.none_within(Duration::from_millis(50));
    drop(client);
    let cqe = q.next();
    assert_eq!(
        (cqe.cid, status(&cqe), cqe.result),
        (2, NetStatus::Success, 0)
    );
    // ... and every later one is 0 too.
    let cqe = q.call(sqe(NetOp::Recv, 3, id.0, BUF, 64));
    assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, 0));
}

/// Closes `c` with a reset (SO_LINGER with a zero timeout).
fn reset(c: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a linger struct
    // of the size given.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0);
    drop(c);
}

#[test]
fn client_reset_fails_only_its_connection() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let (mut c1, mut c2) = (None, None);
    let id1 = q.accept(1, || c1 = Some(connect(&net)));
    let id2 = q.accept(2, || c2 = Some(connect(&net)));
    assert_ne!(id1, id2);
    q.submit(sqe(NetOp::Recv, 3, id1.0, BUF, 64));
    q.none_within(Duration::from_millis(20));
    reset(c1.unwrap());
    let cqe = q.next();
    assert_eq!((cqe.cid, status(&cqe)), (3, NetStatus::Reset));
    let cqe = q.call(sqe(NetOp::Send, 4, id1.0, BUF, 64));
    assert_eq!(status(&cqe), NetStatus::Reset);
    let cqe = q.call(sqe(NetOp::Recv, 5, id1.0, BUF, 64));
    assert_eq!(status(&cqe), NetStatus::Reset);
    // The other client is unharmed.
    let mut c2 = c2.unwrap();
    c2.write_all(b"ping").unwrap();
    let cqe = q.call(sqe(NetOp::Recv, 6, id2.0, BUF, 64));
    assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, 4));
    let cqe = q.call(sqe(NetOp::Close, 7, id1.0, 0, 0));
    assert_eq!(status(&cqe), NetStatus::Success);
    assert_eq!(net.stats().invalid, 0, "Reset is not an invalid command");
}

#[test]
fn close_aborts_pending_commands_and_the_id_goes_stale() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut client = None;
    let id = q.accept(1, || client = Some(connect(&net)));
    q.submit(sqe(NetOp::Recv, 5, id.0, BUF, 64));
    q.none_within(Duration::from_millis(20));
    q.submit(sqe(NetOp::Close, 6, id.0, 0, 0));
    let first = q.next();
    let second = q.next();
    assert_eq!((first.cid, status(&first)), (5, NetStatus::Aborted));
    assert_eq!((second.cid, status(&second)), (6, NetStatus::Success));
    let mut b = [0u8; 1];
    assert_eq!(client.unwrap().read(&mut b).unwrap(), 0);
    for (cid, op) in [(7, NetOp::Recv), (8, NetOp::Send)] {
        let cqe = q.call(sqe(op, cid, id.0, BUF, 64));
        assert_eq!(status(&cqe), NetStatus::InvalidConnection);
    }
    let cqe = q.call(sqe(NetOp::Close, 9, id.0, 0, 0));
    assert_eq!(status(&cqe), NetStatus::InvalidConnection);
    // The next client gets another slot (slots are not reused before the
    // table has grown to max_connections): a new id.
    let mut c2 = None;
    let id2 = q.accept(10, || c2 = Some(connect(&net)));
    assert_ne!(id2, id);
    let cqe = q.call(sqe(NetOp::Recv, 11, id.0, BUF, 64));
    assert_eq!(status(&cqe), NetStatus::InvalidConnection);
    assert_eq!(net.stats().invalid, 4);
}

#[test]
fn stale_id_of_a_reused_slot() {
    let ram = ram();
    // One slot: the second connection reuses it with a new generation.
    let net = start(&ram, DEFAULT_POLL_SPIN, 1);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut c = None;
    let id = q.accept(1, || c = Some(connect(&net)));
    assert_eq!(
        status(&q.call(sqe(NetOp::Close, 2, id.0, 0, 0))),
        NetStatus::Success
    );
    let mut c2 = None;
    let id2 = q.accept(3, || c2 = Some(connect(&net)));
    assert_eq!((id.0 & 0xffff, id2.0 & 0xffff), (0, 0));
    assert_eq!((id.0 >> 16, id2.0 >> 16), (1, 2));
    let cqe = q.call(sqe(NetOp::Recv, 4, id.0, BUF, 8));
    assert_eq!(status(&cqe), NetStatus::InvalidConnection);
}

#[test]
fn every_invalid_entry_gets_its_status() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut client = None;
    let id = q.accept(1, || client = Some(connect(&net)));
    let c = id.0;
    let recv = |cid, addr, len| sqe(NetOp::Recv, cid, c, addr, len);
    let mut cases: Vec<(NetSqe, NetStatus)> = vec![
        (
            NetSqe {
                opcode: 0,
                cid: 10,
                ..NetSqe::default()
            },
            NetStatus::InvalidCommand,
        ),
        (
            NetSqe {
                opcode: 5,
                cid: 11,
                ..NetSqe::default()
            },
            NetStatus::InvalidCommand,
        ),
        (
            NetSqe {
                flags: 1,
                ..recv(12, BUF, 8)
            },
            NetStatus::InvalidCommand,
        ),
        (
            NetSqe {
                _reserved0: 1,
                ..recv(13, BUF, 8)
            },
            NetStatus::InvalidCommand,
        ),
        (
            NetSqe {
                _reserved: [0, 0, 0, 0, 1],
                ..recv(14, BUF, 8)
            },
            NetStatus::InvalidCommand,
        ),
        (sqe(NetOp::Accept, 15, 0, BUF, 0), NetStatus::InvalidCommand),
        (sqe(NetOp::Close, 16, c, 0, 8), NetStatus::InvalidCommand),
        (sqe(NetOp::Accept, 17, 1, 0, 0), NetStatus::InvalidListener),
        (
            sqe(NetOp::Accept, 18, u32::MAX, 0, 0),
            NetStatus::InvalidListener,
        ),
        (
            sqe(NetOp::Recv, 19, 12345, BUF, 8),
            NetStatus::InvalidConnection,
        ),
        (
            sqe(NetOp::Send, 20, 0, BUF, 8),
            NetStatus::InvalidConnection,
        ),
        (
            sqe(NetOp::Close, 21, c ^ 0x10000, 0, 0),
            NetStatus::InvalidConnection,
        ),
        (recv(22, BUF, 0), NetStatus::InvalidBuffer),
        (recv(23, BUF, MAX_NET_IO + 1), NetStatus::InvalidBuffer),
        (recv(24, 8 << 20, 8), NetStatus::InvalidBuffer),
        (recv(25, (8 << 20) - 4, 8), NetStatus::InvalidBuffer),
        (recv(26, HIGH - 4, 8), NetStatus::InvalidBuffer),
        (recv(27, u64::MAX - 3, 8), NetStatus::InvalidBuffer),
        (
            sqe(NetOp::Send, 28, c, HIGH + 0xfffc, 8),
            NetStatus::InvalidBuffer,
        ),
    ];
    for (i, (entry, want)) in cases.drain(..).enumerate() {
        let cqe = q.call(entry);
        assert_eq!(status(&cqe), want, "case {i}: {entry:?}");
        assert_eq!(cqe.conn, entry.conn, "case {i}");
        assert_eq!(cqe.result, 0, "case {i}");
    }
    // Busy: a second receive while one waits; CidConflict: a command id
    // in flight (the conflicting entry does not free it).
    q.submit(recv(30, BUF, 8));
    q.none_within(Duration::from_millis(20));
    let cqe = q.call(recv(31, BUF + 8, 8));
    assert_eq!(status(&cqe), NetStatus::Busy);
    let cqe = q.call(sqe(NetOp::Close, 30, c, 0, 0));
    assert_eq!(status(&cqe), NetStatus::CidConflict);
    let cqe = q.call(sqe(NetOp::Accept, 30, 0, 0, 0));
    assert_eq!(status(&cqe), NetStatus::CidConflict);
    let s = net.stats();
    assert_eq!(s.invalid, 19 + 3);
    assert_eq!(s.commands, 1 + 19 + 4);
    assert_eq!(s.completions, 1 + 19 + 3);
    // The receive that waited is still there, with its id.
    client.unwrap().write_all(b"x").unwrap();
    let cqe = q.next();
    assert_eq!(
        (cqe.cid, status(&cqe), cqe.result),
        (30, NetStatus::Success, 1)
    );
    let cqe = q.call(recv(30, BUF, 8)); // id 30 is free again: no conflict
    assert_ne!(status(&cqe), NetStatus::CidConflict);
}

#[test]
fn a_connection_belongs_to_its_queue_pair() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut a = Driver::new(&ram, &net, QUEUE_A);
    let mut b = Driver::new(&ram, &net, QUEUE_B);
    assert_eq!((a.id, b.id), (0, 1));
    let mut client = None;
    let id = a.accept(1, || client = Some(connect(&net)));
    for (cid, op) in [(1, NetOp::Recv), (2, NetOp::Send)] {
        let cqe = b.call(sqe(op, cid, id.0, BUF, 8));
        assert_eq!(status(&cqe), NetStatus::InvalidConnection);
    }
    let cqe = b.call(sqe(NetOp::Close, 3, id.0, 0, 0));
    assert_eq!(status(&cqe), NetStatus::InvalidConnection);
    // Still open on A.
    client.unwrap().write_all(b"ok").unwrap();
    let cqe = a.call(sqe(NetOp::Recv, 2, id.0, BUF, 8));
    assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, 2));
}

#[test]
fn clients_beyond_max_connections_are_refused() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 1);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let mut c1 = None;
    let id = q.accept(1, || c1 = Some(connect(&net)));
    // Full: the next clients are accepted and closed at once, even with
    // an accept waiting.
    q.submit(sqe(NetOp::Accept, 2, 0, 0, 0));
    for n in 1..=2 {
        let mut c = connect(&net);
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        wait_until("the refusal", || net.stats().refused == n);
    }
    q.none_within(Duration::from_millis(20));
    // Once one closes, the waiting accept takes the next client.
    let cqe = q.call(sqe(NetOp::Close, 3, id.0, 0, 0));
    assert_eq!(status(&cqe), NetStatus::Success);
    let _c = connect(&net);
    let cqe = q.next();
    assert_eq!((cqe.cid, status(&cqe)), (2, NetStatus::Success));
    let s = net.stats();
    assert_eq!((s.accepted, s.refused, s.invalid), (2, 2, 0));
}

#[test]
fn destroying_a_queue_pair_closes_its_connections() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let mut a = Driver::new(&ram, &net, QUEUE_A);
    let mut b = Driver::new(&ram, &net, QUEUE_B);
    let (mut ca, mut cb) = (None, None);
    let ida = a.accept(1, || ca = Some(connect(&net)));
    let idb = b.accept(1, || cb = Some(connect(&net)));
    a.submit(sqe(NetOp::Recv, 2, ida.0, BUF, 8));
    a.submit(sqe(NetOp::Accept, 3, 0, 0, 0));
    a.none_within(Duration::from_millis(20));
    let before = net.stats();
    net.remove_queue(u64::from(a.id)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(ca.unwrap().read(&mut byte).unwrap(), 0, "closed by the VMM");
    // Dropped without completions; the accept no longer takes clients.
    assert_eq!(a.peek(), None);
    assert_eq!(net.stats().completions, before.completions);
    let _late = connect(&net);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(net.stats().accepted, 2);
    assert_eq!(
        net.remove_queue(u64::from(a.id)),
        Err(QueueError::NoSuchQueue(0))
    );
    assert_eq!(
        net.remove_queue(u64::MAX),
        Err(QueueError::NoSuchQueue(u64::MAX))
    );
    // B's connection is unharmed.
    cb.as_mut().unwrap().write_all(b"b").unwrap();
    let cqe = b.call(sqe(NetOp::Recv, 4, idb.0, BUF, 8));
    assert_eq!((status(&cqe), cqe.result), (NetStatus::Success, 1));
    // A's slot is free again (queue id 0).
    let a2 = Driver::new(&ram, &net, QUEUE_A + 0x8000);
    assert_eq!(a2.id, 0);
}

#[test]
fn parked_poller_is_woken_by_the_doorbell() {
    let ram = ram();
    // No spin: the poller parks as soon as a turn finds nothing.
    let net = start(&ram, Duration::ZERO, 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    let parked = |q: &Driver| {
        let s = net.stats();
        q.event_idx() == q.sq_tail && net.parks() == s.wakeups + 1
    };
    wait_until("the poller to park", || parked(&q));
    let w0 = net.stats().wakeups;
    assert_eq!(net.stats().doorbells, 0);
    for n in 1..=3u64 {
        // The event index asks for a doorbell: the submission rings it.
        assert!(q.submit(NetSqe {
            opcode: 0,
            cid: n as u16,
            ..NetSqe::default()
        }));
        let cqe = q.next();
        assert_eq!(status(&cqe), NetStatus::InvalidCommand);
        wait_until("the poller to park again", || parked(&q));
        let s = net.stats();
        assert_eq!((s.doorbells, s.wakeups - w0), (n, n));
        assert_eq!(s.commands, n);
    }
    // An accept waits for a client: one doorbell, one wake-up...
    assert!(q.submit(sqe(NetOp::Accept, 9, 0, 0, 0)));
    wait_until("the poller to park again", || parked(&q));
    let s = net.stats();
    assert_eq!((s.doorbells, s.wakeups - w0), (4, 4));
    // ... and the client connecting wakes it (a socket, no doorbell).
    let _client = connect(&net);
    let cqe = q.next();
    assert_eq!((cqe.cid, status(&cqe)), (9, NetStatus::Success));
    wait_until("the poller to park again", || parked(&q));
    let s = net.stats();
    assert_eq!((s.doorbells, s.wakeups - w0, s.accepted), (4, 5, 1));
}

#[test]
fn polling_poller_needs_no_doorbell() {
    let ram = ram();
    let net = start(&ram, Duration::from_secs(30), 16);
    let mut q = Driver::new(&ram, &net, QUEUE_A);
    for cid in 0..100u16 {
        assert!(!q.submit(NetSqe {
            opcode: 0,
            cid,
            ..NetSqe::default()
        }));
        assert_eq!(status(&q.next()), NetStatus::InvalidCommand);
    }
    let s = net.stats();
    assert_eq!(
        (s.doorbells, s.commands, s.completions, s.invalid),
        (0, 100, 100, 100)
    );
    assert_eq!(q.event_idx(), EVENT_IDX_POLLING);
    // The ring wrapped three times: the phase tags flipped with it.
    assert_eq!(q.cq_head, 100 % u32::from(DEPTH));
}

#[test]
fn completion_interrupts_go_to_the_waiting_cpu() {
    let ram = ram();
    let sent: Arc<Mutex<Vec<(u32, u8)>>> = Arc::default();
    let log = sent.clone();
    let sender: InterruptSender = Arc::new(move |cpu, v| log.lock().unwrap().push((cpu, v)));
    let config = NetConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
    let net = Network::start(&config, &ram, Some(sender)).unwrap();
    let mut qc = QueueLayout::new(DEPTH).unwrap().config(QUEUE_A);
    qc.interrupt = 40;
    net.add_queue(qc).unwrap();
    let mut q = Driver {
        ram: &ram,
        net: &net,
        config: qc,
        id: 0,
        sq_tail: 0,
        cq_head: 0,
        phase: true,
    };
    // CPU 2 sleeps on the queue (waiting word = APIC id + 1).
    write_u32(&ram, qc.doorbell_addr + 4 * WAIT_WORD as u64, 3);
    q.call(NetSqe::default());
    wait_until("the interrupt", || !sent.lock().unwrap().is_empty());
    assert_eq!(*sent.lock().unwrap(), vec![(2, 40)]);
    assert_eq!(read_u32(&ram, qc.doorbell_addr + 4 * WAIT_WORD as u64), 0);
    // Nobody waits: no interrupt.
    q.call(NetSqe {
        cid: 1,
        ..NetSqe::default()
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(net.stats().interrupts, 1);
}

#[test]
fn registrations_are_checked() {
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 16);
    let good = QueueLayout::new(DEPTH).unwrap().config(QUEUE_A);
    let errno = |c: QueuePairConfig| net.add_queue(c).map_err(|e| e.errno());
    let mut outside = good;
    outside.sq_addr = 8 << 20; // just past low RAM
    assert_eq!(errno(outside), Err(libc::EFAULT));
    let mut across = QueueLayout::new(DEPTH).unwrap().config((8 << 20) - 0x2000);
    across.interrupt = 0;
    assert_eq!(errno(across), Err(libc::EFAULT), "runs off the end of RAM");
    let mut misaligned = good;
    misaligned.cq_addr += 16;
    assert_eq!(errno(misaligned), Err(libc::EINVAL));
    let mut overlap = good;
    overlap.cq_addr = good.sq_addr;
    assert_eq!(errno(overlap), Err(libc::EINVAL));
    let mut depth = good;
    depth.depth = 1;
    assert_eq!(errno(depth), Err(libc::EINVAL));
    let mut vector = good;
    vector.interrupt = 5;
    assert_eq!(errno(vector), Err(libc::EINVAL));
    vector.interrupt = 40; // valid, but this network sends no interrupts
    assert_eq!(errno(vector), Err(libc::EINVAL));
    // MAX_NET_QUEUES of depth 2 (12 KiB each), then no more.
    let small = QueueLayout::new(2).unwrap();
    for i in 0..MAX_NET_QUEUES as u64 {
        assert_eq!(
            net.add_queue(small.config(0x10_0000 + i * small.size())),
            Ok(i as u16)
        );
    }
    assert_eq!(errno(good), Err(libc::ENOSPC));
    // Only wake-ups (requests wake the parked poller) have moved.
    let s = net.stats();
    assert_eq!(
        NetStatsArgs { wakeups: 0, ..s },
        NetStatsArgs::default(),
        "no command yet"
    );
}

#[test]
fn hypercalls_with_and_without_a_network() {
    use crate::clock::Clock;
    use crate::console::Console;
    use crate::control::Control;
    use crate::disk::DiskService;
    use crate::files::Files;
    use crate::services::Services;
    use dbos_abi::{GuestPhysAddr, Hypercall};
    let ram = ram();
    let net = start(&ram, DEFAULT_POLL_SPIN, 7);
    let console = Console::new(1, false, true);
    let files = Files::default();
    let exits = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let kvm = Err(String::new());
    let services = |net| Services {
        ram: &ram,
        console: &console,
        control: Control {
            vmm_exits: &exits,
            stats_calls: &calls,
            kvm_stats: &kvm,
        },
        clock: Clock::new(Instant::now()),
        files: &files,
        disk: DiskService { disk: None },
        net: NetService { net },
    };
    const BLOCK: u64 = 0x8000;
    let block = GuestPhysAddr(BLOCK);
    for (s, has_net) in [(services(None), false), (services(Some(&net)), true)] {
        ram.write_pod(BLOCK, &NetInfoArgs::default()).unwrap();
        s.handle(0, Hypercall::NetInfo, block).unwrap();
        let info: NetInfoArgs = ram.read_pod(BLOCK).unwrap();
        if has_net {
            assert_eq!((info.listeners, info.max_connections), (1, 7));
            assert_eq!(info.ports[0], net.addrs()[0].port());
        } else {
            assert_eq!(info, NetInfoArgs::default());
        }
        let args = NetQueueArgs {
            queue: QueueLayout::new(DEPTH).unwrap().config(QUEUE_A),
            status: 1,
        };
        ram.write_pod(BLOCK, &args).unwrap();
        s.handle(0, Hypercall::NetCreateQueue, block).unwrap();
        let status = ram.read_pod::<NetQueueArgs>(BLOCK).unwrap().status;
        assert_eq!(status, if has_net { 0 } else { -i64::from(libc::ENODEV) });
        // Rings outside RAM.
        let args = NetQueueArgs {
            queue: QueueLayout::new(DEPTH).unwrap().config(1 << 40),
            status: 1,
        };
        ram.write_pod(BLOCK, &args).unwrap();
        s.handle(0, Hypercall::NetCreateQueue, block).unwrap();
        let status = ram.read_pod::<NetQueueArgs>(BLOCK).unwrap().status;
        let want = if has_net { libc::EFAULT } else { libc::ENODEV };
        assert_eq!(status, -i64::from(want));
        // The doorbell reads no block.
        assert_eq!(
            s.handle(0, Hypercall::NetDoorbell, GuestPhysAddr(u64::MAX)),
            Ok(Outcome::Continue)
        );
        ram.write_pod(BLOCK, &NetStatsArgs::default()).unwrap();
        s.handle(0, Hypercall::NetStats, block).unwrap();
        let stats: NetStatsArgs = ram.read_pod(BLOCK).unwrap();
        assert_eq!(stats.doorbells, u64::from(has_net));
        for (queue, want) in [(0, 0), (0, libc::ENOENT), (99, libc::ENOENT)] {
            ram.write_pod(BLOCK, &QueueIdArgs { queue, status: 1 })
                .unwrap();
            s.handle(0, Hypercall::NetDestroyQueue, block).unwrap();
            let status = ram.read_pod::<QueueIdArgs>(BLOCK).unwrap().status;
            let want = if has_net { want } else { libc::ENODEV };
            assert_eq!(status, -i64::from(want), "destroy {queue}");
        }
    }
}
