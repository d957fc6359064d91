//! The power-cut model on a file: the file's contents are loaded as the
//! durable disk, and `store` writes back the crash image after a cut (the
//! same image the seed gives in memory) or the current contents otherwise.

mod common;

use common::{backing_file, direct_io_dir};
use dbos_nvme::host::powercut::PowerCutBackend;
use dbos_nvme::host::{Backend, HostBuf, IoKind, IoOp};
use std::os::unix::fs::FileExt;

fn run(b: &mut PowerCutBackend, kind: IoKind, offset: u64, buf: &mut [u8]) -> i32 {
    let op = IoOp {
        kind,
        offset,
        buf: HostBuf {
            ptr: buf.as_mut_ptr(),
            len: buf.len() as u32,
            buf_index: 0,
        },
    };
    assert!(b.push(&op, 1));
    b.submit().unwrap();
    let mut r = None;
    b.reap(|_, res| r = Some(res));
    r.unwrap()
}

/// Writes to the file through a second, buffered open and syncs.
fn fill(path: &std::path::Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn load_and_store_a_crash_image() {
    let dir = direct_io_dir();
    // Larger than one transfer chunk of load/store (1 MiB).
    let file = backing_file(dir.path(), 300);
    let path = file.path().to_path_buf();
    let start: Vec<u8> = (0..300 * 4096).map(|i| (i % 241) as u8).collect();
    fill(&path, 0, &start);

    let run_seed = |seed: u64, cut: bool| {
        let (mut b, pc) = PowerCutBackend::load(&file).unwrap();
        assert_eq!(pc.current(), start, "loaded as it is on the file");
        let mut ones = vec![1u8; 8192];
        let mut twos = vec![2u8; 4096];
        let mut none = [];
        assert_eq!(
            run(&mut b, IoKind::Write { fua: false }, 4096, &mut ones),
            8192
        );
        assert_eq!(run(&mut b, IoKind::Flush, 0, &mut none), 0);
        assert_eq!(
            run(&mut b, IoKind::Write { fua: false }, 1 << 20, &mut twos),
            4096
        );
        assert_eq!(
            run(&mut b, IoKind::Write { fua: false }, 4096, &mut twos),
            4096
        );
        let expected = if cut {
            pc.cut(seed);
            pc.image().unwrap().0
        } else {
            pc.current()
        };
        assert_eq!(pc.store(&file).unwrap(), cut);
        drop(b);
        let on_file = std::fs::read(&path).unwrap();
        assert!(on_file == expected, "seed {seed}: the file holds the image");
        // Put the starting contents back for the next round.
        fill(&path, 0, &start);
        expected
    };
    let clean = run_seed(0, false);
    assert!(clean[4096..8192].iter().all(|&b| b == 2));
    assert!(clean[8192..12288].iter().all(|&b| b == 1));
    let mut torn_or_lost = 0;
    for seed in 0..16 {
        let img = run_seed(seed, true);
        // The flushed write is durable; the later ones are each kept, lost
        // or torn at 512-byte boundaries.
        assert!(img[8192..12288].iter().all(|&b| b == 1), "seed {seed}");
        for s in (4096..8192).step_by(512) {
            let v = img[s];
            assert!(v == 1 || v == 2, "seed {seed}");
            assert!(img[s..s + 512].iter().all(|&b| b == v), "seed {seed}");
        }
        if img != clean {
            torn_or_lost += 1;
        }
        assert_eq!(img[..4096], start[..4096], "never written");
    }
    assert!(torn_or_lost > 0, "some seed lost or tore a write");
}
