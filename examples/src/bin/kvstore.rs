//! A key-value store guest: libdbos's write-ahead log and page store
//! (`dbos-bufferpool`) on the VM's NVMe disk, run in ring 0.
//!
//! `dbos run --disk DISK --disk-size 64M kvstore -- [TXNS]`
//!
//! On a fresh disk it formats the store; otherwise it recovers from the log
//! and prints what recovery did. It then checks every transaction committed
//! by earlier runs (key 0 counts them; transaction `t` wrote key `t` = `t * 7`
//! and the counter, atomically), commits TXNS more (default 16) and exits 0
//! only if everything checked out.
#![no_std]
#![no_main]

extern crate alloc;

use dbos_bufferpool::{
    Config, Engine, Env, Error, IoBuf, KvTable, Layout, NvmeDevice, PageId, RecoveryReport,
};
use libdbos::nvme::{self, dma, GuestQueuePair};
use libdbos::println;

libdbos::entry!(main);

const LOG_BLOCKS: u64 = 256;
const DATA_PAGES: u64 = 64;
const QUEUE_DEPTH: u16 = 32;

/// DMA buffers from the heap: 4 KiB aligned and physically contiguous (the
/// heap lives in the direct map). Never freed, as the device contract says.
struct HeapDma;

// SAFETY: every buffer is fresh heap memory of the requested size, 4 KiB
// aligned, physically contiguous, owned by nobody else, and its `addr` is its
// guest-physical address, which is what the host's poller expects.
unsafe impl dbos_bufferpool::DmaAllocator for HeapDma {
    fn alloc(&mut self, bytes: usize) -> Option<IoBuf> {
        let bytes = bytes.max(1).next_multiple_of(4096);
        let layout = core::alloc::Layout::from_size_align(bytes, 4096).ok()?;
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        Some(IoBuf {
            ptr,
            addr: dma(ptr)?,
            blocks: bytes / 4096,
        })
    }
}

type Device = NvmeDevice<GuestQueuePair, HeapDma>;

fn device(blocks: u64) -> Device {
    let qp = nvme::queue_pair(QUEUE_DEPTH).expect("an NVMe queue pair (run with --disk)");
    NvmeDevice::new(qp, HeapDma, blocks)
}

fn env() -> Env {
    Env {
        relax: core::hint::spin_loop,
        // One VM exit per call; the engine reads the clock only to time
        // recovery and to make a format id.
        now_ns: libdbos::hypercall::clock_nanos,
    }
}

fn open(blocks: u64) -> Result<(Engine<Device>, Option<RecoveryReport>), Error> {
    let config = Config::new(env());
    match Engine::open(device(blocks), device(blocks), config) {
        Ok((engine, report)) => Ok((engine, Some(report))),
        Err(Error::NotFormatted) => {
            println!("fresh disk: formatting");
            let layout = Layout {
                log_blocks: LOG_BLOCKS,
                data_pages: DATA_PAGES,
            };
            Engine::format(device(blocks), device(blocks), layout, Config::new(env()))
                .map(|e| (e, None))
        }
        Err(e) => Err(e),
    }
}

fn main() -> u8 {
    let txns: u64 = libdbos::args()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let disk =
        nvme::info().expect("kvstore needs a disk: dbos run --disk PATH --disk-size 64M ...");
    let (engine, report) = match open(disk.blocks) {
        Ok(opened) => opened,
        Err(e) => {
            println!("cannot open the store: {e}");
            return 1;
        }
    };
    if let Some(r) = report {
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
        // `put` returned: transaction t is durable. Say so now and then, so
        // that a run cut short shows what it had acknowledged.
        if t % 8 == 0 {
            println!("durable through {t}");
        }
    }
    println!("committed {txns} more: {} in all", done + txns);
    if bad == 0 {
        0
    } else {
        1
    }
}
