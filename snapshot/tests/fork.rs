//! Consistency of the `fork()` baseline.

mod common;

use dbos_snapshot::fork::{ForkError, ForkHeap};
use dbos_snapshot::Snapshotter;

#[test]
fn one_snapshot_one_writer() {
    common::one_snapshot(&ForkHeap::new(common::HEAP).unwrap(), 1, 1);
}

#[test]
fn one_snapshot_two_writers() {
    common::one_snapshot(&ForkHeap::new(common::HEAP).unwrap(), 2, 2);
}

#[test]
fn overlapping_one_writer() {
    common::overlapping(&ForkHeap::new(common::HEAP).unwrap(), 1, 3);
}

#[test]
fn overlapping_two_writers() {
    common::overlapping(&ForkHeap::new(common::HEAP).unwrap(), 2, 4);
}

#[test]
fn bad_ranges_and_sizes_are_refused() {
    assert!(matches!(
        ForkHeap::new(4095),
        Err(ForkError::HeapSize(4095))
    ));
    let heap = ForkHeap::new(8192).unwrap();
    let snap = heap.take().unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(
        heap.read(&snap, 8180, &mut buf),
        Err(ForkError::OutOfRange {
            offset: 8180,
            len: 16,
            heap_len: 8192
        })
    ));
    heap.read(&snap, 8176, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 16]);
    // Released children are reaped: the pid no longer exists as our child.
    let pid = snap.pid();
    heap.release(snap).unwrap();
    // SAFETY: waitpid with a null status pointer is allowed; the pid is no
    // longer our child, so it only reports ECHILD.
    let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1);
    assert_eq!(heap.live(), 0);
}
