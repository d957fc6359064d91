//! The shadow-doorbell protocol: a busy poller needs no real doorbell, a
//! parked one is rung exactly once per batch, and an idle poller uses no
//! CPU.
// The test hands the driver memory it allocates and owns.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{backing_file, direct_io_dir, inspected_device};
use dbos_nvme::host::testing::InspectBackend;
use dbos_nvme::host::{DmaMemory, Poller, PollerConfig, ProcessMemory, SyncBackend};
use dbos_nvme::{Command, CommandId, DataPtr, Lba, QueueMemory, QueuePair};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn real_doorbell_only_after_the_host_armed_it() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 16);
    let pm = Arc::new(ProcessMemory::new(1 << 20).unwrap());
    let dma = Arc::new(DmaMemory::from_process(pm.clone()).unwrap());
    let (backend, _inspector) = InspectBackend::new(SyncBackend::new(&file).unwrap());
    let mut poller = Poller::new(dma, backend, PollerConfig::default()).unwrap();
    let qmem = pm
        .alloc(dbos_nvme::QueueLayout::new(8).unwrap().size() as usize)
        .unwrap();
    let buf = pm.alloc(4096).unwrap();
    let rings = Cell::new(0u32);
    let mut qp = unsafe {
        QueuePair::new(
            QueueMemory {
                virt: qmem.ptr,
                dma: qmem.addr,
            },
            8,
            || rings.set(rings.get() + 1),
        )
    }
    .unwrap();
    poller.add_queue(qp.config()).unwrap();
    let read = Command::read(Lba(0), 1, DataPtr::Contiguous(buf.addr));

    // The host is polling: no doorbell.
    qp.submit(&read).unwrap();
    assert_eq!(rings.get(), 0);
    poller.run_until_idle();
    assert_eq!(qp.wait().unwrap().result(), Ok(()));

    // The host armed its event index (about to park): the next submission
    // rings, the one after it does not (the host is already woken).
    assert!(poller.arm_doorbells());
    qp.submit(&read).unwrap();
    assert_eq!(rings.get(), 1);
    qp.submit(&read).unwrap();
    assert_eq!(rings.get(), 1);
    // Arming with work waiting refuses to park and disarms.
    assert!(!poller.arm_doorbells());
    qp.submit(&read).unwrap();
    assert_eq!(rings.get(), 1);
    poller.run_until_idle();
    for _ in 0..3 {
        assert_eq!(qp.wait().unwrap().result(), Ok(()));
    }

    // A batch rings once.
    assert!(poller.arm_doorbells());
    let mut ids = [CommandId(0); 5];
    assert_eq!(qp.submit_batch(&[read; 5], &mut ids), Ok(5));
    assert_eq!(rings.get(), 2);
    poller.disarm_doorbells();
    poller.run_until_idle();
    for _ in 0..5 {
        assert_eq!(qp.wait().unwrap().result(), Ok(()));
    }
    // Reaping never rings (the completion ring was never full).
    assert_eq!(qp.stats().doorbells, 2);
    assert_eq!(qp.stats().completed, 9);
}

#[test]
fn busy_poller_needs_no_doorbell_and_idle_poller_uses_no_cpu() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 256);
    // Spin for 100 ms before parking: a steady request stream never sees a
    // parked poller, even on a loaded machine.
    let (dev, _inspector) = inspected_device(&file, 1 << 20, 100_000);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(4096).unwrap();
    for i in 0..500u64 {
        qp.execute(&Command::read(
            Lba(i % 256),
            1,
            DataPtr::Contiguous(buf.addr),
        ))
        .unwrap();
    }
    assert_eq!(
        qp.stats().doorbells,
        0,
        "steady state: no real doorbell per I/O"
    );

    // Let it park, then watch it for one idle second.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, s0) = (dev.poller().cpu_time().unwrap(), dev.poller().stats());
    assert!(s0.parks >= 1);
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, s1) = (dev.poller().cpu_time().unwrap(), dev.poller().stats());
    assert_eq!(
        (s1.parks, s1.wakeups),
        (s0.parks, s0.wakeups),
        "no wake-up while idle"
    );
    let used = cpu1 - cpu0;
    assert!(
        used < Duration::from_millis(5),
        "idle poller used {used:?} of CPU in 1 s"
    );

    // The next request rings the real doorbell once and wakes the poller.
    qp.execute(&Command::read(Lba(3), 1, DataPtr::Contiguous(buf.addr)))
        .unwrap();
    assert_eq!(qp.stats().doorbells, 1);
    assert_eq!(dev.poller().stats().wakeups, s1.wakeups + 1);
}
