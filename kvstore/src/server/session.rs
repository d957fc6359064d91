//! The server's state machine, sans-I/O: [`Shared`] is what every
//! connection shares (the engine, the key locks, the configuration, the
//! statistics), [`Session`] is one connection's state (its id and name, a
//! MULTI block being queued, its SCAN cursors). [`Session::process`] takes
//! the bytes a client sent and appends the replies: the process server
//! feeds it from sockets, the guest from a network queue, tests directly.
//!
//! A reply that announces a write must not leave before the write is
//! durable: `process` returns the highest [`Ticket`] of the writes it
//! applied, and the caller waits for it (for many connections at once:
//! group commit) before it sends the output.
//!
//! A caller serving many connections on one thread need not wait for the
//! disk either: [`Session::process_async`] stops before a request whose
//! point lookup needs a page that is not resident ([`Blocked::Read`]);
//! the caller reads the page in with I/O of its own (`KvEngine::begin_read`)
//! and serves other connections meanwhile, then calls it again.

use super::commands;
use super::engine::{KvEngine, PageId, Ticket, UnixMs};
use super::locks::KeyLocks;
use super::table::{self, NO_DATA, NO_MULTI, POINT_READ};
use crate::resp::{self, Limits, Reply};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Settings `CONFIG GET`/`SET` reach.
pub struct Config {
    /// Most clients connected at once (Redis's `maxclients`).
    pub maxclients: AtomicUsize,
    /// Longest bulk string in a request (`proto-max-bulk-len`).
    pub proto_max_bulk_len: AtomicUsize,
    /// Most bytes of unparsed requests buffered for one client
    /// (`client-query-buffer-limit`); over it the client is disconnected.
    pub client_query_buffer_limit: AtomicUsize,
    /// Seconds between background saves (`--save-every`; 0 = none).
    pub save_every: AtomicU64,
    /// The directory the data lives in (`dir`).
    pub dir: String,
    /// The TCP port listened on (`port`), 0 if none.
    pub port: AtomicU64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            maxclients: AtomicUsize::new(10_000),
            proto_max_bulk_len: AtomicUsize::new(Limits::default().max_bulk),
            client_query_buffer_limit: AtomicUsize::new(64 << 20),
            save_every: AtomicU64::new(0),
            dir: String::new(),
            port: AtomicU64::new(0),
        }
    }
}

impl Config {
    /// The parser's limits now.
    pub fn limits(&self) -> Limits {
        Limits {
            max_bulk: self.proto_max_bulk_len.load(Ordering::Relaxed),
            ..Limits::default()
        }
    }
}

/// Counters for `INFO` (Redis's names).
#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub connected_clients: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands_processed: AtomicU64,
    pub keyspace_hits: AtomicU64,
    pub keyspace_misses: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Keys deleted by active expiry (Redis's `expired_keys`).
    pub expired_keys: AtomicU64,
    /// Writes with an expiry applied so far, counted after they are
    /// applied: active expiry rests while a whole pass found no key with
    /// an expiry and this has not moved ([`super::expire::Sweeper`]).
    pub expiring_writes: AtomicU64,
    /// The mean remaining time to live, in milliseconds, of the keys
    /// with an expiry that active expiry's last whole pass found (0: none).
    pub avg_ttl_ms: AtomicU64,
    /// Group commits: waits for a ticket, and the commands they covered.
    pub durable_waits: AtomicU64,
    pub durable_clients: AtomicU64,
    /// Pages the event loops read without blocking (`process_async`'s
    /// lookups), and the times a loop completed its reads in flight to
    /// run a command the waiting way (a write, a scan, a page latched by
    /// another thread).
    pub async_reads: AtomicU64,
    pub waiting_runs: AtomicU64,
}

