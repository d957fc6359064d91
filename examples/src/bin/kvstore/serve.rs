//! `kvstore -- serve`: the Redis-protocol server in ring 0. The same
//! sans-I/O sessions as `dbos-kv serve` (`dbos_kvstore::server`), over one
//! of two engines, served through the VMM's network queue
//! (`libdbos::net`) on the ports given with `dbos run --listen`, on every
//! vCPU, until a client says `SHUTDOWN`:
//!
//! - `engine btree` (the default): the B+tree on Tabby and the NVMe disk,
//!   every write logged and acknowledged once durable;
//! - `engine memory`: the hash table in Snappy's heap, persisted by
//!   snapshots to the host file granted as `dump` (`snapengine.rs`).
//!
//! ```text
//! dbos run --disk DISK --disk-size 64M --listen 127.0.0.1:6379 [--vcpus N] \
//!     kvstore -- serve [engine btree] [pool FRAMES]
//! dbos run --listen 127.0.0.1:6379 [--vcpus N] [--file dump=PATH] \
//!     kvstore -- serve engine memory [heap KIB] [save-every SECONDS]
//! ```
//!
//! The loop is generic over the engine ([`Engine`]); vCPU 0 runs the
//! engine's chores about every 100 ms between rounds (a checkpoint when
//! the log is 40% full; a periodic save), also when idle if the engine
//! asks for a timer tick to wake it.
//!
//! Each vCPU has a queue pair of its own with an accept pending on every
//! listener, and serves the connections it accepted. One round: turn the
//! completions into work (a client's bytes run through its session; a
//! sent buffer comes back), wait once for the highest ticket any reply of
//! the round needs (the store's group commit joins the vCPUs' waits into
//! shared log writes), then send every reply that is ready. A vCPU with
//! nothing to do sleeps until the host's completion interrupt. A client
//! that does not read its replies stops being read from once
//! `OUTPUT_HIGH_WATER` bytes wait for it (no receive is pending for it),
//! so it costs bounded memory and nothing to the others.

use super::snapengine::{SnapEngine, FILE_NAME};
use super::{calibrate_unix, now_ns, unix_ms, KvStore};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dbos_kvstore::server::btree::BtreeEngine;
use dbos_kvstore::server::engine::{KvEngine, Ticket};
use dbos_kvstore::server::session::OUTPUT_HIGH_WATER;
use dbos_kvstore::server::{self, Session, Shared};
use libdbos::abi::net::{ConnId, NetOp, NetStatus, MAX_NET_IO};
use libdbos::net::{self, Event, NetQueue};
use libdbos::platform::{EventCounts, Platform};
use libdbos::println;

type Btree = BtreeEngine<super::Device, super::Pool>;

/// What the loop needs of an engine beyond [`KvEngine`].
pub trait Engine: KvEngine {
    /// vCPU 0's chores, about every 100 ms between rounds.
    fn chores(&self);
    /// A timer period that wakes vCPU 0 when idle so its chores run
    /// (`None`: chores wait for the next request).
    fn tick_us(&self) -> Option<u64> {
        None
    }
}

impl Engine for Btree {
    fn chores(&self) {
        if let Err(e) = self.checkpoint_if_over(40) {
            println!("kvstore serve: checkpoint failed: {e}");
        }
    }
}

impl Engine for SnapEngine {
    fn chores(&self) {
        SnapEngine::chores(self);
    }
    fn tick_us(&self) -> Option<u64> {
        (self.save_every() > 0).then_some(100_000)
    }
}

/// Entries per ring of each vCPU's queue pair (the most the ABI allows):
/// with a receive, a send and a close in flight per connection at most,
/// a vCPU serves up to about 1,360 connections at once.
const DEPTH: u16 = 4096;
/// Bytes a receive asks for.
const RECV_BYTES: usize = 16 * 1024;
/// Commands a connection can have in flight at once.
const PER_CONN: usize = 3;

/// One client, as its vCPU sees it.
struct Client {
    session: Session,
    input: Vec<u8>,
    /// Replies not yet handed to the queue.
    output: Vec<u8>,
    /// The durability the replies in `output` wait for.
    ticket: Option<Ticket>,
    receiving: bool,
    sending: bool,
    /// Close once the output is sent (QUIT, a protocol error, the client
    /// closed its side, or it failed).
    closing: bool,
    close_sent: bool,
    /// A spare receive buffer.
    spare: Option<Vec<u8>>,
}

