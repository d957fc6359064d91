//! Data round trips through every command and data-pointer form, many
//! outstanding commands, out-of-order completions, phase wrap-around, and
//! several queue pairs on several threads, all in process mode.

mod common;

use common::{backing_file, direct_io_dir, inspected_device, pattern, Rng};
use dbos_nvme::driver::prp_list;
use dbos_nvme::host::testing::Recorded;
use dbos_nvme::host::{Device, DeviceError, IoKind, PollerConfig, SyncBackend};
use dbos_nvme::{
    Command, CommandId, Completion, DataPtr, DmaAddr, DriverError, Lba, NvmeError, BLOCK_SIZE,
};
use std::collections::HashMap;
use std::time::Duration;

const B: usize = BLOCK_SIZE as usize;

fn rec(kind: IoKind, lba: u64, blocks: u32) -> Recorded {
    Recorded {
        kind,
        offset: lba * BLOCK_SIZE,
        len: blocks * BLOCK_SIZE as u32,
        failed_with: None,
    }
}

#[test]
fn every_command_and_data_pointer_form_round_trips() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 256);
    let (dev, inspector) = inspected_device(&file, 4 << 20, 200);
    let mut qp = dev.queue_pair(16).unwrap();
    let w = IoKind::Write { fua: false };

    // Contiguous (SGL data block) write of 3 blocks at LBA 10.
    let a = dev.alloc(3 * B).unwrap();
    a.write(0, &pattern(10, 1, 3 * B));
    qp.execute(&Command::write(Lba(10), 3, DataPtr::Contiguous(a.addr)))
        .unwrap();
    // FUA write of one block through PRP1 at LBA 20.
    let b = dev.alloc(B).unwrap();
    b.write(0, &pattern(20, 1, B));
    qp.execute(&Command::write_fua(
        Lba(20),
        1,
        DataPtr::Prp {
            prp1: b.addr,
            prp2: DmaAddr(0),
        },
    ))
    .unwrap();
    // PRP1 + PRP2 (two non-adjacent pages) at LBA 30.
    let c = dev.alloc(3 * B).unwrap();
    let data30 = pattern(30, 1, 2 * B);
    c.write(2 * B, &data30[..B]);
    c.write(0, &data30[B..]);
    qp.execute(&Command::write(
        Lba(30),
        2,
        DataPtr::Prp {
            prp1: c.page(2),
            prp2: c.page(0),
        },
    ))
    .unwrap();
    // A PRP list of 5 scattered pages at LBA 40.
    let pages = dev.alloc(8 * B).unwrap();
    let order = [5usize, 6, 1, 7, 3];
    let data40 = pattern(40, 1, 5 * B);
    for (i, &p) in order.iter().enumerate() {
        pages.write(p * B, &data40[i * B..(i + 1) * B]);
    }
    let list_buf = dev.alloc(B).unwrap();
    let mut list = [0u64; 512];
    let page_addrs: Vec<DmaAddr> = order.iter().map(|&p| pages.page(p)).collect();
    let dptr = prp_list(&page_addrs, &mut list, list_buf.addr).unwrap();
    let bytes: Vec<u8> = list.iter().flat_map(|e| e.to_le_bytes()).collect();
    list_buf.write(0, &bytes);
    qp.execute(&Command::write(Lba(40), 5, dptr)).unwrap();
    qp.execute(&Command::flush()).unwrap();

    assert_eq!(
        inspector.take(),
        [
            rec(w, 10, 3),
            rec(IoKind::Write { fua: true }, 20, 1),
            rec(w, 30, 1),
            rec(w, 31, 1),
            // Pages 5 and 6 are adjacent: one operation.
            rec(w, 40, 2),
            rec(w, 42, 1),
            rec(w, 43, 1),
            rec(w, 44, 1),
            Recorded {
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                failed_with: None
            },
        ]
    );

    // Read everything back with other pointer forms.
    let r = dev.alloc(8 * B).unwrap();
    r.fill(0);
    // For three pages PRP2 is a list pointer: here it points at a zeroed
    // page, whose entries (address 0) are outside memory.
    assert_eq!(
        qp.execute(&Command::read(
            Lba(10),
            3,
            DataPtr::Prp {
                prp1: r.page(0),
                prp2: r.page(1)
            }
        )),
        Err(DriverError::Device(NvmeError::InvalidField))
    );
    r.fill(0);
    let mut list2 = [0u64; 512];
    let rp: Vec<DmaAddr> = (0..3).map(|i| r.page(i)).collect();
    let list2_buf = dev.alloc(B).unwrap();
    let dptr = prp_list(&rp, &mut list2, list2_buf.addr).unwrap();
    list2_buf.write(
        0,
        &list2
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    qp.execute(&Command::read(Lba(10), 3, dptr)).unwrap();
    assert_eq!(r.to_vec()[..3 * B], pattern(10, 1, 3 * B)[..]);
    qp.execute(&Command::read(Lba(20), 1, DataPtr::Contiguous(r.addr)))
        .unwrap();
    assert_eq!(r.to_vec()[..B], pattern(20, 1, B)[..]);
    qp.execute(&Command::read(Lba(30), 2, DataPtr::Contiguous(r.addr)))
        .unwrap();
    assert_eq!(r.to_vec()[..2 * B], data30[..]);
    qp.execute(&Command::read(Lba(40), 5, DataPtr::Contiguous(r.addr)))
        .unwrap();
    assert_eq!(r.to_vec()[..5 * B], data40[..]);

    // The bytes are in the file where the LBAs say.
    let on_disk = std::fs::read(file.path()).unwrap();
    assert_eq!(on_disk.len(), 256 * B);
    assert_eq!(on_disk[10 * B..13 * B], pattern(10, 1, 3 * B)[..]);
    assert_eq!(on_disk[20 * B..21 * B], pattern(20, 1, B)[..]);
    assert_eq!(on_disk[30 * B..32 * B], data30[..]);
    assert_eq!(on_disk[40 * B..45 * B], data40[..]);
}

