//! The load and run phases over RESP: one thread per client, each with
//! its own connection, making the choices `workload::run` makes.
//!
//! A client's share of a phase ([`Spec::share`]), its random stream
//! ([`Rng::for_thread`]), the kind of each operation
//! ([`Workload::choose`](crate::workload::Workload::choose)), its record
//! (the spec's chooser over [`Acked::available`]) and scan length are
//! drawn in the same order as the in-process driver draws them, and the
//! same [`Acked`] log of versions checks every value read. What differs:
//!
//! - `SET` does not say whether the key was new, so an update that created
//!   its record, or an insert of a key that existed, goes unnoticed here.
//! - Requests go in rounds of up to `--pipeline` operations: all are
//!   sent, then their replies read in order. A read-modify-write sends its
//!   `GET` in one round and its `SET` (once the `GET`'s reply has been
//!   checked) in a follow-up round; its latency spans both.
//! - A scan may meet records past the loaded ones that this bench has not
//!   written (inserted by an earlier bench on the same server): their
//!   entries are checked (well-formed, under their own key, in order) but
//!   their versions are unknown, so any is accepted; the table counts
//!   them.
//! - A lost connection (refused, reset, closed, timed out) stops every
//!   client after its current round: writes whose reply did not come are
//!   ended unacknowledged (they may or may not have been applied).
//!
//! Commands: load, update and insert `SET key value`; read `GET key`;
//! scan `DBOS.RANGE key user: LIMIT n` (`user:` sorts after every
//! workload key), which returns key1 value1 key2 value2 ...

use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Instant;
use std::vec::Vec;

use super::acks::{AckBuffer, AckFile};
use super::client::{ClientError, Connection, Reply};
use super::progress::Progress;
use super::report::{self, PhaseStats};
use super::{Options, Outcome, Phase};
use crate::workload::keys::{Chooser, Latest};
use crate::workload::{
    check_value, encode_value, key_bytes, Acked, OpKind, PendingWrite, Rng, Spec, KEY_LEN, MAX_SCAN,
};

/// The `TO` of every scan: sorts after `user` + any 20 digits.
pub const SCAN_END: &[u8] = b"user:";

/// Why the clients stopped early.
#[derive(Clone, Debug)]
pub enum Stop {
    /// The server went away.
    Lost(String),
    /// The bench cannot go on (a command the server does not know, a
    /// malformed reply).
    Fatal(String),
}

impl Stop {
    fn from_client(e: &ClientError) -> Stop {
        if e.lost() {
            Stop::Lost(e.to_string())
        } else {
            Stop::Fatal(e.to_string())
        }
    }
}

/// What the clients of a phase share.
struct Shared<'a> {
    opts: &'a Options,
    acked: &'a Acked,
    acks: Option<&'a AckFile>,
    progress: &'a Progress,
    stopping: AtomicBool,
    stop: Mutex<Option<Stop>>,
}

impl Shared<'_> {
    fn stop(&self, why: Stop) {
        if let Ok(mut s) = self.stop.lock() {
            s.get_or_insert(why);
        }
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// A request sent whose reply has not been read yet.
enum Pending {
    Read {
        record: u64,
        floor: u64,
    },
    /// A `SET`: a load, update or insert, or the write of a
    /// read-modify-write (`started`: when its `GET` was sent).
    Write {
        kind: OpKind,
        w: PendingWrite,
        started: Option<Instant>,
    },
    /// The `GET` of a read-modify-write.
    RmwRead {
        record: u64,
        floor: u64,
    },
    Scan {
        record: u64,
        len: usize,
        floor: u64,
    },
}

/// One client: its connection and what it counted.
struct Client<'a> {
    sh: &'a Shared<'a>,
    spec: &'a Spec,
    conn: Connection,
    stats: PhaseStats,
    acks: Option<AckBuffer<'a>>,
    key: Vec<u8>,
    value: Vec<u8>,
    expect: Vec<u8>,
    /// Requests queued on the connection for this round, in order.
    round: Vec<Pending>,
    /// Writes of read-modify-writes queued for the next round.
    follow: Vec<Pending>,
}

impl<'a> Client<'a> {
    fn set(&mut self, kind: OpKind, record: u64, started: Option<Instant>) -> Pending {
        let w = self.sh.acked.begin_write(record);
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        encode_value(record, w.version, self.spec.value_size, &mut self.value);
        self.conn.queue(&[b"SET", &self.key, &self.value]);
        Pending::Write { kind, w, started }
    }