impl Client {
    fn new(session: Session) -> Client {
        Client {
            session,
            input: Vec::new(),
            output: Vec::new(),
            ticket: None,
            receiving: false,
            sending: false,
            closing: false,
            close_sent: false,
            spare: None,
        }
    }

    fn stalled(&self) -> bool {
        self.output.len() >= OUTPUT_HIGH_WATER
    }
}

/// What one vCPU serves.
struct Loop<'a, E: Engine> {
    shared: &'a Shared<E>,
    q: NetQueue,
    clients: BTreeMap<ConnId, Client>,
    /// Listeners whose accept is not re-armed (too many connections here).
    idle_listeners: Vec<u32>,
    /// Listeners the VMM offers.
    listeners: usize,
    /// Requests answered on this vCPU.
    requests: u64,
    /// The VM's event counters when this vCPU received its first request:
    /// the steady state is measured from there.
    first_request: Option<EventCounts>,
}

/// Set when the engine failed: every vCPU stops serving.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Requests answered on all vCPUs.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// `INFO dbos`'s guest counters: requests answered, VM exits to the VMM
/// (all causes, the INFO's own included), the network doorbells the guest
/// rang, and the host poller's wake-ups and completions (messages), so
/// that exits per request and messages per wake-up can be read off.
fn guest_counters(out: &mut Vec<(&'static str, u64)>) {
    let e = libdbos::platform().counters();
    let h = net::host_stats();
    out.extend([
        ("requests", REQUESTS.load(Ordering::Relaxed)),
        ("vm_exits", e.vmm_exits),
        ("net_doorbells", net::DOORBELLS.load(Ordering::Relaxed)),
        ("net_poller_wakeups", h.wakeups),
        ("net_completions", h.completions),
        ("net_commands", h.commands),
        ("net_accepted", h.accepted),
        ("net_refused", h.refused),
        ("net_invalid", h.invalid),
    ]);
}

impl<E: Engine> Loop<'_, E> {
    /// Connections this vCPU serves at once: each may have [`PER_CONN`]
    /// commands in flight beside one accept per listener.
    fn capacity(&self) -> usize {
        (usize::from(DEPTH) - 1 - self.listeners) / PER_CONN
    }

    fn arm_accept(&mut self, listener: u32) {
        if self.clients.len() >= self.capacity() || self.q.accept(listener).is_err() {
            self.idle_listeners.push(listener);
        }
    }

    fn arm_recv(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let limit = self
            .shared
            .config
            .client_query_buffer_limit
            .load(Ordering::Relaxed);
        if c.receiving || c.closing || c.stalled() || c.input.len() > limit {
            return;
        }
        let buf = c
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(RECV_BYTES));
        match self.q.recv(conn, buf) {
            Ok(()) => c.receiving = true,
            Err((e, buf)) => {
                log::warn!("kvstore serve: {conn}: receive not queued: {e:?}");
                c.spare = Some(buf);
            }
        }
    }

    /// Runs the client's complete requests.
    fn run(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let p = c.session.process(self.shared, &c.input, &mut c.output);
        c.input.drain(..p.consumed);
        c.ticket = c.ticket.max(p.ticket);
        c.closing |= p.close;
        self.requests += p.commands;
        REQUESTS.fetch_add(p.commands, Ordering::Relaxed);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { listener, conn } => {
                let stats = &self.shared.stats;
                let mut c = Client::new(self.shared.session());
                let connected = stats.connected_clients.fetch_add(1, Ordering::Relaxed);
                if connected as usize >= self.shared.config.maxclients.load(Ordering::Relaxed) {
                    stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    c.output
                        .extend_from_slice(b"-ERR max number of clients reached\r\n");
                    c.closing = true;
                }
                self.clients.insert(conn, c);
                self.arm_recv(conn);
                self.arm_accept(listener);
            }
            Event::Received { conn, data } => {
                if self.first_request.is_none() {
                    self.first_request = Some(libdbos::platform().counters());
                }
                let Some(c) = self.clients.get_mut(&conn) else {
                    return;
                };
                c.receiving = false;
                if data.is_empty() {
                    c.closing = true;
                    c.spare = Some(data);
                    return;
                }
                self.shared
                    .stats
                    .net_input_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                c.input.extend_from_slice(&data);
                c.spare = Some(data);
                self.run(conn);
                self.arm_recv(conn);
            }
            Event::Sent { conn, mut data } => {
                let Some(c) = self.clients.get_mut(&conn) else {
                    return;
                };
                self.shared
                    .stats
                    .net_output_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                c.sending = false;
                if c.output.is_empty() {
                    data.clear();
                    c.output = data;
                }
                // Requests held back while the output was full.
                if !c.input.is_empty() {
                    self.run(conn);
                }
                self.arm_recv(conn);
            }
            Event::Closed { conn } => {
                if self.clients.remove(&conn).is_some() {
                    self.shared
                        .stats
                        .connected_clients
                        .fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(l) = self.idle_listeners.pop() {
                    self.arm_accept(l);
                }
            }
            Event::Failed {
                op, conn, status, ..
            } => match (op, status) {
                (NetOp::Accept, s) => {
                    log::error!("kvstore serve: accept on listener {conn} failed: {s}");
                }
                (_, NetStatus::Aborted) => {}
                (_, s) => {
                    if s != NetStatus::Reset {
                        log::error!("kvstore serve: {op:?} on connection {conn} failed: {s}");
                    }
                    if let Some(c) = self.clients.get_mut(&ConnId(conn)) {
                        c.receiving &= op != NetOp::Recv;
                        c.sending &= op != NetOp::Send;
                        c.closing = true;
                        c.output.clear();
                        c.ticket = None;
                    }
                }
            },
        }
    }

    /// Waits for the durability the round's replies need, then sends
    /// every reply that is ready and closes the clients that are done.
    fn flush(&mut self) -> bool {
        let ticket = self.clients.values().filter_map(|c| c.ticket).max();
        if let Some(t) = ticket {
            if let Err(e) = self.shared.engine.wait(t) {
                println!("kvstore serve: the log failed, the server stops: {e}");
                FAILED.store(true, Ordering::Release);
                return false;
            }
            self.shared
                .stats
                .durable_waits
                .fetch_add(1, Ordering::Relaxed);
        }
        let conns: Vec<ConnId> = self.clients.keys().copied().collect();
        for conn in conns {
            let c = self.clients.get_mut(&conn).expect("listed above");
            if c.ticket.is_some_and(|t| Some(t) <= ticket) {
                c.ticket = None;
                self.shared
                    .stats
                    .durable_clients
                    .fetch_add(1, Ordering::Relaxed);
            }
            if !c.sending && c.ticket.is_none() && !c.output.is_empty() {
                let rest = if c.output.len() > MAX_NET_IO as usize {
                    c.output.split_off(MAX_NET_IO as usize)
                } else {
                    Vec::new()
                };
                let out = core::mem::replace(&mut c.output, rest);
                match self.q.send(conn, out) {
                    Ok(()) => c.sending = true,
                    Err((e, out)) => {
                        log::warn!("kvstore serve: {conn}: send not queued: {e:?}");
                        let rest = core::mem::replace(&mut c.output, out);
                        c.output.extend_from_slice(&rest);
                    }
                }
            }
            let done = !c.sending && c.output.is_empty() && c.ticket.is_none();
            if c.closing && !c.close_sent && done && self.q.close(conn).is_ok() {
                c.close_sent = true;
            }
        }
        true
    }

    fn serve(&mut self, cpu: usize) {
        for l in 0..self.listeners as u32 {
            self.arm_accept(l);
        }
        let mut events = Vec::new();
        let mut last_chores = now_ns();
        let mut sweeper = server::expire::Sweeper::new();
        let mut chores = |shared: &Shared<E>| {
            if cpu == 0 && now_ns() - last_chores > 100_000_000 {
                last_chores = now_ns();
                shared.engine.chores();
                // Active expiry, a slice of the keyspace at a time (as
                // `dbos-kv serve` does).
                if let Err(e) = sweeper.step(shared, 200) {
                    println!("kvstore serve: expiry sweep: {e}");
                }
            }
        };
        loop {
            events.clear();
            if self.q.poll(&mut events) == 0 {
                if self.shared.shutting_down() || FAILED.load(Ordering::Acquire) {
                    break;
                }
                chores(self.shared);
                self.q.wait();
                continue;
            }
            for ev in events.drain(..) {
                self.on_event(ev);
            }
            if !self.flush() {
                break;
            }
            if self.shared.shutting_down() || FAILED.load(Ordering::Acquire) {
                break;
            }
            chores(self.shared);
        }
    }
}

