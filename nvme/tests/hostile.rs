//! Hostile queue input: a queue full of malformed entries, out-of-range
//! doorbells, a driver that never consumes completions, and invalid queue
//! configurations. Each bad entry gets an error status and nothing else
//! happens: no I/O, no write outside the completion ring.

mod common;

use common::{backing_file, direct_io_dir, Rng};
use dbos_nvme::host::testing::InspectBackend;
use dbos_nvme::host::{
    DmaBuf, DmaMemory, Poller, PollerConfig, PollerError, ProcessMemory, SyncBackend,
};
use dbos_nvme::queue::{ConfigError, Opcode, QueueLayout, QueuePairConfig, EVENT_IDX_POLLING};
use dbos_nvme::{Command, CommandId, Cqe, DataPtr, DmaAddr, Lba, NvmeError, Sqe, Status, NSID};
use std::sync::Arc;

/// A queue pair's memory, written by hand like a hostile guest would.
struct RawQueue {
    mem: DmaBuf,
    layout: QueueLayout,
}

impl RawQueue {
    fn sqe(&self, i: usize, sqe: &Sqe) {
        // SAFETY: Sqe is 64 bytes of plain data.
        let bytes: [u8; 64] = unsafe { std::mem::transmute(*sqe) };
        assert!(self.mem.write(i * 64, &bytes));
    }
    fn word(&self, off: u64, value: u32) {
        assert!(self.mem.write(off as usize, &value.to_le_bytes()));
    }
    fn read_word(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(self.mem.read(off as usize, &mut b));
        u32::from_le_bytes(b)
    }
    fn sq_tail(&self, t: u32) {
        self.word(self.layout.doorbell_offset(), t);
    }
    fn cq_head(&self, h: u32) {
        self.word(self.layout.doorbell_offset() + 4, h);
    }
    fn cqe(&self, i: usize) -> Cqe {
        let mut b = [0u8; 16];
        assert!(self
            .mem
            .read(self.layout.cq_offset() as usize + i * 16, &mut b));
        let w = |k: usize| u32::from_le_bytes(b[k * 4..k * 4 + 4].try_into().unwrap());
        Cqe {
            dw0: w(0),
            dw1: w(1),
            dw2: w(2),
            dw3: w(3),
        }
    }
}

struct Setup {
    pm: Arc<ProcessMemory>,
    poller: Poller<InspectBackend<SyncBackend>>,
    inspector: Arc<dbos_nvme::host::testing::Inspector>,
    _dir: tempfile::TempDir,
    file_path: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    // Known file contents to compare against afterwards.
    std::fs::write(file.path(), common::pattern(0, 0, 64 * 4096)).unwrap();
    let pm = Arc::new(ProcessMemory::new(1 << 20).unwrap());
    let dma = Arc::new(DmaMemory::from_process(pm.clone()).unwrap());
    let (backend, inspector) = InspectBackend::new(SyncBackend::new(&file).unwrap());
    let poller = Poller::new(dma, backend, PollerConfig::default()).unwrap();
    let file_path = file.path().to_path_buf();
    Setup {
        pm,
        poller,
        inspector,
        _dir: dir,
        file_path,
    }
}

fn raw_queue(s: &mut Setup, depth: u16) -> RawQueue {
    let layout = QueueLayout::new(depth).unwrap();
    let mem = s.pm.alloc(layout.size() as usize).unwrap();
    s.poller.add_queue(layout.config(mem.addr.0)).unwrap();
    assert_eq!(
        (
            mem.read_word_at(layout.event_idx_offset()),
            mem.read_word_at(layout.event_idx_offset() + 4)
        ),
        (EVENT_IDX_POLLING, EVENT_IDX_POLLING)
    );
    RawQueue { mem, layout }
}

trait ReadWord {
    fn read_word_at(&self, off: u64) -> u32;
}

impl ReadWord for DmaBuf {
    fn read_word_at(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(self.read(off as usize, &mut b));
        u32::from_le_bytes(b)
    }
}