    fn queue_load(&mut self, record: u64) {
        let p = self.set(OpKind::Insert, record, None);
        self.round.push(p);
    }

    fn queue_read(&mut self, record: u64, rmw: bool) {
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let floor = self.sh.acked.acked(record);
        self.conn.queue(&[b"GET", &self.key]);
        self.round.push(if rmw {
            Pending::RmwRead { record, floor }
        } else {
            Pending::Read { record, floor }
        });
    }

    fn queue_update(&mut self, record: u64) {
        let p = self.set(OpKind::Update, record, None);
        self.round.push(p);
    }

    fn queue_insert(&mut self) {
        let acked = self.sh.acked;
        match acked.claim_insert() {
            Some(record) => {
                let p = self.set(OpKind::Insert, record, None);
                self.round.push(p);
            }
            None => {
                self.stats.done(OpKind::Insert, 0);
                let at = acked.capacity();
                self.stats
                    .error(OpKind::Insert, at, &"insert capacity used up");
            }
        }
    }

    fn queue_scan(&mut self, record: u64, len: usize) {
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let floor = self.sh.acked.acked(record);
        let n = len.to_string();
        self.conn
            .queue(&[b"DBOS.RANGE", &self.key, SCAN_END, b"LIMIT", n.as_bytes()]);
        self.round.push(Pending::Scan { record, len, floor });
    }

    /// Sends the round's requests and reads their replies, then the
    /// follow-up round of read-modify-write `SET`s, if any. Returns the
    /// operations completed.
    fn run_round(&mut self) -> Result<u64, Stop> {
        let mut completed = 0;
        while !self.round.is_empty() {
            let sent = Instant::now();
            if let Err(e) = self.conn.flush() {
                self.abandon();
                return Err(Stop::from_client(&e));
            }
            let round = core::mem::take(&mut self.round);
            let mut rest = round.into_iter();
            while let Some(p) = rest.next() {
                let outcome = match self.conn.read_reply() {
                    Ok(reply) => self.complete(p, reply, sent),
                    Err(e) => {
                        self.abandon_one(p);
                        Err(Stop::from_client(&e))
                    }
                };
                match outcome {
                    Ok(n) => completed += n,
                    Err(stop) => {
                        self.round = rest.collect();
                        self.abandon();
                        return Err(stop);
                    }
                }
            }
            self.round = core::mem::take(&mut self.follow);
        }
        Ok(completed)
    }

    /// Ends the writes of a request whose reply will not come.
    fn abandon_one(&mut self, p: Pending) {
        if let Pending::Write { w, .. } = p {
            self.sh.acked.end_write(w, false);
        }
    }

    /// Ends every write queued and not answered.
    fn abandon(&mut self) {
        let round = core::mem::take(&mut self.round);
        let follow = core::mem::take(&mut self.follow);
        for p in round.into_iter().chain(follow) {
            self.abandon_one(p);
        }
    }

    /// Handles the reply to `p` (sent at `sent`); returns 1 if that
    /// completed an operation, 0 if the operation goes on (the `GET` of a
    /// read-modify-write).
    fn complete(&mut self, p: Pending, reply: Reply, sent: Instant) -> Result<u64, Stop> {
        let ns = |since: Instant| since.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        match p {
            Pending::Read { record, floor } => {
                self.stats.done(OpKind::Read, ns(sent));
                self.check_get(OpKind::Read, record, floor, &reply);
            }
            Pending::RmwRead { record, floor } => {
                let kind = OpKind::ReadModifyWrite;
                if matches!(reply, Reply::Bulk(_) | Reply::Nil) {
                    self.check_get(kind, record, floor, &reply);
                    let p = self.set(kind, record, Some(sent));
                    self.follow.push(p);
                    return Ok(0);
                }
                self.stats.done(kind, ns(sent));
                self.check_get(kind, record, floor, &reply);
            }
            Pending::Write { kind, w, started } => {
                self.stats.done(kind, ns(started.unwrap_or(sent)));
                let ok = matches!(&reply, Reply::Simple(s) if s == b"OK");
                let acked = self.sh.acked;
                acked.end_write(w, ok);
                if ok {
                    // Listed only if this version is a sound lower bound:
                    // this write raised it, or a later one did already.
                    if let Some(a) = &mut self.acks {
                        if acked.acked(w.record) >= w.version {
                            a.ack(w.record, w.version);
                        }
                    }
                } else {
                    self.unexpected(kind, w.record, "SET", &reply);
                }
            }
            Pending::Scan { record, len, floor } => {
                self.stats.done(OpKind::Scan, ns(sent));
                self.check_scan(record, len, floor, reply)?;
            }
        }
        Ok(1)
    }