fn clock() -> server::engine::UnixMs {
    server::engine::UnixMs(unix_ms())
}

const USAGE: &str = "usage: kvstore -- serve [engine btree] [pool FRAMES] \
                     | serve engine memory [heap KIB] [save-every SECONDS]";

/// The engine `serve` runs, from its options.
#[derive(Debug, PartialEq, Eq)]
enum Options {
    Btree { frames: usize },
    Memory { heap_kib: u64, save_every: u64 },
}

/// Parses `[engine btree|memory] [NAME VALUE]...`.
fn parse(args: &[&str]) -> Result<Options, String> {
    if !args.len().is_multiple_of(2) {
        return Err(alloc::format!(
            "serve: '{}' has no value",
            args[args.len() - 1]
        ));
    }
    let mut engine = "btree";
    let (mut frames, mut heap_kib, mut save_every) = (None, None, None);
    for pair in args.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| alloc::format!("serve: {name} takes a whole number, not '{value}'"))
        };
        match name {
            "engine" => match value {
                "btree" | "memory" => engine = value,
                _ => {
                    return Err(alloc::format!(
                        "serve: engine takes btree or memory, not '{value}'"
                    ))
                }
            },
            "pool" => frames = Some(number()?),
            "heap" => heap_kib = Some(number()?),
            "save-every" => save_every = Some(number()?),
            _ => return Err(alloc::format!("serve: unknown option '{name}'")),
        }
    }
    if engine == "btree" {
        if heap_kib.is_some() || save_every.is_some() {
            return Err("serve: heap and save-every are options of engine memory".into());
        }
        return match frames {
            None => Ok(Options::Btree { frames: 64 }),
            Some(n) if n >= 16 => Ok(Options::Btree { frames: n as usize }),
            Some(n) => Err(alloc::format!(
                "serve: pool takes a number of frames, at least 16, not '{n}'"
            )),
        };
    }
    if frames.is_some() {
        return Err("serve: pool is an option of engine btree".into());
    }
    let heap_kib = heap_kib.unwrap_or(2048);
    if !(16..=1 << 20).contains(&heap_kib) {
        return Err(alloc::format!(
            "serve: heap takes KiB from 16 to 1048576, not '{heap_kib}'"
        ));
    }
    Ok(Options::Memory {
        heap_kib,
        save_every: save_every.unwrap_or(0),
    })
}