#[test]
fn a_queue_full_of_hostile_entries_gets_errors_and_nothing_else() {
    let mut s = setup();
    let q = raw_queue(&mut s, 64);
    let data = s.pm.alloc(8 * 4096).unwrap();
    let region = s.pm.region();
    let end = region.addr + region.len;

    // Crafted entries, each with the status it must get.
    let good_read = Command::read(Lba(0), 1, DataPtr::Contiguous(data.addr)).to_sqe(CommandId(0));
    let edit = |f: &dyn Fn(&mut Sqe)| {
        let mut e = good_read;
        f(&mut e);
        e
    };
    let mut crafted: Vec<(Sqe, NvmeError)> = vec![
        (
            edit(&|e| e.cdw0 = (e.cdw0 & !0xff) | 0x7f),
            NvmeError::InvalidOpcode,
        ),
        (
            edit(&|e| e.cdw0 = (e.cdw0 & !0xff) | 0x04),
            NvmeError::InvalidOpcode,
        ),
        (edit(&|e| e.nsid = 0), NvmeError::InvalidNamespace),
        (edit(&|e| e.nsid = 0xffff_ffff), NvmeError::InvalidNamespace),
        (edit(&|e| e.cdw0 |= 2 << 8), NvmeError::InvalidField),
        (edit(&|e| e.cdw0 |= 3 << 14), NvmeError::InvalidField),
        (edit(&|e| e.set_range(Lba(64), 1)), NvmeError::LbaOutOfRange),
        (edit(&|e| e.set_range(Lba(60), 5)), NvmeError::LbaOutOfRange),
        (
            edit(&|e| e.set_range(Lba(u64::MAX - 1), 4)),
            NvmeError::LbaOutOfRange,
        ),
        (
            edit(&|e| e.set_range(Lba(0), 65536)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_sgl_block(DmaAddr(0), 4096)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_sgl_block(DmaAddr(end), 4096)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_sgl_block(DmaAddr(end - 4096), 4096 * 2)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_sgl_block(data.addr.offset(1), 4096)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_sgl_block(data.addr, 4095)),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.dptr[1] = 4096 | 0x50 << 56),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_prp(DmaAddr(!0xfffu64), DmaAddr(0))),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| e.set_prp(DmaAddr(region.addr - 4096), DmaAddr(0))),
            NvmeError::InvalidField,
        ),
        (
            edit(&|e| {
                e.set_range(Lba(0), 2);
                e.set_prp(data.addr, DmaAddr(end));
            }),
            NvmeError::InvalidField,
        ),
        (
            // A PRP list outside memory.
            edit(&|e| {
                e.set_range(Lba(0), 4);
                e.set_prp(data.addr, DmaAddr(end));
            }),
            NvmeError::InvalidField,
        ),
        (
            // A PRP list whose entries (zeroes) are outside memory.
            edit(&|e| {
                e.set_range(Lba(0), 4);
                e.set_prp(data.addr, data.page(7));
            }),
            NvmeError::InvalidField,
        ),
        (
            // A PRP list running off its page.
            edit(&|e| {
                e.set_range(Lba(0), 4);
                e.set_prp(data.addr, data.page(7).offset(4096 - 8));
            }),
            NvmeError::InvalidField,
        ),
    ];
    let mut write = Sqe::new(Opcode::Write, CommandId(0), NSID);
    write.set_range(Lba(0), 1);
    write.set_sgl_block(DmaAddr(end), 4096);
    crafted.push((write, NvmeError::InvalidField));
    let mut flush = Sqe::new(Opcode::Flush, CommandId(0), 7);
    flush.dptr = [u64::MAX, u64::MAX];
    crafted.push((flush, NvmeError::InvalidNamespace));

    // Fill the rest of the 63 usable slots with random bytes.
    let mut rng = Rng(0xdead_beef_cafe);
    let mut entries: Vec<(Sqe, Option<NvmeError>)> =
        crafted.into_iter().map(|(e, st)| (e, Some(st))).collect();
    while entries.len() < 63 {
        let w: Vec<u64> = (0..8).map(|_| rng.next()).collect();
        // SAFETY: any 64 bytes are a valid Sqe.
        let sqe: Sqe = unsafe { std::mem::transmute::<[u64; 8], Sqe>(w.try_into().unwrap()) };
        entries.push((sqe, None));
    }
    // Distinct command ids, so that no entry is a command id conflict.
    for (i, (e, _)) in entries.iter_mut().enumerate() {
        e.set_cid(CommandId(1000 + i as u16));
        q.sqe(i, e);
    }
    let before = s.pm.region();
    let snapshot = |skip: (u64, u64)| -> Vec<u8> {
        // SAFETY: reads the whole region, which stays mapped.
        let all = unsafe { std::slice::from_raw_parts(before.host, before.len as usize) };
        let mut v = all.to_vec();
        v[skip.0 as usize..skip.1 as usize].fill(0);
        v
    };
    let q_off = q.mem.addr.0 - before.addr;
    // The completion ring and the doorbell page (whose SQ tail we write
    // below) may change; nothing else may.
    let cq_range = (q_off + q.layout.cq_offset(), q_off + q.layout.size());
    let mem_before = snapshot(cq_range);

    q.sq_tail(63);
    assert!(s.poller.turn());
    s.poller.run_until_idle();

    for (i, (e, want)) in entries.iter().enumerate() {
        let c = q.cqe(i);
        assert!(c.phase(), "entry {i}");
        assert_eq!(c.cid(), e.cid(), "entry {i}");
        assert_eq!(
            c.sq_head() as usize,
            i + 1,
            "entry {i}: posted as soon as it was taken"
        );
        match want {
            Some(want) => assert_eq!(c.status().error(), Some(*want), "entry {i}: {e:x?}"),
            None => assert!(
                !c.status().is_success(),
                "random entry {i} succeeded: {e:x?}"
            ),
        }
        assert!(c.status().flags().contains(dbos_nvme::StatusFlags::DNR));
    }
    assert_eq!(q.cqe(63), Cqe::default(), "only 63 completions were posted");
    assert_eq!(s.inspector.take(), [], "no operation reached the file");
    let mem_after = snapshot(cq_range);
    let first_diff = mem_after.iter().zip(&mem_before).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "nothing outside the completion ring changed"
    );
    assert_eq!(
        std::fs::read(&s.file_path).unwrap(),
        common::pattern(0, 0, 64 * 4096)
    );
    let st = s.poller.stats();
    assert_eq!((st.commands, st.errors, st.io_ops), (63, 63, 0));

    // The driver consumed the completions; a second pass wraps both rings.
    q.cq_head(63);
    let mut conflict = good_read;
    conflict.set_cid(CommandId(5));
    q.sqe(63, &conflict); // valid read, id 5
    q.sqe(0, &conflict); // same id while the first is outstanding
    q.sq_tail(1);
    assert!(s.poller.turn());
    s.poller.run_until_idle();
    // The conflict is answered at once (slot 63, phase 1); the read after
    // its I/O (slot 0 of the second pass, phase 0).
    assert_eq!((q.cqe(63).cid(), q.cqe(63).phase()), (CommandId(5), true));
    assert_eq!(
        q.cqe(63).status().error(),
        Some(NvmeError::CommandIdConflict)
    );
    assert_eq!(
        (q.cqe(0).cid(), q.cqe(0).phase(), q.cqe(0).status()),
        (CommandId(5), false, Status::SUCCESS)
    );
    assert_eq!(s.inspector.take().len(), 1);
}

