//! The crash-test guest: a table of `u64` keys on the engine's pages (its
//! write-ahead log, its pages in `dbos-bufferpool`'s Tabby pool on the
//! guest's own page tables, holding 16 of the 64 data pages) on the VM's
//! NVMe disk, run in ring 0. Its transactions are simple enough that a
//! crash test can name every one it expects to find; the key-value
//! database is `kvstore`.
//!
//! ```text
//! dbos run [--vcpus N] --disk DISK --disk-size 64M kvarray -- [TXNS [fua|flush [truncate AT TO]]]
//! dbos run --disk DISK kvarray -- format --force
//! ```
//!
//! On a blank disk it formats the store; otherwise it recovers from the log
//! and prints what recovery did. A disk that is not blank but holds no
//! valid control block (a damaged store, or something else) is refused,
//! never formatted, unless asked for explicitly: `format --force` formats
//! the disk whatever it holds (its contents are lost) and exits.
//!
//! Transaction `t` writes key `t` and its mirror key `MIRROR - t`, both
//! `t * 7`, atomically. The store is checked first, every key of it: each
//! transaction's two keys both there with its value or both absent, the
//! keys no transaction writes absent; it prints `found N committed
//! transactions, M wrong` (M counts the keys that break this) and
//! `transactions found: [A-B,C-D]`, which ones, as ranges. It then
//! commits TXNS more transactions, numbered on from the highest found
//! (default 16; with FUA log writes, or plain writes and a flush with
//! `flush`), on every vCPU at once (`--vcpus N`: N committers, so commits
//! meet in group commit; committer `c` takes every N-th number), printing
//! `acked T` as soon as the commit of transaction T has returned (it is
//! durable), and exits 0 only if everything checked out. The crash tests
//! compare the `acked` lines of a run cut short with what the next run
//! finds. After a failed commit no committer acknowledges another: the
//! engine stops at its first failed write or flush.
//!
//! A log damaged in the middle of durable history is refused (nothing is
//! written) with the damage and the exact request that would accept the
//! loss: `truncate AT TO` cuts the log at LSN `AT` (the end of the last
//! commit before the damage) and discards it up to `TO`; the transactions
//! committed in between are lost. Any other request is refused too.
//!
//! Usage errors (a TXNS that is not a number, an unknown mode, extra
//! arguments, more transactions than the store holds) exit with status 2.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::kv::{SLOT, SLOTS_PER_PAGE};
use dbos_bufferpool::page::{PAGE_CONTENTS, PAGE_HEADER};
use dbos_bufferpool::pool::tabby::Tabby;
use dbos_bufferpool::{
    CommitMode, Config, Engine, Env, Error, KvTable, Layout, Lsn, PageId, PoolError,
    RecoveryReport, TruncateRequest,
};
use libdbos::nvme;
use libdbos::platform::Platform;
use libdbos::println;

libdbos::entry!(main);

const LOG_BLOCKS: u64 = 256;
const DATA_PAGES: u64 = 64;
const LAYOUT: Layout = Layout {
    log_blocks: LOG_BLOCKS,
    data_pages: DATA_PAGES,
};
const QUEUE_DEPTH: u16 = 32;
/// Frames of the buffer pool: a quarter of the data pages, so the pool
/// evicts (and writes pages back under the write-ahead rule) as it runs.
const POOL_FRAMES: usize = 16;
/// Keys of the table: every slot of every data page.
const KEYS: u64 = DATA_PAGES * SLOTS_PER_PAGE;
/// Transaction `t` writes keys `t` and `MIRROR - t`, for `t` in
/// `1..MIRROR / 2`; keys 0 and `MIRROR / 2` are never written.
const MIRROR: u64 = KEYS;
/// The highest transaction number the store holds (16255).
const MAX_TXN: u64 = MIRROR / 2 - 1;
const _: () = assert!(MAX_TXN == 16255);

/// Exit statuses.
const STATUS_USAGE: u8 = 2;

type Device = dbos_bufferpool::guest::GuestDevice;
type Pool = Tabby<libdbos::GuestPlatform, Device>;
type Store = Engine<Device, Pool>;

/// The engine's pool: `POOL_FRAMES` frames, a queue pair per vCPU.
fn pool(blocks: u64) -> impl FnOnce(PoolSetup) -> Result<Pool, PoolError> {
    move |setup| {
        let devices = (0..libdbos::platform().cpu_count())
            .map(|_| device(blocks))
            .collect();
        let mut cfg = setup.tabby_config(POOL_FRAMES);
        cfg.pool.evict_batch = 4;
        cfg.pool.relax = env().relax;
        Tabby::new(libdbos::platform(), devices, cfg)
    }
}

