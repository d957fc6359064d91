//! The bodies of the fuzz targets in `hypervisor/fuzz/` (cargo fuzz,
//! libFuzzer). They live here so that an ordinary test
//! (`tests/fuzz_corpus.rs`) replays the committed corpus
//! (`hypervisor/fuzz/corpus/<target>/`) through the same code. Each body
//! panics only on a bug, or when the machine cannot give it what it needs
//! (the guest RAM of the hypercall target): never silently skipped, so that
//! a replay always runs what it says. Each returns whether the input got
//! past its first check (the shape of the input) to the code under test,
//! which the corpus replay counts.

use crate::clock::Clock;
use crate::console::Console;
use crate::control::Control;
use crate::disk::DiskService;
use crate::elf::Image;
use crate::files::Files;
use crate::layout::{Layout, Range, MAX_MEMORY, PAGE};
use crate::memory::GuestRam;
use crate::services::Services;
use dbos_abi::{GuestPhysAddr, Hypercall, LOW_RAM_END};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Guest RAM of the hypercall target: 16 KiB at 0 and one page at 5 GiB.
const LOW: Range = Range {
    start: 0,
    end: 0x4000,
};
const HIGH: Range = Range {
    start: 5 << 30,
    end: (5 << 30) + 0x1000,
};

/// At most this many calls per input.
const MAX_CALLS: usize = 16;

/// A memfd standing for a granted host file: I/O goes to memory, and it is
/// gone when the input is done.
fn scratch_file() -> Option<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns
    // a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"dbos-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Some(unsafe { File::from_raw_fd(fd) })
}

/// The counters a fuzz target's [`Services`] report through `Stats`: no
/// exits counted, no KVM.
struct Counters {
    exits: AtomicU64,
    stats_calls: AtomicU64,
    kvm_stats: Result<Vec<crate::kvmstats::VcpuStats>, String>,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            exits: AtomicU64::new(0),
            stats_calls: AtomicU64::new(0),
            kvm_stats: Err("no KVM in the fuzz target".to_string()),
        }
    }

    /// The hypercall services over `ram` with these counters.
    fn services<'a>(
        &'a self,
        ram: &'a GuestRam,
        console: &'a Console,
        files: &'a Files,
        disk: Option<&'a crate::disk::Disk>,
    ) -> Services<'a> {
        Services {
            ram,
            console,
            control: Control {
                vmm_exits: &self.exits,
                stats_calls: &self.stats_calls,
                kvm_stats: &self.kvm_stats,
            },
            clock: Clock::new(Instant::now()),
            files,
            disk: DiskService { disk },
            net: crate::net::NetService { net: None },
        }
    }
}

/// The hypercall server against arbitrary guest memory and calls.
///
/// Input: a count byte, then per call 4 bytes (call number, vCPU and where
/// the argument block is: low RAM, high RAM, or near the top of the address
/// space; a 16-bit offset), then the contents of guest RAM (low, then high).
/// One host file named "f" is granted (a memfd); there is no disk.
/// Returns whether the calls were served (the input held the count byte
/// and the calls it announces).
pub fn hypercalls(data: &[u8]) -> bool {
    let Some((&count, rest)) = data.split_first() else {
        return false;
    };
    let calls = usize::from(count) % MAX_CALLS + 1;
    if rest.len() < calls * 4 {
        return false;
    }
    let (calls, contents) = rest.split_at(calls * 4);
    let ram = GuestRam::new(&[LOW, HIGH])
        .unwrap_or_else(|e| panic!("cannot allocate the target's 20 KiB of guest RAM: {e}"));
    let (low, high) = contents.split_at(contents.len().min(LOW.len() as usize));
    let high = &high[..high.len().min(HIGH.len() as usize)];
    ram.write(LOW.start, low)
        .expect("low RAM holds the contents");
    ram.write(HIGH.start, high)
        .expect("high RAM holds the contents");

    let console = Console::new(2, false, false);
    let files = Files::from_open(
        scratch_file()
            .map(|f| ("f".into(), f))
            .into_iter()
            .collect(),
    );
    let counters = Counters::new();
    let services = counters.services(&ram, &console, &files, None);
    for call in calls.chunks_exact(4) {
        let hypercall = Hypercall::ALL[usize::from(call[0]) % Hypercall::ALL.len()];
        let vcpu = u32::from(call[1] & 1);
        let offset = u64::from(u16::from_le_bytes([call[2], call[3]]));
        let block = match (call[1] >> 1) & 3 {
            0 => LOW.start + offset,
            1 => HIGH.start + offset,
            2 => HIGH.start.wrapping_sub(offset),
            _ => u64::MAX - offset,
        };
        counters
            .exits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Any result is fine (a bad block is an error, not a panic).
        let _ = services.handle(vcpu, hypercall, GuestPhysAddr(block));
    }
    console.flush();
    true
}

