//! A key-value store guest: libdbos's write-ahead log and the engine's
//! pages in a buffer pool (`dbos-bufferpool`'s Tabby, on the guest's own
//! page tables, holding 16 of the 64 data pages) on the VM's NVMe disk, run
//! in ring 0.
//!
//! `dbos run --disk DISK --disk-size 64M kvstore -- [TXNS [fua|flush [truncate AT TO]]]`
//!
//! On a blank disk it formats the store; otherwise it recovers from the log
//! and prints what recovery did. A disk that is not blank but has no valid
//! control block is refused, never formatted. It then checks every
//! transaction committed by earlier runs (key 0 counts them; transaction
//! `t` wrote key `t` = `t * 7` and the counter, atomically) and prints
//! `found N committed transactions, M wrong`, then commits TXNS more
//! (default 16; with FUA log writes, or plain writes and a flush with
//! `flush`), printing `acked T` as soon as the commit of transaction T has
//! returned (it is durable), and exits 0 only if everything checked out.
//! The crash tests compare the `acked` lines of a run cut short with what
//! the next run finds.
//!
//! A log damaged in the middle of durable history is refused (nothing is
//! written) with the damage and the exact request that would accept the
//! loss: `truncate AT TO` cuts the log at LSN `AT` (the end of the last
//! commit before the damage) and discards it up to `TO`; the transactions
//! committed in between are lost. Any other request is refused too.
#![no_std]
#![no_main]

extern crate alloc;

use dbos_bufferpool::device::{run_all, DmaBytes};
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::pool::tabby::{Tabby, TabbyConfig};
use dbos_bufferpool::{
    BlockDevice, CommitMode, Config, Engine, Env, Error, Io, KvTable, Layout, Lsn, PageId,
    PoolError, RecoveryReport, TruncateRequest,
};
use libdbos::nvme;
use libdbos::println;

libdbos::entry!(main);

const LOG_BLOCKS: u64 = 256;
const DATA_PAGES: u64 = 64;
const QUEUE_DEPTH: u16 = 32;
/// Frames of the buffer pool: a quarter of the data pages, so the pool
/// evicts (and writes pages back under the write-ahead rule) as it runs.
const POOL_FRAMES: usize = 16;

type Device = dbos_bufferpool::guest::GuestDevice;
type Pool = Tabby<libdbos::GuestPlatform, Device>;

/// The engine's pool: `POOL_FRAMES` frames on a queue pair of its own.
fn pool(blocks: u64) -> impl FnOnce(PoolSetup) -> Result<Pool, PoolError> {
    move |setup| {
        Tabby::new(
            libdbos::platform(),
            alloc::vec![device(blocks)],
            TabbyConfig {
                evict_batch: 4,
                relax: env().relax,
                ..setup.tabby_config(POOL_FRAMES)
            },
        )
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
    }
}

/// Why the store could not be opened.
enum OpenError {
    Engine(Error),
    /// No valid control block, but the control blocks are not blank.
    Damaged,
}

/// Whether the control blocks (blocks 0 and 1) are all zeros: only such a
/// disk is formatted.
fn control_blocks_blank(blocks: u64) -> Result<bool, Error> {
    let mut dev = device(blocks);
    let buf = DmaBytes::new(dev.alloc(2)?);
    run_all(&mut dev, &[Io::read(0, 2, buf.io_buf().addr)], env().relax)?;
    Ok(buf.bytes().iter().all(|&b| b == 0))
}

fn open(
    blocks: u64,
    mode: CommitMode,
    truncate: Option<TruncateRequest>,
) -> Result<(Engine<Device, Pool>, Option<RecoveryReport>), OpenError> {
    let config = Config {
        mode,
        ..Config::new(env())
    };
    let opened = match truncate {
        None => Engine::open(device(blocks), device(blocks), config, pool(blocks)),
        Some(request) => Engine::open_truncating(
            device(blocks),
            device(blocks),
            config,
            request,
            pool(blocks),
        ),
    };
    match opened {
        Ok((engine, report)) => Ok((engine, Some(report))),
        Err(Error::NotFormatted) => {
            if !control_blocks_blank(blocks).map_err(OpenError::Engine)? {
                return Err(OpenError::Damaged);
            }
            println!("fresh disk: formatting");
            let layout = Layout {
                log_blocks: LOG_BLOCKS,
                data_pages: DATA_PAGES,
            };
            Engine::format(device(blocks), device(blocks), layout, config, pool(blocks))
                .map(|e| (e, None))
                .map_err(OpenError::Engine)
        }
        Err(e) => Err(OpenError::Engine(e)),
    }
}

fn main() -> u8 {
    let mut args = libdbos::args();
    let txns: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let mode_arg = args.next();
    let mode = match mode_arg {
        None | Some("fua") => CommitMode::Fua,
        Some("flush") => CommitMode::WriteFlush,
        Some(other) => {
            println!("unknown commit mode {other:?}: fua or flush");
            return 2;
        }
    };
    let truncate = match (args.next(), args.next(), args.next()) {
        (None, ..) => None,
        (Some("truncate"), Some(at), Some(to)) => match (at.parse(), to.parse()) {
            (Ok(at), Ok(to)) => Some(TruncateRequest {
                at: Lsn(at),
                discard_to: Lsn(to),
            }),
            _ => {
                println!("truncate takes two LSNs (decimal), AT and TO");
                return 2;
            }
        },
        _ => {
            println!("unknown arguments after the commit mode: truncate AT TO");
            return 2;
        }
    };
    let disk =
        nvme::info().expect("kvstore needs a disk: dbos run --disk PATH --disk-size 64M ...");
    let (engine, report) = match open(disk.blocks, mode, truncate) {
        Ok(opened) => opened,
        Err(OpenError::Engine(e)) => {
            println!("cannot open the store: {e}");
            if let Error::LogCorrupt(d) = e {
                println!(
                    "to accept the loss (the log from LSN {} to {} is discarded, with the \
                     transactions committed in it), run again with: -- {txns} {} truncate {} {}",
                    d.keep_end.0,
                    d.lost_end().0,
                    mode_arg.unwrap_or("fua"),
                    d.keep_end.0,
                    d.lost_end().0
                );
            }
            return 1;
        }
        Err(OpenError::Damaged) => {
            println!(
                "cannot open the store: no valid control block in blocks 0-1, but they are not \
                 blank: the store is damaged; refusing to format it"
            );
            return 1;
        }
    };
    if let Some(r) = report {
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
    let table = KvTable::new(&engine, PageId(0), DATA_PAGES);
    let done = table.get(0).expect("read the counter");
    let mut bad = 0;
    for t in 1..=done {
        if table.get(t) != Ok(t * 7) {
            bad += 1;
        }
    }
    println!("found {done} committed transactions, {bad} wrong");
    for t in done + 1..=done + txns {
        if let Err(e) = table.put(&[(t, t * 7), (0, t)]) {
            println!("commit {t} failed: {e}");
            return 1;
        }
        // `put` returned: transaction t is durable. Say so, so that a run
        // cut short shows what it had acknowledged.
        println!("acked {t}");
    }
    println!("committed {txns} more: {} in all", done + txns);
    if bad == 0 {
        0
    } else {
        1
    }
}