fn device(blocks: u64) -> Device {
    dbos_bufferpool::guest::device(QUEUE_DEPTH, blocks)
        .expect("an NVMe queue pair (run with --disk)")
}

fn env() -> Env {
    Env {
        relax: core::hint::spin_loop,
        // One VM exit per call; the engine reads the clock only to time
        // recovery and to make a format id.
        now_ns: libdbos::hypercall::clock_nanos,
        sleep: None,
    }
}

/// What the command line asks for.
enum Request {
    /// Commit `txns` more (after recovering, or formatting a blank disk).
    Run {
        txns: u64,
        mode: CommitMode,
        mode_arg: &'static str,
        truncate: Option<TruncateRequest>,
    },
    /// Format the disk whatever it holds.
    Format,
}

const USAGE: &str = "usage: kvarray -- [TXNS [fua|flush [truncate AT TO]]] | format --force";

fn parse(args: &[&'static str]) -> Result<Request, &'static str> {
    if args.first() == Some(&"format") {
        return match args {
            ["format", "--force"] => Ok(Request::Format),
            _ => Err("format discards the store: say `format --force`"),
        };
    }
    let txns = match args.first() {
        None => 16,
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| "TXNS must be a whole number of transactions (0 or more)")?,
    };
    if txns > MAX_TXN {
        return Err("TXNS is more transactions than the store holds (16255)");
    }
    let (mode, mode_arg) = match args.get(1) {
        None | Some(&"fua") => (CommitMode::Fua, "fua"),
        Some(&"flush") => (CommitMode::WriteFlush, "flush"),
        Some(_) => return Err("the commit mode is fua or flush"),
    };
    let truncate = match &args[args.len().min(2)..] {
        [] => None,
        ["truncate", at, to] => match (at.parse(), to.parse()) {
            (Ok(at), Ok(to)) => Some(TruncateRequest {
                at: Lsn(at),
                discard_to: Lsn(to),
            }),
            _ => return Err("truncate takes two LSNs (decimal), AT and TO"),
        },
        ["truncate", ..] => return Err("truncate takes two LSNs (decimal), AT and TO"),
        _ => return Err("unknown arguments after the commit mode: truncate AT TO"),
    };
    Ok(Request::Run {
        txns,
        mode,
        mode_arg,
        truncate,
    })
}

fn open(
    blocks: u64,
    mode: CommitMode,
    truncate: Option<TruncateRequest>,
) -> Result<(Store, Option<RecoveryReport>), Error> {
    let config = Config {
        mode,
        ..Config::new(env())
    };
    let (log, data) = (device(blocks), device(blocks));
    match truncate {
        // Formats only a disk that is blank wherever format would write
        // (and in its last block, where the backup control block goes).
        None => Engine::open_or_format(log, data, LAYOUT, config, pool(blocks)),
        Some(request) => Engine::open_truncating(log, data, config, request, pool(blocks))
            .map(|(e, r)| (e, Some(r))),
    }
}

/// The keys transaction `t` writes.
fn keys(t: u64) -> [u64; 2] {
    [t, MIRROR - t]
}

/// Checks every key of the store: returns the transactions found (the
/// numbers whose keys are both there) and how many keys are wrong.
fn check(engine: &Store) -> Result<(Vec<u64>, u64), Error> {
    let mut values = Vec::with_capacity(KEYS as usize);
    let mut page = [0u8; PAGE_CONTENTS];
    for p in 0..DATA_PAGES {
        engine.read(PageId(p), PAGE_HEADER, &mut page)?;
        values.extend(
            page.chunks_exact(SLOT)
                .map(|v| u64::from_le_bytes(v.try_into().unwrap())),
        );
    }
    let mut found = Vec::new();
    let mut wrong = 0;
    for t in 1..=MAX_TXN {
        let [a, b] = keys(t).map(|k| values[k as usize]);
        match (a, b) {
            (0, 0) => {}
            (a, b) if a == t * 7 && b == t * 7 => found.push(t),
            (a, b) => {
                println!("transaction {t}: keys {:?} hold {a} and {b}", keys(t));
                wrong += (a != t * 7) as u64 + (b != t * 7) as u64;
            }
        }
    }
    for k in [0, MIRROR / 2] {
        if values[k as usize] != 0 {
            println!(
                "key {k}, which no transaction writes, holds {}",
                values[k as usize]
            );
            wrong += 1;
        }
    }
    Ok((found, wrong))
}

fn main() -> u8 {
    let args: Vec<&'static str> = libdbos::args().collect();
    let request = match parse(&args) {
        Ok(r) => r,
        Err(e) => {
            println!("{e}\n{USAGE}");
            return STATUS_USAGE;
        }
    };
    let disk =
        nvme::info().expect("kvarray needs a disk: dbos run --disk PATH --disk-size 64M ...");
    let (txns, mode, mode_arg, truncate) = match request {
        Request::Format => {
            let config = Config::new(env());
            return match Engine::format(
                device(disk.blocks),
                device(disk.blocks),
                LAYOUT,
                config,
                pool(disk.blocks),
            ) {
                Ok(_) => {
                    println!(
                        "formatted: {LOG_BLOCKS} log blocks, {DATA_PAGES} data pages; the disk's \
                         earlier contents are gone"
                    );
                    0
                }
                Err(e) => {
                    println!("cannot format the disk: {e}");
                    1
                }
            };
        }
        Request::Run {
            txns,
            mode,
            mode_arg,
            truncate,
        } => (txns, mode, mode_arg, truncate),
    };
    let (engine, report) = match open(disk.blocks, mode, truncate) {
        Ok(opened) => opened,
        Err(e) => {
            println!("cannot open the store: {e}");
            match e {
                Error::LogCorrupt(d) => println!(
                    "to accept the loss (the log from LSN {} to {} is discarded, with the \
                     transactions committed in it: at least {} whose commits are intact past \
                     the damage), run again with: -- {txns} {mode_arg} truncate {} {}",
                    d.keep_end.0,
                    d.lost_end().0,
                    d.commits_beyond,
                    d.keep_end.0,
                    d.lost_end().0
                ),
                Error::NoControlBlock { .. } => println!(
                    "to discard whatever the disk holds and start a new store, run with: -- \
                     format --force"
                ),
                _ => {}
            }
            return 1;
        }
    };
    match &report {
        None => println!("fresh disk: formatted"),
        Some(r) => {
            if let Some(d) = r.truncated {
                println!(
                    "truncated: the log from LSN {} to {} was discarded",
                    d.keep_end.0,
                    d.lost_end().0
                );
            }
            println!(
                "recovered: {} transactions replayed, {} records, {} pages repaired",
                r.transactions,
                r.records,
                r.pages_repaired.len()
            );
        }
    }
    let (found, bad) = match check(&engine) {
        Ok(c) => c,
        Err(e) => {
            println!("cannot read the store: {e}");
            return 1;
        }
    };
    println!("found {} committed transactions, {bad} wrong", found.len());
    // Which ones, as ranges (with several committers a cut can leave gaps:
    // each committer's own numbers are a prefix).
    let mut ranges = alloc::string::String::new();
    let mut i = 0;
    while i < found.len() {
        let mut j = i;
        while j + 1 < found.len() && found[j + 1] == found[j] + 1 {
            j += 1;
        }
        let sep = if ranges.is_empty() { "" } else { "," };
        ranges.push_str(&alloc::format!("{sep}{}-{}", found[i], found[j]));
        i = j + 1;
    }
    println!("transactions found: [{ranges}]");
    let base = found.last().copied().unwrap_or(0);
    if txns > MAX_TXN - base {
        println!(
            "the store holds transactions up to {MAX_TXN}; {base} is the highest found, so at \
             most {} more fit\n{USAGE}",
            MAX_TXN - base
        );
        return STATUS_USAGE;
    }
    let committers = libdbos::platform().cpu_count() as u64;
    let failed = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let table = KvTable::new(&engine, PageId(0), DATA_PAGES);
    libdbos::platform().run_on_all(&|cpu| {
        let mut t = base + 1 + cpu as u64;
        while t <= base + txns && !failed.load(Ordering::Acquire) {
            let [a, b] = keys(t);
            if let Err(e) = table.put(&[(a, t * 7), (b, t * 7)]) {
                // No committer acknowledges anything after this: the
                // engine has stopped (a failed write or flush), or this
                // commit was refused.
                failed.store(true, Ordering::Release);
                println!("commit {t} failed: {e}");
                return;
            }
            // `put` returned: transaction t is durable. Say so, so that a
            // run cut short shows what it had acknowledged.
            println!("acked {t}");
            acked.fetch_add(1, Ordering::AcqRel);
            t += committers;
        }
    });
    if failed.load(Ordering::Acquire) {
        println!(
            "stopped after a failed commit: {} of {txns} acknowledged",
            acked.load(Ordering::Acquire)
        );
        return 1;
    }
    println!(
        "committed {txns} more: {} in all",
        found.len() as u64 + txns
    );
    // The disk's I/O from declared DMA memory (the pool's frames, the
    // log's buffers, the rings: libdbos::dma) and from anywhere else.
    let dma = libdbos::dma::stats();
    println!(
        "dma: {} I/Os with fixed buffers, {} with plain buffers; {} regions declared, {} refused",
        dma.host.fixed_ios, dma.host.plain_ios, dma.declared, dma.refused
    );
    if bad == 0 {
        0
    } else {
        1
    }
}