/// Guest RAM of the DMA-region target: 64 KiB at 0 and 64 KiB at 5 GiB.
const DMA_LOW: Range = Range {
    start: 0,
    end: 0x1_0000,
};
const DMA_HIGH: Range = Range {
    start: 5 << 30,
    end: (5 << 30) + 0x1_0000,
};

/// Bytes per call of the DMA-region target's input.
const DMA_CALL: usize = 8;

/// The status the host must give a declaration of `[addr, addr + len)`
/// when `declared` are the regions declared so far (`None`: either 0 or
/// `-ENOMEM`, which depends on this process's pinning limit).
fn expected_declare(declared: &[(u64, u64)], addr: u64, len: u64) -> Option<i64> {
    let err = |e: i32| Some(-i64::from(e));
    if len == 0 || !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return err(libc::EINVAL);
    }
    if len > dbos_abi::MAX_DMA_REGION {
        return err(libc::EINVAL);
    }
    let inside = [DMA_LOW, DMA_HIGH]
        .iter()
        .any(|r| addr >= r.start && addr.checked_add(len).is_some_and(|e| e <= r.end));
    if !inside {
        return err(libc::EFAULT);
    }
    if declared
        .iter()
        .any(|&(a, l)| a < addr + len && addr < a + l)
    {
        return err(libc::EEXIST);
    }
    if declared.len() as u64 >= dbos_abi::MAX_DMA_REGIONS {
        return err(libc::ENOSPC);
    }
    None
}

