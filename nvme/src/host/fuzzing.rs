//! The bodies of the fuzz targets in `nvme/fuzz/` (not part of the API):
//! kept here so that `cargo test` replays every committed corpus file
//! (`tests/fuzz_corpus.rs`) and so that they reach crate-private code.
//!
//! Each body panics when an invariant the host promises about untrusted
//! input does not hold; garbage must only ever produce error statuses.

use super::backend::{Backend, IoKind, IoOp};
use super::command::decode;
use super::memory::{DmaMemory, DmaRegion, HostBuf, ProcessMemory};
use super::poller::{Poller, PollerConfig};
use super::wake::WakeFd;
use crate::queue::{QueuePairConfig, Sqe};
use crate::types::{BLOCK_SIZE, MAX_TRANSFER_BLOCKS, PAGE_SIZE};
use std::io;
use std::sync::Arc;
use std::vec::Vec;

/// Reads little-endian integers off the input, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn rest(&self) -> &[u8] {
        self.0
    }
}

fn sqe_from(input: &mut Input<'_>) -> Sqe {
    Sqe {
        cdw0: input.u32(),
        nsid: input.u32(),
        cdw2: input.u32(),
        cdw3: input.u32(),
        mptr: input.u64(),
        dptr: [input.u64(), input.u64()],
        cdw10: input.u32(),
        cdw11: input.u32(),
        cdw12: input.u32(),
        cdw13: input.u32(),
        cdw14: input.u32(),
        cdw15: input.u32(),
    }
}

/// Fills `mem` with `pattern` repeated (all zeros if it is empty).
fn fill(mem: &ProcessMemory, pattern: &[u8]) {
    let r = mem.region();
    if pattern.is_empty() {
        return;
    }
    for off in 0..r.len as usize {
        // SAFETY: inside the mapping, which `mem` owns and nothing else
        // borrows.
        unsafe { r.host.add(off).write(pattern[off % pattern.len()]) };
    }
}

/// Whether `buf` lies inside one region's host range and one fixed buffer
/// of it (the pieces are split at buffer boundaries).
fn inside(mem: &DmaMemory, buf: &HostBuf) -> bool {
    let (p, len) = (buf.ptr as u64, buf.len as u64);
    mem.regions()
        .any(|r| p >= r.host as u64 && p + len <= r.host as u64 + r.len)
        && mem
            .fixed_buffers()
            .iter()
            .any(|&(h, l)| p >= h as u64 && p + len <= h as u64 + l)
}

/// Device addresses of the `sqe` target's memory map: 12 pages at 0x10000
/// and 4 pages ending one page below the top of the address space.
const LOW: u64 = 0x10000;
const HIGH: u64 = 0u64.wrapping_sub(5 * PAGE_SIZE);

/// Decodes one submission entry (the first 64 bytes), against a namespace
/// whose capacity comes from the next 9 bytes, with served memory filled
/// with the rest (PRP lists come from there). A command the host accepts
/// must become operations that move exactly its blocks, in order, from
/// buffers inside the served memory, inside the namespace.
pub fn sqe(data: &[u8]) {
    let mut input = Input(data);
    let sqe = sqe_from(&mut input);
    // A namespace is a file: its bytes fit in 64 bits.
    let capacity = (input.u64() >> (input.u8() % 64)).min(u64::MAX / BLOCK_SIZE);
    // Not being able to map 64 KiB is the machine's failure, not the
    // input's: fail loudly rather than check nothing.
    let pm = ProcessMemory::new(16 * PAGE_SIZE as usize).expect("mapping the fuzz memory");
    fill(&pm, input.rest());
    let base = pm.region().host;
    let regions = [
        DmaRegion {
            addr: LOW,
            host: base,
            len: 12 * PAGE_SIZE,
        },
        DmaRegion {
            addr: HIGH,
            host: base.wrapping_add(12 * PAGE_SIZE as usize),
            len: 4 * PAGE_SIZE,
        },
    ];
    // SAFETY: both regions are parts of `pm`'s mapping, which outlives
    // `mem` (dropped at the end of this function, before `pm`).
    let mem = unsafe { DmaMemory::new(&regions) }.expect("a valid memory map");
    let (mut bufs, mut ops) = (Vec::new(), Vec::new());
    let Ok(kind) = decode(&sqe, &mem, capacity, &mut bufs, &mut ops) else {
        return;
    };
    if kind == IoKind::Flush {
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind, IoKind::Flush);
        return;
    }
    let blocks = u64::from(sqe.blocks());
    assert!(blocks <= u64::from(MAX_TRANSFER_BLOCKS), "{sqe:x?}");
    let slba = sqe.slba().0;
    assert!(slba + blocks <= capacity, "{sqe:x?} past {capacity}");
    assert!(!ops.is_empty());
    let mut offset = slba * BLOCK_SIZE;
    for op in &ops {
        assert_eq!(op.kind, kind);
        assert_eq!(op.offset, offset, "{sqe:x?}: operations out of order");
        assert!(op.buf.len > 0 && inside(&mem, &op.buf), "{sqe:x?}: {op:x?}");
        assert!((op.buf.ptr as u64).is_multiple_of(PAGE_SIZE), "{op:x?}");
        offset += u64::from(op.buf.len);
    }
    assert_eq!(
        offset,
        (slba + blocks) * BLOCK_SIZE,
        "{sqe:x?}: wrong length"
    );
}