    /// Counts a reply that is an error or of the wrong type.
    fn unexpected(&mut self, kind: OpKind, record: u64, command: &str, reply: &Reply) {
        let what = match reply {
            Reply::Error(e) => format!("{command}: error reply: {}", String::from_utf8_lossy(e)),
            r => format!("{command}: unexpected reply: {}", r.describe()),
        };
        self.stats.error(kind, record, &what);
    }

    /// Checks a `GET`'s reply for `record`, whose acknowledged version
    /// was `floor` when the `GET` was sent.
    fn check_get(&mut self, kind: OpKind, record: u64, floor: u64, reply: &Reply) {
        match reply {
            Reply::Bulk(v) => {
                let issued = self.sh.acked.issued(record);
                match check_value(v, self.spec.value_size) {
                    Ok((r, version)) if r == record && version >= floor && version <= issued => {}
                    Ok((r, version)) => self.stats.wrong(
                        kind,
                        record,
                        &format!(
                            "holds record {r} version {version} (acknowledged {floor}, \
                             issued {issued})"
                        ),
                    ),
                    Err(e) => self.stats.wrong(kind, record, &e),
                }
            }
            Reply::Nil => self.stats.missing(kind, record),
            r => self.unexpected(kind, record, "GET", r),
        }
    }

    /// Checks a scan's reply as the in-process driver does: every entry
    /// holds the record its key names, in a version issued, keys ascend
    /// from the start key, the first entry is the scanned record (it
    /// exists) in its acknowledged version or newer, at most `len`
    /// entries.
    fn check_scan(
        &mut self,
        record: u64,
        len: usize,
        floor: u64,
        reply: Reply,
    ) -> Result<(), Stop> {
        let kind = OpKind::Scan;
        let items = match reply {
            Reply::Array(items) => items,
            Reply::Error(e) => {
                let text = String::from_utf8_lossy(&e).into_owned();
                if text.to_ascii_lowercase().contains("unknown command") {
                    return Err(Stop::Fatal(unsupported(&text)));
                }
                self.stats
                    .error(kind, record, &format!("DBOS.RANGE: error reply: {text}"));
                return Ok(());
            }
            r => {
                self.unexpected(kind, record, "DBOS.RANGE", &r);
                return Ok(());
            }
        };
        if items.len() % 2 != 0 {
            self.stats.error(
                kind,
                record,
                &format!("DBOS.RANGE: {} elements, not key-value pairs", items.len()),
            );
            return Ok(());
        }
        let (ordered, size) = (self.spec.ordered_keys, self.spec.value_size);
        let acked = self.sh.acked;
        key_bytes(record, ordered, &mut self.key);
        let start = &self.key;
        let mut prev: &[u8] = &[];
        let mut first_found = false;
        let mut bad: Option<String> = None;
        for (i, pair) in items.chunks(2).enumerate() {
            let (Reply::Bulk(k), Reply::Bulk(v)) = (&pair[0], &pair[1]) else {
                bad.get_or_insert_with(|| {
                    format!(
                        "DBOS.RANGE: entry {i} is {} and {}",
                        pair[0].describe(),
                        pair[1].describe()
                    )
                });
                continue;
            };
            match check_value(v, size) {
                Ok((r, version)) => {
                    key_bytes(r, ordered, &mut self.expect);
                    let newest = if i == 0 && k == start {
                        first_found = true;
                        version >= floor
                    } else {
                        true
                    };
                    let issued = if r < acked.capacity() {
                        acked.issued(r)
                    } else {
                        0
                    };
                    // A record past the loaded ones that this bench has
                    // not written: left by an earlier bench (its
                    // versions are unknown here).
                    let foreign = issued == 0 && r >= acked.records();
                    self.stats.scanned_foreign += u64::from(foreign);
                    let good = *k == self.expect
                        && newest
                        && (foreign || version <= issued)
                        && k.as_slice() >= start.as_slice()
                        && (i == 0 || k.as_slice() > prev);
                    if !good {
                        bad.get_or_insert_with(|| {
                            format!(
                                "entry {i} (key {}) holds record {r} version {version}",
                                k.escape_ascii()
                            )
                        });
                    }
                }
                Err(e) => {
                    bad.get_or_insert_with(|| format!("entry {i}: {e}"));
                }
            }
            prev = k.as_slice();
        }
        let delivered = (items.len() / 2) as u64;
        self.stats.scanned += delivered;
        if delivered > len as u64 {
            bad.get_or_insert_with(|| format!("{delivered} entries for LIMIT {len}"));
        }
        if let Some(b) = bad {
            self.stats.wrong(kind, record, &b);
        } else if !first_found {
            self.stats.missing(kind, record);
        }
        Ok(())
    }
}