#[test]
fn out_of_range_doorbells_and_a_full_completion_ring_stall_only_that_queue() {
    let mut s = setup();
    let q = raw_queue(&mut s, 4);
    let data = s.pm.alloc(4096).unwrap();
    let read =
        |cid| Command::read(Lba(1), 1, DataPtr::Contiguous(data.addr)).to_sqe(CommandId(cid));

    // A tail outside the ring is ignored (and counted once).
    q.sqe(0, &read(1));
    q.sq_tail(4);
    assert!(!s.poller.turn());
    q.sq_tail(u32::MAX);
    assert!(!s.poller.turn());
    assert_eq!(s.poller.stats().bad_doorbells, 1);
    assert_eq!(q.cqe(0), Cqe::default());

    // A CQ head outside the ring: nothing is taken.
    q.cq_head(9);
    q.sq_tail(1);
    assert!(!s.poller.turn());
    assert_eq!(q.cqe(0), Cqe::default());

    // A driver that never consumes: 3 completions fit (depth - 1), then the
    // poller stops taking entries instead of overwriting unconsumed ones.
    q.cq_head(0);
    q.sqe(1, &read(2));
    q.sqe(2, &read(3));
    q.sq_tail(3);
    s.poller.run_until_idle();
    assert_eq!(
        [q.cqe(0).cid(), q.cqe(1).cid(), q.cqe(2).cid()],
        [CommandId(1), CommandId(2), CommandId(3)]
    );
    q.sqe(3, &read(4));
    q.sqe(0, &read(5));
    q.sq_tail(1);
    assert!(!s.poller.turn());
    assert_eq!(q.cqe(3), Cqe::default());
    // Before parking, the poller asks for a doorbell on the CQ head.
    assert!(s.poller.arm_doorbells());
    assert_eq!(q.read_word(q.layout.event_idx_offset() + 4), 0);
    assert_eq!(q.read_word(q.layout.event_idx_offset()), 3);
    s.poller.disarm_doorbells();
    // Once the driver consumes, the two waiting entries complete (the
    // second wraps into slot 0 with phase 0).
    q.cq_head(3);
    s.poller.run_until_idle();
    assert_eq!((q.cqe(3).cid(), q.cqe(3).phase()), (CommandId(4), true));
    assert_eq!((q.cqe(0).cid(), q.cqe(0).phase()), (CommandId(5), false));
    assert_eq!(s.poller.stats().errors, 0);
}