/// A backend that completes every operation at once, successfully, without
/// touching its buffer.
#[derive(Default)]
struct NullBackend {
    done: Vec<(u64, i32)>,
}

impl Backend for NullBackend {
    fn capacity_blocks(&self) -> u64 {
        64
    }
    fn room(&self) -> usize {
        1024
    }
    fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        self.done.push((tag, op.buf.len as i32));
        true
    }
    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn reap<F: FnMut(u64, i32)>(&mut self, mut f: F) -> usize {
        let n = self.done.len();
        for (tag, res) in self.done.drain(..) {
            f(tag, res);
        }
        n
    }
    fn park(&mut self, _: &Arc<WakeFd>) -> io::Result<()> {
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// Registers a queue pair whose configuration comes from the input (each
/// address relative to the served region or, by a flag bit, absolute), in
/// a region filled with the rest of the input (ring entries, doorbells),
/// then lets the poller serve it for a few turns, changing the shadow
/// doorbells between turns. A registration the poller accepts must have
/// every area inside the served memory and no two areas overlapping; no
/// input may make the poller panic or touch memory outside the region.
pub fn queue(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let len = 32 * PAGE_SIZE;
    let pm = ProcessMemory::new(len as usize).expect("mapping the fuzz memory");
    let base = pm.region().addr;
    let mut addr = |i: u32| {
        let raw = input.u64();
        if flags & (1 << i) != 0 {
            raw
        } else {
            base.wrapping_add(raw % (2 * len))
        }
    };
    let mut config = QueuePairConfig {
        sq_addr: addr(0),
        cq_addr: addr(1),
        doorbell_addr: addr(2),
        event_idx_addr: addr(3),
        ..QueuePairConfig::default()
    };
    config.depth = input.u16();
    let turns = input.u8() % 4;
    let doorbells: Vec<[u32; 2]> = (0..turns).map(|_| [input.u32(), input.u32()]).collect();
    fill(&pm, input.rest());
    let pm = Arc::new(pm);
    let mem = Arc::new(DmaMemory::from_process(pm.clone()).expect("one region"));
    let mut poller = Poller::new(mem.clone(), NullBackend::default(), PollerConfig::default())
        .expect("starting the poller (an eventfd)");
    if poller.add_queue(config).is_err() {
        return;
    }
    let areas = config.areas();
    for (what, a, l, _) in areas {
        assert!(
            mem.host_ptr(crate::DmaAddr(a), l).is_some(),
            "{what} outside: {config:x?}"
        );
    }
    for (i, &(_, a, al, _)) in areas.iter().enumerate() {
        for &(_, b, bl, _) in &areas[i + 1..] {
            assert!(
                a + al <= b || b + bl <= a,
                "overlapping areas accepted: {config:x?}"
            );
        }
    }
    let words = mem
        .host_ptr(crate::DmaAddr(config.doorbell_addr), 8)
        .expect("checked above")
        .cast::<u32>();
    for [sq_tail, cq_head] in doorbells {
        // SAFETY: the doorbell area was checked to lie in the region and
        // is 8-byte aligned (validate_shape).
        unsafe {
            words.write_volatile(sq_tail);
            words.add(1).write_volatile(cq_head);
        }
        poller.turn();
    }
    poller.run_until_idle();
}
