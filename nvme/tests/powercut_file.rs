//! The power-cut model on a file: the file's contents are loaded as the
//! durable disk, and `store` writes back the crash image after a cut (the
//! same image the seed gives in memory) or the current contents otherwise.

mod common;

use common::{backing_file, direct_io_dir};
use dbos_nvme::host::powercut::{
    remove_stale_writeback, writeback_temp_path, PowerCutBackend, StoreError, WriteBackStep,
};
use dbos_nvme::host::{Backend, BackingFile, FileError, HostBuf, IoKind, IoOp};
use std::os::unix::fs::FileExt;

fn run(b: &mut PowerCutBackend, kind: IoKind, offset: u64, buf: &mut [u8]) -> i32 {
    let op = IoOp {
        kind,
        offset,
        buf: HostBuf {
            ptr: buf.as_mut_ptr(),
            len: buf.len() as u32,
            fixed: None,
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
    let path = backing_file(dir.path(), 300).path().to_path_buf();
    let start: Vec<u8> = (0..300 * 4096).map(|i| (i % 241) as u8).collect();
    fill(&path, 0, &start);

    let run_seed = |seed: u64, cut: bool| {
        // `store` replaces the file: each round opens the one at the path.
        let file = BackingFile::open(&path).unwrap();
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
        let stored = pc.store(&file).unwrap();
        assert_eq!(stored.crashed, cut);
        assert_eq!(stored.file.path(), path);
        drop((b, stored, file));
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

/// `store` writes a new file next to the disk and renames it over it: the
/// old file (still open) keeps its contents, the new one has the old one's
/// permission bits and is locked (a second open is refused until the
/// returned file is dropped), no temporary file is left, and a stale one
/// from a killed store is removed by the next.
#[test]
fn store_replaces_the_file_atomically() {
    use std::os::unix::fs::PermissionsExt;
    let dir = direct_io_dir();
    let path = backing_file(dir.path(), 600).path().to_path_buf();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let file = BackingFile::open(&path).unwrap();
    let (mut b, pc) = PowerCutBackend::load(&file).unwrap();
    let mut sevens = vec![7u8; 4096];
    assert_eq!(
        run(&mut b, IoKind::Write { fua: true }, 8192, &mut sevens),
        4096
    );
    // A stale temporary file, as a store killed half-way leaves it.
    let temp = writeback_temp_path(&std::fs::canonicalize(&path).unwrap());
    assert_eq!(
        temp,
        dir.path()
            .canonicalize()
            .unwrap()
            .join("disk.img.dbos-writeback")
    );
    std::fs::write(&temp, b"partial").unwrap();
    let mut steps = Vec::new();
    let stored = pc.store_with(&file, &mut |s| steps.push(s)).unwrap();
    assert!(!stored.crashed);
    // 600 blocks: 3 chunks of 1 MiB (the last one partial), then the rename.
    assert_eq!(
        steps,
        [
            WriteBackStep::Chunk { n: 1, of: 3 },
            WriteBackStep::Chunk { n: 2, of: 3 },
            WriteBackStep::Chunk { n: 3, of: 3 },
            WriteBackStep::Rename
        ]
    );
    assert!(!temp.exists(), "the temporary file was renamed");
    let mut old = vec![0u8; 4096];
    file.file().read_exact_at(&mut old, 8192).unwrap();
    assert_eq!(old, vec![0u8; 4096], "the old file is not written");
    let new = std::fs::read(&path).unwrap();
    assert_eq!(new.len(), 600 * 4096);
    assert_eq!(new[8192..12288], sevens[..]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o640);
    // The new file is locked by `stored.file`, not only the old one.
    drop((b, file));
    match BackingFile::open(&path) {
        Err(FileError::Locked { .. }) => {}
        other => panic!("the new file is not locked: {other:?}"),
    }
    drop(stored);
    let again = BackingFile::open(&path).unwrap();
    assert_eq!(remove_stale_writeback(&again).unwrap(), None);
}

/// A file deleted or replaced while the model ran is not written back:
/// nothing is recreated at the path, nothing overwritten.
#[test]
fn store_refuses_a_deleted_or_replaced_file() {
    let dir = direct_io_dir();
    let path = backing_file(dir.path(), 4).path().to_path_buf();
    let file = BackingFile::open(&path).unwrap();
    let (_b, pc) = PowerCutBackend::load(&file).unwrap();
    std::fs::remove_file(&path).unwrap();
    match pc.store(&file) {
        Err(e @ StoreError::Deleted { .. }) => {
            assert!(e.to_string().contains("was deleted while in use"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!path.exists(), "a deleted disk was recreated");

    let file = BackingFile::create(&path, 4 * 4096).unwrap();
    let (_b, pc) = PowerCutBackend::load(&file).unwrap();
    // Moved away (so still linked), and another file put at the path.
    std::fs::rename(&path, dir.path().join("moved.img")).unwrap();
    std::fs::write(&path, vec![9u8; 4 * 4096]).unwrap();
    match pc.store(&file) {
        Err(e @ StoreError::Replaced { .. }) => {
            assert!(e.to_string().contains("is no longer the file"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), vec![9u8; 4 * 4096]);
}