/// Appends `name`, value pairs to an `INFO` section.
pub type CountersFn = fn(&mut Vec<(&'static str, u64)>);

/// What every connection shares.
pub struct Shared<E: KvEngine> {
    pub engine: E,
    pub locks: KeyLocks,
    pub config: Config,
    pub stats: Stats,
    /// The wall clock, milliseconds since the Unix epoch.
    pub clock: fn() -> UnixMs,
    /// When the server started (for `uptime_in_seconds`).
    pub started: UnixMs,
    /// Counters of what serves the engine and the connections (the guest's
    /// VM exits, doorbells and network queue), added to `INFO dbos`.
    pub platform_counters: Option<CountersFn>,
    next_client: AtomicU64,
    shutdown: AtomicBool,
}

impl<E: KvEngine> Shared<E> {
    pub fn new(engine: E, config: Config, clock: fn() -> UnixMs) -> Shared<E> {
        Shared {
            engine,
            locks: KeyLocks::default(),
            config,
            stats: Stats::default(),
            clock,
            started: clock(),
            platform_counters: None,
            next_client: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
        }
    }

    /// A new connection's session (its id is the next client id).
    pub fn session(&self) -> Session {
        self.stats
            .connections_received
            .fetch_add(1, Ordering::Relaxed);
        Session {
            id: self.next_client.fetch_add(1, Ordering::Relaxed),
            ..Session::default()
        }
    }

    /// True once a `SHUTDOWN` succeeded: the server stops accepting,
    /// answers no more, and exits.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub(super) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// One connection's state.
#[derive(Default)]
pub struct Session {
    pub(super) id: u64,
    pub(super) name: Option<Vec<u8>>,
    /// The commands of a MULTI block being queued.
    pub(super) multi: Option<Vec<Vec<Vec<u8>>>>,
    /// A command of the block was refused while queuing: EXEC aborts.
    pub(super) multi_failed: bool,
    /// Bytes of the commands queued in the block.
    pub(super) multi_bytes: usize,
    /// Resume points of ordered SCANs: (cursor number, next key).
    pub(super) cursors: Vec<(u64, Vec<u8>)>,
    pub(super) next_cursor: u64,
    /// The client asked to close (QUIT) or broke the protocol.
    pub(super) closing: bool,
    /// Commands that read by point lookups do not wait for storage (set
    /// by [`Session::process_async`] for its call).
    pub(super) no_wait: bool,
    /// Why the command just run was abandoned (`no_wait`).
    pub(super) blocked: Option<Blocked>,
}

/// Why [`Session::process_async`] stopped before a request (left in the
/// input, unanswered: call again once it can run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Its lookup needs this page, not resident: read it in
    /// (`KvEngine::begin_read`).
    Read(PageId),
    /// It needs storage in a way that waits (a write, a scan, a value in
    /// overflow pages): run it when the caller may wait.
    Storage,
}

/// What [`Session::process`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input it used (whole requests).
    pub consumed: usize,
    /// Requests it answered.
    pub commands: u64,
    /// The durability to wait for before the output may be sent.
    pub ticket: Option<Ticket>,
    /// Close the connection once the output is sent.
    pub close: bool,
    /// [`Session::process_async`] stopped before the request at
    /// `consumed`, for this reason.
    pub blocked: Option<Blocked>,
}

/// Output past which `process` stops taking requests until the client has
/// read some: a client that never reads its replies holds at most this
/// much plus one reply.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;

impl Session {
    /// This connection's client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Answers the whole requests at the start of `input` (pipelined ones
    /// too), appending the replies to `out`, until the input holds only a
    /// partial request or `out` passes [`OUTPUT_HIGH_WATER`].
    pub fn process<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Progress {
        self.process_in(shared, input, out, None)
    }

    /// [`process`](Self::process) for a caller that serves other
    /// connections while the disk works: a command that reads by point
    /// lookups (GET, MGET, EXISTS, ...) and needs a page that is not
    /// resident is abandoned (nothing written, nothing replied) and
    /// processing stops before it with [`Blocked::Read`]. If not
    /// `may_wait` (the caller has reads of its own in flight, and waiting
    /// for anything else of the engine could wait for a thread that waits
    /// for one of those pages), processing also stops before any other
    /// command that uses the engine's data ([`Blocked::Storage`]); with
    /// `may_wait` those run as `process` runs them.
    pub fn process_async<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        input: &[u8],
        out: &mut Vec<u8>,
        may_wait: bool,
    ) -> Progress {
        self.no_wait = true;
        let p = self.process_in(shared, input, out, Some(may_wait));
        self.no_wait = false;
        p
    }

    /// `process`, or with `no_wait` (`Some(may_wait)`) `process_async`.
    fn process_in<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        input: &[u8],
        out: &mut Vec<u8>,
        no_wait: Option<bool>,
    ) -> Progress {
        let mut p = Progress::default();
        let limits = shared.config.limits();
        while !self.closing && out.len() < OUTPUT_HIGH_WATER && !shared.shutting_down() {
            let req = match resp::parse_request(&input[p.consumed..], &limits) {
                Ok(Some(req)) => req,
                Ok(None) => {
                    let buffered = input.len() - p.consumed;
                    if buffered
                        > shared
                            .config
                            .client_query_buffer_limit
                            .load(Ordering::Relaxed)
                    {
                        self.protocol_error(shared, out, "query buffer limit reached");
                    }
                    break;
                }
                Err(e) => {
                    self.protocol_error(shared, out, &alloc::format!("{e}"));
                    break;
                }
            };
            let args = req.args(&input[p.consumed..]);
            if args.is_empty() {
                p.consumed += req.consumed;
                continue;
            }
            if no_wait == Some(false) && !self.runs_without_waiting(&args) {
                p.blocked = Some(Blocked::Storage);
                break;
            }
            let t = self.dispatch(shared, &args, out);
            if let Some(why) = self.blocked.take() {
                p.blocked = Some(why);
                break;
            }
            p.consumed += req.consumed;
            p.commands += 1;
            if let Some(t) = t {
                p.ticket = p.ticket.max(Some(t));
            }
        }
        shared
            .stats
            .commands_processed
            .fetch_add(p.commands, Ordering::Relaxed);
        p.close = self.closing;
        p
    }

    /// Whether the command `args` runs without waiting for storage when
    /// its point lookups do not wait: it reads only by point lookups,
    /// touches no data, or is only queued (inside MULTI), or is not a
    /// command at all (an error reply).
    fn runs_without_waiting(&self, args: &[&[u8]]) -> bool {
        let Some(spec) = table::lookup(args[0]) else {
            return true;
        };
        spec.flags & (POINT_READ | NO_DATA) != 0
            || (self.multi.is_some() && spec.flags & NO_MULTI == 0)
            || !spec.arity_ok(args.len())
    }

    fn protocol_error<E: KvEngine>(&mut self, shared: &Shared<E>, out: &mut Vec<u8>, what: &str) {
        shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        log::info!("client {}: {what}; closing the connection", self.id);
        if what.starts_with("Protocol error") {
            Reply(out).error(&alloc::format!("ERR {what}"));
        }
        self.closing = true;
    }

    /// Runs (or queues, inside MULTI) one command.
    fn dispatch<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        args: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Option<Ticket> {
        let Some(spec) = table::lookup(args[0]) else {
            let mut text = alloc::format!(
                "ERR unknown command '{}', with args beginning with: ",
                printable(args[0], 128)
            );
            // As Redis: the arguments until the text passes 128 bytes.
            for a in &args[1..] {
                if text.len() > 128 + 60 {
                    break;
                }
                text.push_str(&alloc::format!("'{}' ", printable(a, 128)));
            }
            if self.multi.is_some() {
                self.multi_failed = true;
            }
            Reply(out).error(&text);
            return None;
        };
        if !spec.arity_ok(args.len()) {
            if self.multi.is_some() {
                self.multi_failed = true;
            }
            Reply(out).error(&alloc::format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            ));
            return None;
        }
        if let Some(block) = self.multi.as_mut().filter(|_| spec.flags & NO_MULTI == 0) {
            // A block is held in memory until EXEC: at most
            // `client-query-buffer-limit` bytes of it.
            let bytes: usize = args.iter().map(|a| a.len() + 16).sum();
            self.multi_bytes += bytes;
            let limit = shared
                .config
                .client_query_buffer_limit
                .load(Ordering::Relaxed);
            if self.multi_bytes > limit {
                self.multi_failed = true;
                Reply(out).error(&alloc::format!(
                    "ERR MULTI block over {limit} bytes (client-query-buffer-limit); EXEC will \
                     discard it"
                ));
                return None;
            }
            block.push(args.iter().map(|a| a.to_vec()).collect());
            Reply(out).simple("QUEUED");
            return None;
        }
        commands::run(self, shared, spec, args, out)
    }
}

/// At most `max` bytes of `arg` as text, as Redis quotes arguments in
/// errors.
pub(super) fn printable(arg: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in arg.iter().take(max) {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(char::from(b));
        } else {
            s.push_str(&alloc::format!("\\x{b:02x}"));
        }
    }
    s
}