#[test]
fn many_outstanding_commands_complete_exactly_once() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 4096);
    let (dev, _inspector) = inspected_device(&file, 8 << 20, 200);
    let mut qp = dev.queue_pair(64).unwrap();
    let n = qp.free_slots();
    assert_eq!(n, 63);
    let bufs = dev.alloc(n * B).unwrap();
    let mut rng = Rng(0x1234_5678);
    for round in 1..=4u64 {
        // 63 distinct LBAs.
        let mut lbas: Vec<u64> = Vec::new();
        while lbas.len() < n {
            let l = rng.next() % 4096;
            if !lbas.contains(&l) {
                lbas.push(l);
            }
        }
        for (i, &l) in lbas.iter().enumerate() {
            bufs.write(i * B, &pattern(l, round, B));
        }
        let cmds: Vec<Command> = lbas
            .iter()
            .enumerate()
            .map(|(i, &l)| Command::write(Lba(l), 1, DataPtr::Contiguous(bufs.page(i))))
            .collect();
        let mut ids = vec![CommandId(0); n];
        assert_eq!(qp.submit_batch(&cmds, &mut ids), Ok(n));
        assert_eq!(qp.in_flight(), n);
        assert_eq!(qp.submit(&Command::flush()), Err(DriverError::QueueFull));
        let done = reap_all(&mut qp, n);
        let mut seen: Vec<u16> = done.iter().map(|c| c.cid.0).collect();
        seen.sort_unstable();
        let mut want: Vec<u16> = ids.iter().map(|c| c.0).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert!(done.iter().all(|c| c.result().is_ok()));

        bufs.fill(0);
        let cmds: Vec<Command> = lbas
            .iter()
            .enumerate()
            .map(|(i, &l)| Command::read(Lba(l), 1, DataPtr::Contiguous(bufs.page(i))))
            .collect();
        assert_eq!(qp.submit_batch(&cmds, &mut ids), Ok(n));
        let done = reap_all(&mut qp, n);
        assert_eq!(done.len(), n);
        assert!(done.iter().all(|c| c.result().is_ok()));
        let all = bufs.to_vec();
        for (i, &l) in lbas.iter().enumerate() {
            assert_eq!(
                all[i * B..(i + 1) * B],
                pattern(l, round, B)[..],
                "round {round} lba {l}"
            );
        }
    }
    assert_eq!(qp.stats().completed, 8 * 63);
    assert_eq!(qp.stats().stray_completions, 0);
}

fn reap_all<D: dbos_nvme::Doorbell>(qp: &mut dbos_nvme::QueuePair<D>, n: usize) -> Vec<Completion> {
    let mut out = vec![Completion::default(); n];
    let mut got = 0;
    while got < n {
        got += qp.reap(&mut out[got..]);
        std::hint::spin_loop();
    }
    assert_eq!(qp.poll(), None);
    out
}