/// Serves until SHUTDOWN; the exit status. `disk`: the blocks of the
/// VM's disk, if it has one.
pub fn run(args: &[&'static str], disk: Option<u64>) -> u8 {
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            println!("{e}\n{USAGE}");
            return super::STATUS_USAGE;
        }
    };
    let Some(info) = net::info() else {
        println!("kvstore serve needs a network: dbos run --listen 127.0.0.1:PORT ...");
        return super::STATUS_USAGE;
    };
    calibrate_unix();
    match options {
        Options::Btree { frames } => {
            let Some(blocks) = disk else {
                println!("kvstore serve needs a disk: dbos run --disk PATH --disk-size 64M ...");
                return super::STATUS_USAGE;
            };
            let store: KvStore = match super::open(blocks, frames) {
                Ok(s) => s,
                Err(e) => {
                    println!("cannot open the store: {e}");
                    return 1;
                }
            };
            let what = alloc::format!("pool {frames} frames");
            serve(Btree::new(store, clock), &info, &what, 0)
        }
        Options::Memory {
            heap_kib,
            save_every,
        } => {
            let file = match libdbos::hostfile::HostFile::open(FILE_NAME) {
                Ok(f) => Some(f),
                Err(e) if e == libdbos::hostfile::Errno::ENOENT => None,
                Err(e) => {
                    println!("cannot open the host file '{FILE_NAME}': {e}");
                    return 1;
                }
            };
            if file.is_none() && save_every > 0 {
                println!(
                    "serve: save-every needs a snapshot file: dbos run --file {FILE_NAME}=PATH \
                     ...\n{USAGE}"
                );
                return super::STATUS_USAGE;
            }
            let saving = if file.is_some() {
                alloc::format!("snapshots to the host file '{FILE_NAME}'")
            } else {
                alloc::format!("no snapshot file (SAVE needs --file {FILE_NAME}=PATH)")
            };
            let engine = match SnapEngine::open(heap_kib, file, save_every) {
                Ok(e) => e,
                Err(e) => {
                    println!("cannot open the store: {e}");
                    return 1;
                }
            };
            let what = alloc::format!("memory engine, {heap_kib} KiB heap on Snappy, {saving}");
            serve(engine, &info, &what, save_every)
        }
    }
}