/// The message when the server does not know `DBOS.RANGE`.
fn unsupported(reply: &str) -> String {
    format!("workload E needs an ordered engine (DBOS.RANGE); the server replied: {reply}")
}

/// The chooser of one client: the spec's, or YCSB's latest for
/// `--distribution latest`.
fn chooser(opts: &Options) -> Chooser {
    if opts.latest {
        Chooser::Latest(Latest::new(opts.spec.records))
    } else {
        opts.spec.chooser()
    }
}

/// One client's share of the load: `SET` of its records, version 1.
fn load_client(c: &mut Client<'_>, client: usize) -> Result<(), Stop> {
    let depth = c.sh.opts.pipeline as u64;
    let share = c.spec.share(c.spec.records, client);
    let mut record = share.start;
    while record < share.end && !c.sh.stopping.load(Ordering::Relaxed) {
        let end = share.end.min(record + depth);
        for r in record..end {
            c.queue_load(r);
        }
        let n = c.run_round()?;
        c.sh.progress.add(n);
        record = end;
    }
    Ok(())
}

/// One client's share of the run phase.
fn run_client(c: &mut Client<'_>, client: usize) -> Result<(), Stop> {
    let spec = c.spec;
    let depth = c.sh.opts.pipeline;
    let acked = c.sh.acked;
    let share = spec.share(spec.operations, client);
    let mut rng = Rng::for_thread(spec.seed, client);
    let mut chooser = chooser(c.sh.opts);
    let mut left = share.end - share.start;
    while left > 0 && !c.sh.stopping.load(Ordering::Relaxed) {
        let n = left.min(depth as u64);
        for _ in 0..n {
            match spec.workload.choose(rng.below(100)) {
                OpKind::Read => c.queue_read(chooser.next(&mut rng, acked.available()), false),
                OpKind::Update => c.queue_update(chooser.next(&mut rng, acked.available())),
                OpKind::Insert => c.queue_insert(),
                OpKind::Scan => {
                    let record = chooser.next(&mut rng, acked.available());
                    c.queue_scan(record, rng.between(1, MAX_SCAN) as usize);
                }
                OpKind::ReadModifyWrite => {
                    c.queue_read(chooser.next(&mut rng, acked.available()), true);
                }
            }
        }
        c.run_round()?;
        c.sh.progress.add(n);
        left -= n;
    }
    Ok(())
}