#[test]
fn invalid_queue_configurations_are_refused() {
    let mut s = setup();
    let layout = QueueLayout::new(16).unwrap();
    let mem = s.pm.alloc(layout.size() as usize).unwrap();
    let good = layout.config(mem.addr.0);
    let region = s.pm.region();
    let end = region.addr + region.len;
    let try_add = |s: &mut Setup, f: &dyn Fn(&mut QueuePairConfig)| {
        let mut c = good;
        f(&mut c);
        match s.poller.add_queue(c) {
            Err(PollerError::Config(e)) => Err(e),
            Err(e) => panic!("unexpected {e}"),
            Ok(id) => Ok(id),
        }
    };
    assert_eq!(
        try_add(&mut s, &|c| c.depth = 1),
        Err(ConfigError::Depth(1))
    );
    assert_eq!(
        try_add(&mut s, &|c| c.depth = 5000),
        Err(ConfigError::Depth(5000))
    );
    assert_eq!(
        try_add(&mut s, &|c| c.sq_addr = end),
        Err(ConfigError::OutsideMemory {
            what: "submission ring",
            addr: end,
            len: 16 * 64
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.cq_addr += 64),
        Err(ConfigError::Misaligned {
            what: "completion ring",
            addr: good.cq_addr + 64,
            align: 4096
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.cq_addr = end),
        Err(ConfigError::OutsideMemory {
            what: "completion ring",
            addr: end,
            len: 16 * 16
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.doorbell_addr = end),
        Err(ConfigError::OutsideMemory {
            what: "doorbells",
            addr: end,
            len: 16
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.event_idx_addr = 0),
        Err(ConfigError::OutsideMemory {
            what: "event indexes",
            addr: 0,
            len: 8
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.doorbell_addr = c.cq_addr + 8),
        Err(ConfigError::Overlap {
            a: "completion ring",
            b: "doorbells"
        })
    );
    assert_eq!(
        try_add(&mut s, &|c| c.sq_addr = !0xfffu64),
        Err(ConfigError::OutsideMemory {
            what: "submission ring",
            addr: !0xfffu64,
            len: 16 * 64
        })
    );
    // Vectors below 32 are exceptions, 255 is spurious: never sent.
    for v in [1, 31, 255, 4096] {
        assert_eq!(
            try_add(&mut s, &|c| c.interrupt = v),
            Err(ConfigError::Interrupt(v))
        );
    }
    // A valid vector, but this poller was given no way to send it.
    assert_eq!(
        try_add(&mut s, &|c| c.interrupt = 40),
        Err(ConfigError::Interrupt(40))
    );
    assert_eq!(try_add(&mut s, &|_| {}).map(|id| id.0), Ok(0));
}