/// Serves `engine` until SHUTDOWN; the exit status.
fn serve<E: Engine>(engine: E, info: &net::NetInfo, what: &str, save_every: u64) -> u8 {
    let mut shared = Shared::new(engine, Default::default(), clock);
    shared.platform_counters = Some(guest_counters);
    shared
        .config
        .save_every
        .store(save_every, Ordering::Relaxed);
    shared
        .config
        .port
        .store(u64::from(info.ports[0]), Ordering::Relaxed);
    let cpus = libdbos::platform().cpu_count();
    println!(
        "serving RESP on port(s) {:?} from {cpus} vCPU(s), {what}",
        info.ports
    );
    type Served = (u64, net::NetQueueStats, Option<u64>);
    let served: Vec<spin::Mutex<Served>> = (0..cpus)
        .map(|_| spin::Mutex::new((0, Default::default(), None)))
        .collect();
    libdbos::platform().run_on_all(&|cpu| {
        let q = match NetQueue::new(DEPTH) {
            Ok(q) => q,
            Err(e) => {
                println!("vCPU {cpu}: no network queue: {e}");
                FAILED.store(true, Ordering::Release);
                return;
            }
        };
        let tick = if cpu == 0 {
            shared.engine.tick_us()
        } else {
            None
        };
        if tick.is_some() {
            if let Err(e) = libdbos::platform().set_timer(tick) {
                println!("vCPU 0: no timer for the engine's chores: {e:?}");
            }
        }
        let mut l = Loop {
            shared: &shared,
            q,
            clients: BTreeMap::new(),
            idle_listeners: Vec::new(),
            listeners: info.ports.len(),
            requests: 0,
            first_request: None,
        };
        l.serve(cpu);
        if tick.is_some() {
            let _ = libdbos::platform().set_timer(None);
        }
        // Wake the vCPUs sleeping until a completion: they see the
        // shutdown (or the failure) and stop too.
        for other in (0..cpus as u32).filter(|&o| o != cpu as u32) {
            libdbos::apic::send_ipi(other, libdbos::apic::vector::WAKE);
        }
        // Exits to the VMM (the whole VM's) from this vCPU's first request
        // to the end of serving, before the queue is given back.
        let exits = l
            .first_request
            .map(|e0| libdbos::platform().counters().since(&e0).vmm_exits);
        *served[cpu].lock() = (l.requests, l.q.stats(), exits);
    });
    for (cpu, s) in served.iter().enumerate() {
        let (requests, st, exits) = *s.lock();
        println!(
            "vCPU {cpu}: {requests} requests, {} commands, {} doorbells, {} sleeps, {} exits to \
             the VMM from the first request on (the whole VM's)",
            st.submitted,
            st.doorbells,
            st.sleeps,
            exits.map_or("no".into(), |e| alloc::format!("{e}"))
        );
    }
    let h = net::host_stats();
    println!(
        "network: {} accepted, {} completions, {} poller wake-ups, {} doorbells, {} invalid",
        h.accepted, h.completions, h.wakeups, h.doorbells, h.invalid
    );
    if FAILED.load(Ordering::Acquire) {
        return 1;
    }
    match shared.engine.shutdown(false) {
        Ok(()) => {
            println!("shut down");
            0
        }
        Err(e) => {
            println!("shutdown failed: {e}");
            1
        }
    }
}