/// One client's share of a phase.
type ClientBody = fn(&mut Client<'_>, usize) -> Result<(), Stop>;

/// Runs `body` on every client (one thread and connection each) with a
/// progress display; the merged stats and the phase's wall-clock time.
fn clients(sh: &Shared<'_>, name: &str, body: ClientBody) -> (PhaseStats, u64) {
    let opts = sh.opts;
    let start = Instant::now();
    let (parts, ns) = thread::scope(|s| {
        let shower = s.spawn(|| sh.progress.show(name));
        let workers: Vec<_> = (0..opts.spec.threads)
            .map(|client| {
                s.spawn(move || {
                    let conn = match Connection::connect(&opts.host, opts.port, opts.timeout) {
                        Ok(c) => c,
                        Err(e) => {
                            sh.stop(Stop::from_client(&e));
                            return PhaseStats::default();
                        }
                    };
                    let mut c = Client {
                        sh,
                        spec: &opts.spec,
                        conn,
                        stats: PhaseStats::default(),
                        acks: sh.acks.map(AckBuffer::new),
                        key: Vec::with_capacity(KEY_LEN),
                        value: Vec::with_capacity(opts.spec.value_size),
                        expect: Vec::with_capacity(KEY_LEN),
                        round: Vec::with_capacity(opts.pipeline),
                        follow: Vec::new(),
                    };
                    if let Err(stop) = body(&mut c, client) {
                        log::debug!("client {client} stopped: {stop:?}");
                        sh.stop(stop);
                    }
                    c.stats
                })
            })
            .collect();
        let parts: Vec<PhaseStats> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect();
        let ns = start.elapsed().as_nanos() as u64;
        sh.progress.stop();
        let _ = shower.join();
        (parts, ns)
    });
    (PhaseStats::merged(&parts), ns)
}

/// Checks that the server knows `DBOS.RANGE` (workload E needs it).
fn probe_range(opts: &Options) -> Result<(), Stop> {
    let mut c = Connection::connect(&opts.host, opts.port, opts.timeout)
        .map_err(|e| Stop::from_client(&e))?;
    match c.call(&[b"DBOS.RANGE", b"user", SCAN_END, b"LIMIT", b"1"]) {
        Ok(Reply::Array(_)) => Ok(()),
        Ok(Reply::Error(e)) => Err(Stop::Fatal(unsupported(&String::from_utf8_lossy(&e)))),
        Ok(r) => Err(Stop::Fatal(format!(
            "DBOS.RANGE: unexpected reply: {}",
            r.describe()
        ))),
        Err(e) => Err(Stop::from_client(&e)),
    }
}

/// The load and/or run phase as `opts` says, each printed as a table.
pub fn phases(opts: &Options) -> Outcome {
    let spec = &opts.spec;
    let distribution = if opts.latest {
        "latest"
    } else {
        spec.distribution_name()
    };
    if !opts.json {
        std::println!(
            "bench: {} at {}:{}, pipeline {}",
            report::describe(spec, distribution),
            opts.host,
            opts.port,
            opts.pipeline
        );
    }
    let runs = matches!(opts.phase, Phase::Run | Phase::Both);
    if runs && spec.workload == crate::workload::Workload::E {
        if let Err(stop) = probe_range(opts) {
            return stopped(stop);
        }
    }
    let mut acked = Acked::new(spec);
    if opts.phase == Phase::Run {
        // Loaded by an earlier bench: versions unknown.
        acked.history_unknown();
    }
    let acks = match &opts.acks {
        None => None,
        Some(path) => match AckFile::create(path, spec.value_size) {
            Ok(f) => Some(f),
            Err(e) => return Outcome::Failed(e),
        },
    };
    let mut problems = 0;
    let mut stop = None;
    let mut todo: Vec<(&str, u64, ClientBody)> = Vec::new();
    if matches!(opts.phase, Phase::Load | Phase::Both) {
        todo.push(("load", spec.records, load_client));
    }
    if runs {
        todo.push(("run", spec.operations, run_client));
    }
    for (name, total, body) in todo {
        if !opts.json {
            std::println!();
            std::println!("{name}:");
        }
        let progress = Progress::new(total);
        let sh = Shared {
            opts,
            acked: &acked,
            acks: acks.as_ref(),
            progress: &progress,
            stopping: AtomicBool::new(false),
            stop: Mutex::new(None),
        };
        let (stats, ns) = clients(&sh, name, body);
        if opts.json {
            std::println!("{}", report::json(name, &stats, ns));
        } else {
            std::print!("{}", report::table(&stats, ns));
        }
        problems += stats.problems();
        stop = sh.stop.into_inner().ok().flatten();
        if let Some(s) = &stop {
            let (Stop::Lost(why) | Stop::Fatal(why)) = s;
            let line = format!(
                "{name} stopped after {} of {total} operations: {why}",
                stats.total()
            );
            // With --json, stdout holds only the JSON lines.
            if opts.json {
                std::eprintln!("{line}");
            } else {
                std::println!("{line}");
            }
            break;
        }
    }
    if let (Some(f), Some(path)) = (&acks, &opts.acks) {
        match f.finish(&acked) {
            Ok(()) if opts.json => {
                std::eprintln!("acknowledged writes recorded in {}", path.display())
            }
            Ok(()) => std::println!("acknowledged writes recorded in {}", path.display()),
            Err(e) => return Outcome::Failed(format!("acknowledgement file: {e}")),
        }
    }
    match stop {
        Some(s) => stopped(s),
        None if problems > 0 => Outcome::Problems,
        None => Outcome::Passed,
    }
}

fn stopped(stop: Stop) -> Outcome {
    match stop {
        Stop::Lost(e) => Outcome::Lost(e),
        Stop::Fatal(e) => Outcome::Failed(e),
    }
}