/// The DMA-region hypercalls (`DmaDeclare`, `DmaRelease`, `DmaStats`)
/// against a real disk (io_uring on a scratch file, whose poller registers
/// what is declared as fixed buffers), checked against a model.
///
/// Input: up to 32 calls of 8 bytes each: the call (low 2 bits: declare,
/// release, stats; bit 7: the argument block is placed outside guest RAM,
/// which must be refused as a bad block), the base of the region's address
/// (low RAM, its end, high RAM, its end, near 2^64) and a 16-bit offset
/// from it, and a 32-bit length. Every status must be the one the model of
/// the declared regions predicts (a declaration within every rule may be
/// refused only for the pinning limit, `-ENOMEM`), and `DmaStats` must
/// report the model's regions and bytes. Returns whether any call was made.
pub fn dma_regions(data: &[u8]) -> bool {
    use crate::disk::{Disk, DiskConfig};
    use dbos_abi::{DmaRegionArgs, DmaStatsArgs, GuestBuf};
    use std::sync::atomic::Ordering;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let calls: Vec<&[u8]> = data.chunks_exact(DMA_CALL).take(32).collect();
    if calls.is_empty() {
        return false;
    }
    let ram = std::sync::Arc::new(
        GuestRam::new(&[DMA_LOW, DMA_HIGH])
            .unwrap_or_else(|e| panic!("cannot allocate the target's guest RAM: {e}")),
    );
    let path = std::env::temp_dir().join(format!(
        "dbos-fuzz-dma-{}-{}.img",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let disk = Disk::start(&DiskConfig::new(&path, Some(1 << 20)), &ram, None)
        .unwrap_or_else(|e| panic!("cannot start the target's disk: {e}"));
    let console = Console::new(1, false, false);
    let files = Files::default();
    let counters = Counters::new();
    let services = counters.services(&ram, &console, &files, Some(&disk));
    const BLOCK: u64 = 0x100;
    let mut declared: Vec<(u64, u64)> = Vec::new();
    for call in calls {
        let base = match call[1] % 5 {
            0 => DMA_LOW.start,
            1 => DMA_LOW.end,
            2 => DMA_HIGH.start,
            3 => DMA_HIGH.end,
            _ => u64::MAX - 0xffff,
        };
        let addr = base.wrapping_add(u64::from(u16::from_le_bytes([call[2], call[3]])));
        let len = u64::from(u32::from_le_bytes([call[4], call[5], call[6], call[7]]));
        let hypercall = match call[0] & 3 {
            0 | 3 => Hypercall::DmaDeclare,
            1 => Hypercall::DmaRelease,
            _ => Hypercall::DmaStats,
        };
        if call[0] & 0x80 != 0 {
            // A block outside guest RAM: refused, nothing changes.
            let outside = GuestPhysAddr(DMA_LOW.end + BLOCK);
            assert!(services.handle(0, hypercall, outside).is_err());
            continue;
        }
        let args = DmaRegionArgs {
            region: GuestBuf {
                addr: GuestPhysAddr(addr),
                len,
            },
            status: 1,
        };
        ram.write_pod(BLOCK, &args).expect("the block is in RAM");
        services
            .handle(0, hypercall, GuestPhysAddr(BLOCK))
            .unwrap_or_else(|e| panic!("{hypercall:?} with a valid block stopped the guest: {e}"));
        match hypercall {
            Hypercall::DmaDeclare => {
                let status = ram.read_pod::<DmaRegionArgs>(BLOCK).unwrap().status;
                match expected_declare(&declared, addr, len) {
                    Some(expected) => assert_eq!(status, expected, "declare {addr:#x}+{len:#x}"),
                    None if status == 0 => declared.push((addr, len)),
                    None => assert_eq!(status, -i64::from(libc::ENOMEM)),
                }
            }
            Hypercall::DmaRelease => {
                let status = ram.read_pod::<DmaRegionArgs>(BLOCK).unwrap().status;
                match declared.iter().position(|&r| r == (addr, len)) {
                    Some(i) => {
                        assert_eq!(status, 0, "release {addr:#x}+{len:#x}");
                        declared.remove(i);
                    }
                    None => assert_eq!(status, -i64::from(libc::ENOENT)),
                }
            }
            _ => {
                let stats = ram.read_pod::<DmaStatsArgs>(BLOCK).unwrap();
                assert_eq!(stats.regions, declared.len() as u64);
                assert_eq!(stats.bytes, declared.iter().map(|r| r.1).sum::<u64>());
                assert_eq!((stats.fixed_ios, stats.plain_ios), (0, 0));
            }
        }
    }
    let stats = disk.stats();
    assert_eq!(stats.dma_regions, declared.len() as u64);
    assert_eq!(stats.dma_bytes, declared.iter().map(|r| r.1).sum::<u64>());
    disk.discard();
    true
}

/// The ELF loader and the layout on arbitrary bytes.
///
/// Input: one byte for the vCPU count, eight for the memory size, then the
/// image. A parsed image is checked against the memory (`Image::within`)
/// and laid out as `Vm::new` would. Returns whether the image reached the
/// parser (the input held the 9 bytes before it).
pub fn elf(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let vcpus = u32::from(data[0]) % dbos_abi::MAX_VCPUS + 1;
    let memory =
        (u64::from_le_bytes(data[1..9].try_into().expect("8 bytes")) % MAX_MEMORY) & !(PAGE - 1);
    let Ok(image) = Image::parse(&data[9..]) else {
        return true;
    };
    let _ = image.packed_size();
    if memory < Layout::minimum_memory(&image, vcpus) {
        return true;
    }
    let Ok(image) = image.within(memory.min(LOW_RAM_END)) else {
        return true;
    };
    if let Ok(layout) = Layout::plan(memory, &image, vcpus) {
        assert_eq!(layout.ram_bytes(), memory);
        let map = layout.memory_map();
        assert!(map.windows(2).all(|w| w[0].end() <= w[1].start));
        for s in &image.segments {
            assert!(layout.image.start <= s.phys && s.phys_end() <= layout.image.end);
        }
    }
    true
}

/// Guest RAM of the network target: 64 KiB at 0 and one page at 5 GiB.
const NET_LOW: Range = Range {
    start: 0,
    end: 0x1_0000,
};
const NET_HIGH: Range = Range {
    start: 5 << 30,
    end: (5 << 30) + 0x1000,
};
/// Where the network target's own queue pair lives (depth 64: 12 KiB
/// from 0x4000), and its argument block.
const NET_QUEUE: u64 = 0x4000;
const NET_DEPTH: u16 = 64;
const NET_BLOCK: u64 = 0x100;
/// Bytes of one entry of the network target's input.
const NET_ENTRY: usize = 24;

/// An address the network target's input picks: a base (low RAM, its
/// end, high RAM, its end, near 2^64) and a 16-bit offset.
fn net_addr(sel: u8, offset: u16) -> u64 {
    let base = match sel % 5 {
        0 => NET_LOW.start,
        1 => NET_LOW.end,
        2 => NET_HIGH.start,
        3 => NET_HIGH.end,
        _ => u64::MAX - 0xffff,
    };
    base.wrapping_add(u64::from(offset))
}

/// The errno the host must give the registration `c` (0: accepted), on
/// the network target's RAM with no queue pair registered.
fn expected_net_create(c: &dbos_abi::QueuePairConfig) -> i64 {
    match c.validate_shape() {
        Err(dbos_abi::nvme::ConfigError::OutsideMemory { .. }) => return -i64::from(libc::EFAULT),
        Err(_) => return -i64::from(libc::EINVAL),
        // A vector this network (no interrupt sender) does not send.
        Ok(()) if c.interrupt != 0 => return -i64::from(libc::EINVAL),
        Ok(()) => {}
    }
    let inside = |addr: u64, len: u64| {
        [NET_LOW, NET_HIGH]
            .iter()
            .any(|r| addr >= r.start && addr.checked_add(len).is_some_and(|e| e <= r.end))
    };
    if c.areas().iter().all(|&(_, a, l, _)| inside(a, l)) {
        0
    } else {
        -i64::from(libc::EFAULT)
    }
}

/// The network queue pair against a real network (a listener on
/// 127.0.0.1:0 and one client) and arbitrary entries.
///
/// Input: 16 bytes of a registration (`NetCreateQueue` through the
/// hypercall server: each of the four areas at an address chosen as in
/// [`net_addr`] by 3 bytes, then the depth and the vector), whose status
/// must be the one the model predicts (the queue is given back at once
/// if it was accepted); then up to 32 entries of [`NET_ENTRY`] bytes for
/// the target's own queue pair, after a first command that accepts the
/// client: an opcode (any byte mod 6), flags (kept only if bit 7 is
/// set), a command id, a connection (bit 0 of a selector byte: the
/// accepted client's id, otherwise the raw value), a buffer address
/// ([`net_addr`]) and length (shifted right by a byte mod 32), and two
/// bytes that, if odd, make a reserved field non-zero. The client sends
/// 64 bytes and keeps its socket open. Checked: every entry is taken;
/// every completion has a known status and the cid of an entry;
/// completions and invalid commands are counted exactly as posted; and
/// guest RAM changes only in the queue pair's rings and words, the
/// argument block and the buffers of receive entries. Returns whether
/// the input held a registration and an entry.
pub fn net_queue(data: &[u8]) -> bool {
    use crate::net::{NetConfig, NetService, Network};
    use dbos_abi::net::{NetCqe, NetOp, NetQueueArgs, NetSqe, NetStatus, QueueIdArgs};
    use dbos_abi::nvme::{QueueLayout, QueuePairConfig, SQ_TAIL_WORD};
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    if data.len() < 16 + NET_ENTRY {
        return false;
    }
    let (reg, rest) = data.split_at(16);
    let entries: Vec<&[u8]> = rest.chunks_exact(NET_ENTRY).take(32).collect();
    let ram = std::sync::Arc::new(
        GuestRam::new(&[NET_LOW, NET_HIGH])
            .unwrap_or_else(|e| panic!("cannot allocate the target's guest RAM: {e}")),
    );
    let mut config = NetConfig::new(vec!["127.0.0.1:0".parse().expect("an address")]);
    config.max_connections = 2;
    let net = Network::start(&config, &ram, None)
        .unwrap_or_else(|e| panic!("cannot start the target's network: {e}"));
    let console = Console::new(1, false, false);
    let files = Files::default();
    let counters = Counters::new();
    let mut services = counters.services(&ram, &console, &files, None);
    services.net = NetService { net: Some(&net) };
    let block = GuestPhysAddr(NET_BLOCK);

    // The registration from the input.
    let area = |i: usize| {
        net_addr(
            reg[3 * i],
            u16::from_le_bytes([reg[3 * i + 1], reg[3 * i + 2]]),
        )
    };
    let candidate = QueuePairConfig {
        sq_addr: area(0),
        cq_addr: area(1),
        doorbell_addr: area(2),
        event_idx_addr: area(3),
        depth: u16::from_le_bytes([reg[12], reg[13]]),
        interrupt: u16::from_le_bytes([reg[14], reg[15]]) % 300,
        _reserved: [0; 2],
    };
    ram.write_pod(
        NET_BLOCK,
        &NetQueueArgs {
            queue: candidate,
            status: 1,
        },
    )
    .expect("the block is in RAM");
    services
        .handle(0, Hypercall::NetCreateQueue, block)
        .expect("a valid block");
    let status = ram.read_pod::<NetQueueArgs>(NET_BLOCK).unwrap().status;
    assert_eq!(status, expected_net_create(&candidate), "{candidate:x?}");
    if status >= 0 {
        ram.write_pod(
            NET_BLOCK,
            &QueueIdArgs {
                queue: 0,
                status: 1,
            },
        )
        .unwrap();
        services
            .handle(0, Hypercall::NetDestroyQueue, block)
            .unwrap();
        assert_eq!(ram.read_pod::<QueueIdArgs>(NET_BLOCK).unwrap().status, 0);
    }

    // The target's own queue pair, and a client.
    let qc = QueueLayout::new(NET_DEPTH)
        .expect("a valid depth")
        .config(NET_QUEUE);
    // Memory the guest gives a new queue pair is zeroed by the guest.
    ram.write(
        NET_QUEUE,
        &vec![0; QueueLayout::new(NET_DEPTH).unwrap().size() as usize],
    )
    .unwrap();
    ram.write_pod(
        NET_BLOCK,
        &NetQueueArgs {
            queue: qc,
            status: 1,
        },
    )
    .unwrap();
    services
        .handle(0, Hypercall::NetCreateQueue, block)
        .unwrap();
    assert_eq!(ram.read_pod::<NetQueueArgs>(NET_BLOCK).unwrap().status, 0);
    let snapshot = || {
        let mut low = vec![0u8; NET_LOW.len() as usize];
        ram.read(NET_LOW.start, &mut low).unwrap();
        let mut high = vec![0u8; NET_HIGH.len() as usize];
        ram.read(NET_HIGH.start, &mut high).unwrap();
        (low, high)
    };
    let before = snapshot();
    // Guest RAM changed only where the host may write: the queue pair, the
    // argument block, and the buffers of receives (filled in below).
    let writable = std::cell::RefCell::new(Vec::<(u64, u64)>::new());
    let check_writes = |before: &(Vec<u8>, Vec<u8>), after: &(Vec<u8>, Vec<u8>)| {
        let writable = writable.borrow();
        let may_write = |addr: u64| {
            let queue = addr >= NET_QUEUE && addr < qc.doorbell_addr + 0x1000;
            let block = (NET_BLOCK..NET_BLOCK + 64).contains(&addr);
            let buffer = writable.iter().any(|&(a, l)| addr >= a && addr - a < l);
            queue || block || buffer
        };
        for (base, old, now) in [
            (NET_LOW.start, &before.0, &after.0),
            (NET_HIGH.start, &before.1, &after.1),
        ] {
            for (i, (a, b)) in old.iter().zip(now).enumerate() {
                let addr = base + i as u64;
                assert!(a == b || may_write(addr), "the host wrote {addr:#x}");
            }
        }
    };
    let mut client = std::net::TcpStream::connect(net.addrs()[0])
        .unwrap_or_else(|e| panic!("the target's client cannot connect: {e}"));
    let mut tail = 0u32;
    let submit = |tail: &mut u32, sqe: &NetSqe| {
        ram.write_pod(qc.sq_addr + u64::from(*tail) * 64, sqe)
            .unwrap();
        *tail += 1;
        ram.write(
            qc.doorbell_addr + 4 * SQ_TAIL_WORD as u64,
            &tail.to_le_bytes(),
        )
        .unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
        services
            .handle(0, Hypercall::NetDoorbell, GuestPhysAddr(0))
            .unwrap();
    };
    let read_cqe = |slot: u32| {
        ram.read_pod::<NetCqe>(qc.cq_addr + u64::from(slot) * 16)
            .unwrap()
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    // The first command accepts the client.
    let accept = NetSqe {
        opcode: NetOp::Accept as u8,
        cid: 0xffff,
        ..NetSqe::default()
    };
    submit(&mut tail, &accept);
    wait("the accept", &|| read_cqe(0).phase());
    let accepted = read_cqe(0);
    assert_eq!(accepted.status(), Some(NetStatus::Success));
    client.write_all(&[0x5a; 64]).unwrap();
    let mut cids = vec![accept.cid];
    for e in &entries {
        let conn = if e[4] & 1 != 0 {
            accepted.result
        } else {
            u32::from_le_bytes([e[5], e[6], e[7], e[8]])
        };
        let sqe = NetSqe {
            opcode: e[0] % 6,
            flags: if e[1] & 0x80 != 0 { e[1] } else { 0 },
            cid: u16::from_le_bytes([e[2], e[3]]),
            conn,
            addr: net_addr(e[9], u16::from_le_bytes([e[10], e[11]])),
            len: u32::from_le_bytes([e[12], e[13], e[14], e[15]]) >> (e[16] % 32),
            _reserved0: u32::from(e[17] & 1),
            _reserved: [0, 0, 0, 0, u64::from(e[18] & 1)],
        };
        if sqe.opcode == NetOp::Recv as u8 {
            writable.borrow_mut().push((sqe.addr, u64::from(sqe.len)));
        }
        cids.push(sqe.cid);
        submit(&mut tail, &sqe);
    }
    let n = entries.len() as u64 + 1;
    // A receive into the queue pair's own rings or doorbells is the
    // guest's to make: the client's bytes may then overwrite entries, the
    // SQ tail (a tail outside the ring is ignored: the queue stalls) or
    // completions. The host must survive it and write nowhere else; the
    // counts below assume intact rings, so they are checked only without
    // such a receive.
    let queue_areas = qc.areas();
    let into_queue = writable.borrow().iter().any(|&(a, l)| {
        queue_areas
            .iter()
            .any(|&(_, q, ql, _)| a < q.saturating_add(ql) && q < a.saturating_add(l))
    });
    if into_queue {
        // Until the poller stops taking entries (or has taken them all).
        let mut last = u64::MAX;
        let t0 = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = net.stats().commands;
            if now == n || now == last || t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            last = now;
        }
    } else {
        wait("every entry taken", &|| net.stats().commands == n);
    }
    std::thread::sleep(Duration::from_millis(1));
    let stats = net.stop().expect("running");
    let after = snapshot();
    check_writes(&before, &after);
    if into_queue {
        return true;
    }
    // Completions: the ring did not wrap (at most 33 of 64).
    let posted: Vec<NetCqe> = (0..u32::from(NET_DEPTH))
        .map(read_cqe)
        .take_while(NetCqe::phase)
        .collect();
    assert_eq!(posted.len() as u64, stats.completions);
    assert!(stats.completions <= n);
    let mut invalid = 0;
    for cqe in &posted {
        let status = cqe
            .status()
            .unwrap_or_else(|| panic!("unknown status in {cqe:?}"));
        assert!(cids.contains(&cqe.cid), "{cqe:?}");
        if !matches!(
            status,
            NetStatus::Success | NetStatus::Reset | NetStatus::Aborted
        ) {
            invalid += 1;
        }
    }
    assert_eq!(invalid, stats.invalid);
    assert_eq!(stats.accepted, 1);
    true
}
