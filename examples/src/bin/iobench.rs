//! A disk I/O load from the guest, for the DMA-region benchmark
//! (`dma-bench` in `benches/`): N random 4 KiB reads at a queue depth, with
//! the buffers in DMA memory declared to the host (`fixed`: served with
//! io_uring fixed buffers) or in the heap (`plain`: served with plain
//! reads, each pinning its page while it runs).
//!
//! `dbos run --disk PATH iobench -- fixed|plain N [DEPTH]` (depth 32 by
//! default). Prints the reads done and the host's fixed and plain counts.
#![no_std]
#![no_main]

extern crate alloc;

use libdbos::{dma, nvme, println};
use nvme_format::{Command, DataPtr, DmaAddr, Lba};

libdbos::entry!(main);

const BLOCK: usize = 4096;

fn main() -> u8 {
    let mut args = libdbos::args();
    let usage = "usage: iobench fixed|plain N [DEPTH]";
    let fixed = match args.next() {
        Some("fixed") => true,
        Some("plain") => false,
        _ => panic!("{usage}"),
    };
    let n: u64 = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let depth: usize = args.next().map_or(32, |s| s.parse().expect(usage));
    let disk = nvme::info().expect("iobench needs a disk (--disk)");
    // One queue slot stays free: the ring holds depth + 1 entries.
    let mut qp = nvme::queue_pair(depth as u16 + 1).expect("queue pair");
    let bytes = depth * BLOCK;
    let base: u64 = if fixed {
        dma::alloc(bytes).expect("DMA memory").phys
    } else {
        let layout = core::alloc::Layout::from_size_align(bytes, BLOCK).unwrap();
        // SAFETY: a non-zero size; never freed (the program ends).
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        nvme::dma(p).expect("heap memory has a device address").0
    };
    let before = dma::host_stats();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_lba = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % disk.blocks
    };
    // Slot of each command id, so a completed read's buffer is reused.
    let mut slot_of = alloc::vec![0usize; 65536];
    let mut free: alloc::vec::Vec<usize> = (0..depth).collect();
    let (mut submitted, mut done) = (0u64, 0u64);
    while done < n {
        while submitted < n {
            let Some(slot) = free.pop() else { break };
            let addr = DmaAddr(base + (slot * BLOCK) as u64);
            let cmd = Command::read(Lba(next_lba()), 1, DataPtr::Contiguous(addr));
            let cid = qp.submit(&cmd).expect("submit");
            slot_of[cid.0 as usize] = slot;
            submitted += 1;
        }
        match qp.poll() {
            Some(c) => {
                c.result().expect("read");
                free.push(slot_of[c.cid.0 as usize]);
                done += 1;
            }
            None => core::hint::spin_loop(),
        }
    }
    let after = dma::host_stats();
    println!(
        "iobench {}: {n} reads at depth {depth}; fixed {} plain {}",
        if fixed { "fixed" } else { "plain" },
        after.fixed_ios - before.fixed_ios,
        after.plain_ios - before.plain_ios
    );
    0
}