#[test]
fn completions_in_reverse_order_are_matched_by_command_id() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let config = PollerConfig {
        spin: Duration::from_micros(200),
        ..PollerConfig::default()
    };
    let dev = Device::with_backend(1 << 20, config, |_| {
        Ok::<_, DeviceError>(SyncBackend::new(&file)?.reverse_completions(true))
    })
    .unwrap();
    let mut qp = dev.queue_pair(16).unwrap();
    let bufs = dev.alloc(10 * B).unwrap();
    for i in 0..10 {
        bufs.write(i * B, &pattern(i as u64, 7, B));
    }
    let cmds: Vec<Command> = (0..10)
        .map(|i| Command::write(Lba(i as u64), 1, DataPtr::Contiguous(bufs.page(i))))
        .collect();
    let mut ids = [CommandId(0); 10];
    assert_eq!(qp.submit_batch(&cmds, &mut ids), Ok(10));
    let done = reap_all(&mut qp, 10);
    // The backend finished the batch back to front; every completion names
    // its own command.
    let order: Vec<u16> = done.iter().map(|c| c.cid.0).collect();
    let mut reversed: Vec<u16> = ids.iter().map(|c| c.0).collect();
    reversed.reverse();
    assert_eq!(order, reversed);
    // Read back into buffers chosen by command id.
    bufs.fill(0);
    let cmds: Vec<Command> = (0..10)
        .map(|i| Command::read(Lba(9 - i as u64), 1, DataPtr::Contiguous(bufs.page(i))))
        .collect();
    assert_eq!(qp.submit_batch(&cmds, &mut ids), Ok(10));
    let by_cid: HashMap<u16, usize> = ids.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
    for c in reap_all(&mut qp, 10) {
        let i = by_cid[&c.cid.0];
        let mut got = vec![0u8; B];
        bufs.read(i * B, &mut got);
        assert_eq!(got, pattern(9 - i as u64, 7, B));
    }
}

#[test]
fn phase_bit_wraps_over_many_passes_of_small_queues() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let (dev, _inspector) = inspected_device(&file, 1 << 20, 200);
    let buf = dev.alloc(3 * B).unwrap();

    // Depth 2: one command at a time, 600 commands = 300 passes.
    let mut qp = dev.queue_pair(2).unwrap();
    for k in 1..=600u64 {
        let lba = Lba(k % 64);
        let cmd = if k % 2 == 1 {
            buf.write(0, &pattern(lba.0, k, B));
            Command::write(lba, 1, DataPtr::Contiguous(buf.addr))
        } else {
            buf.fill(0);
            Command::read(Lba((k - 1) % 64), 1, DataPtr::Contiguous(buf.addr))
        };
        qp.submit(&cmd).unwrap();
        let c = qp.wait().unwrap();
        assert_eq!(c.result(), Ok(()));
        assert_eq!(c.sq_head as u64, k % 2, "command {k}");
        if k % 2 == 0 {
            let mut got = vec![0u8; B];
            buf.read(0, &mut got);
            assert_eq!(got, pattern((k - 1) % 64, k - 1, B), "command {k}");
        }
    }
    assert_eq!(qp.stats().completed, 600);

    // Depth 4: batches of 3, 200 batches = 150 passes.
    let mut qp = dev.queue_pair(4).unwrap();
    for b in 1..=200u64 {
        let cmds: Vec<Command> = (0..3)
            .map(|i| {
                Command::read(
                    Lba((b + i) % 64),
                    1,
                    DataPtr::Contiguous(buf.page(i as usize)),
                )
            })
            .collect();
        let mut ids = [CommandId(0); 3];
        assert_eq!(qp.submit_batch(&cmds, &mut ids), Ok(3));
        let done = reap_all(&mut qp, 3);
        for c in done {
            assert_eq!(c.result(), Ok(()));
            assert_eq!(c.sq_head as u64, (3 * b) % 4, "batch {b}");
        }
    }
    assert_eq!(qp.stats().completed, 600);
}

#[test]
fn queue_pairs_on_several_threads() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 1024);
    let (dev, _inspector) = inspected_device(&file, 4 << 20, 200);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let mut qp = dev.queue_pair(8).unwrap();
            let buf = dev.alloc(B).unwrap();
            s.spawn(move || {
                for i in 0..100u64 {
                    let lba = Lba(t * 300 + i);
                    buf.write(0, &pattern(lba.0, t, B));
                    qp.execute(&Command::write(lba, 1, DataPtr::Contiguous(buf.addr)))
                        .unwrap();
                }
                for i in 0..100u64 {
                    let lba = Lba(t * 300 + i);
                    buf.fill(0);
                    qp.execute(&Command::read(lba, 1, DataPtr::Contiguous(buf.addr)))
                        .unwrap();
                    assert_eq!(buf.to_vec(), pattern(lba.0, t, B));
                }
            });
        }
    });
    let stats = dev.shutdown();
    assert_eq!(stats.commands, 600);
    assert_eq!(stats.errors, 0);
}
