//! Tests of the heap-resident table on a plain buffer (no snapshot
//! mechanism): puts, gets, overwrites, deletes, expiry, many sizes, a full
//! heap, atomic groups, scans, and the dump of a heap into a snapshot file.

use super::dump::{dump, View};
use super::format::{decode, Encoder, Record};
use super::heap::HeapMem;
use super::layout::{MAX_KEY, MAX_VALUE};
use super::table::{Entry, Table};
use crate::server::engine::{EngineError, UnixMs, Write};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// A table over a buffer it owns (declared first: dropped before it).
struct Heap {
    table: Table,
    buf: Vec<u64>,
}

fn heap(len: usize) -> Heap {
    let mut buf = vec![0u64; len / 8];
    // SAFETY: the buffer is 8-byte aligned, `len` bytes long, lives as long
    // as the table (same struct, dropped after it; moving the struct does
    // not move the buffer's allocation) and only the table touches it.
    let mem = unsafe { HeapMem::new(buf.as_mut_ptr().cast(), len) };
    Heap {
        table: Table::format(mem, 0x5eed).unwrap(),
        buf,
    }
}

fn put<'a>(key: &'a [u8], value: &'a [u8]) -> Write<'a> {
    Write::Put {
        key,
        value,
        expires: None,
    }
}

fn get(t: &Table, key: &[u8]) -> Option<(Vec<u8>, Option<UnixMs>)> {
    let mut out = vec![0xEE; 3];
    t.get(key, &mut out).map(|e| (out, e))
}

fn all(t: &Table) -> BTreeMap<Vec<u8>, (Vec<u8>, Option<UnixMs>)> {
    let mut out = Vec::new();
    assert_eq!(t.scan(0, usize::MAX, &mut out), None);
    let n = out.len();
    let map: BTreeMap<_, _> = out.into_iter().map(|(k, v, e)| (k, (v, e))).collect();
    assert_eq!(map.len(), n, "a key delivered twice");
    map
}

#[test]
fn put_get_overwrite_delete_and_expiry() {
    let mut h = heap(64 * 1024);
    let t = &mut h.table;
    assert_eq!(t.len(), 0);
    assert_eq!(get(t, b"k"), None);
    assert_eq!(t.apply(&[put(b"k", b"v1")]).unwrap(), 1);
    assert_eq!(get(t, b"k"), Some((b"v1".to_vec(), None)));
    t.apply(&[Write::Put {
        key: b"k",
        value: b"second value",
        expires: Some(UnixMs(1_700_000_000_123)),
    }])
    .unwrap();
    assert_eq!(
        get(t, b"k"),
        Some((b"second value".to_vec(), Some(UnixMs(1_700_000_000_123))))
    );
    // Expiry 0 is a real expiry, distinct from none.
    t.apply(&[Write::Put {
        key: b"z",
        value: b"",
        expires: Some(UnixMs(0)),
    }])
    .unwrap();
    assert_eq!(get(t, b"z"), Some((Vec::new(), Some(UnixMs(0)))));
    assert_eq!(t.len(), 2);
    assert_eq!(t.apply(&[Write::Delete { key: b"k" }]).unwrap(), 1);
    assert_eq!(t.apply(&[Write::Delete { key: b"k" }]).unwrap(), 0);
    assert_eq!(get(t, b"k"), None);
    assert_eq!(get(t, b"z"), Some((Vec::new(), Some(UnixMs(0)))));
    assert_eq!(t.len(), 1);
    let s = t.check().unwrap();
    assert_eq!(s.records, 1);
    // v1's block was reused by "z"; "second value"'s is free.
    assert_eq!(s.free_blocks, 1);
}

#[test]
fn many_sizes_round_trip_and_blocks_are_reused() {
    let mut h = heap(8 << 20);
    let t = &mut h.table;
    let sizes = [
        0usize, 1, 7, 8, 15, 16, 63, 64, 65, 100, 1000, 4095, 4096, 4097, 65536, 300_000, MAX_VALUE,
    ];
    let key = |i: usize, klen: usize| {
        let mut k = format!("key-{i}-").into_bytes();
        k.resize(klen.max(k.len()), b'.');
        k
    };
    let value = |i: usize, n: usize| (0..n).map(|j| (i * 31 + j) as u8).collect::<Vec<u8>>();
    for (i, &n) in sizes.iter().enumerate() {
        let klen = [1, 16, 100, MAX_KEY][i % 4];
        t.apply(&[put(&key(i, klen), &value(i, n))]).unwrap();
    }
    assert_eq!(t.len(), sizes.len() as u64);
    for (i, &n) in sizes.iter().enumerate() {
        let klen = [1, 16, 100, MAX_KEY][i % 4];
        assert_eq!(get(t, &key(i, klen)).unwrap().0, value(i, n), "size {n}");
    }
    t.check().unwrap();
    // Overwrite each with another size (classes change).
    for (i, &n) in sizes.iter().enumerate() {
        let klen = [1, 16, 100, MAX_KEY][i % 4];
        let m = sizes[(i + 5) % sizes.len()];
        t.apply(&[put(&key(i, klen), &value(i + 1, m))]).unwrap();
        assert_eq!(
            get(t, &key(i, klen)).unwrap().0,
            value(i + 1, m),
            "{n} -> {m}"
        );
    }
    assert_eq!(t.len(), sizes.len() as u64);
    t.check().unwrap();
    // Many small records, deleted and written again: the arena does not
    // grow the second time (their blocks are reused).
    for i in 0..2000 {
        t.apply(&[put(&key(1000 + i, 10), &value(i, 50))]).unwrap();
    }
    for i in 0..2000 {
        t.apply(&[Write::Delete {
            key: &key(1000 + i, 10),
        }])
        .unwrap();
    }
    let bump = t.heap_bytes_used();
    for i in 0..2000 {
        t.apply(&[put(&key(5000 + i, 10), &value(i, 50))]).unwrap();
    }
    assert_eq!(t.heap_bytes_used(), bump);
    assert_eq!(t.check().unwrap().records, sizes.len() as u64 + 2000);
}

#[test]
fn limits_are_refused_with_nothing_written() {
    let mut h = heap(4 << 20);
    let t = &mut h.table;
    let long_key = vec![b'k'; MAX_KEY + 1];
    let long_value = vec![0u8; MAX_VALUE + 1];
    let err = t
        .apply(&[put(b"a", b"1"), put(&long_key, b"x")])
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::TooLarge("key of 513 bytes is longer than the limit of 512 bytes".into())
    );
    let err = t
        .apply(&[put(b"a", b"1"), put(b"b", &long_value)])
        .unwrap_err();
    assert!(matches!(err, EngineError::TooLarge(_)), "{err:?}");
    assert_eq!(t.len(), 0);
    assert_eq!(get(t, b"a"), None);
    t.apply(&[put(&vec![b'k'; MAX_KEY], &vec![1u8; MAX_VALUE])])
        .unwrap();
    assert_eq!(t.len(), 1);
}

/// Filling a small heap: every write until the first refusal is kept, the
/// refusal is `Full` with Redis's OOM text, and a group that fails half-way
/// leaves nothing of itself (its puts, overwrites and deletes undone).
#[test]
fn full_heap_refuses_and_stays_consistent() {
    let mut h = heap(64 * 1024);
    let t = &mut h.table;
    let mut written = BTreeMap::new();
    let mut i = 0u32;
    let err = loop {
        let k = format!("key{i}").into_bytes();
        let v = vec![i as u8; 100 + (i as usize % 50)];
        match t.apply(&[put(&k, &v)]) {
            Ok(_) => {
                written.insert(k, (v, None));
            }
            Err(e) => break e,
        }
        i += 1;
    };
    match &err {
        EngineError::Full(m) => assert!(
            m.starts_with("OOM command not allowed when used memory > 'maxmemory'"),
            "{m}"
        ),
        e => panic!("{e:?}"),
    }
    assert!(written.len() > 100, "{}", written.len());
    t.check().unwrap();
    assert_eq!(all(t), written);

    // A group: overwrite key0, delete key1, insert a new key, overwrite key2
    // twice, then a value that cannot fit. Nothing of it remains.
    let big = vec![7u8; 40_000];
    let err = t
        .apply(&[
            put(b"key0", b"changed"),
            Write::Delete { key: b"key1" },
            put(b"brand new", b"x"),
            put(b"key2", b"first"),
            put(b"key2", b"second"),
            Write::Delete { key: b"brand new" },
            put(b"key3", &big),
        ])
        .unwrap_err();
    assert!(matches!(err, EngineError::Full(_)), "{err:?}");
    t.check().unwrap();
    assert_eq!(all(t), written);
    assert_eq!(t.len(), written.len() as u64);

    // Deleting frees room for the same sizes again.
    for k in ["key5", "key6", "key7"] {
        t.apply(&[Write::Delete { key: k.as_bytes() }]).unwrap();
        written.remove(k.as_bytes());
    }
    for k in ["new5", "new6"] {
        t.apply(&[put(k.as_bytes(), &[5u8; 100])]).unwrap();
        written.insert(k.as_bytes().to_vec(), (vec![5u8; 100], None));
    }
    t.check().unwrap();
    assert_eq!(all(t), written);
}

#[test]
fn groups_apply_in_order() {
    let mut h = heap(64 * 1024);
    let t = &mut h.table;
    t.apply(&[put(b"a", b"0")]).unwrap();
    let n = t
        .apply(&[
            put(b"k", b"1"),
            put(b"k", b"2"),
            Write::Delete { key: b"k" },
            put(b"k", b"3"),
            Write::Delete { key: b"a" },
            Write::Delete { key: b"missing" },
        ])
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(get(t, b"k"), Some((b"3".to_vec(), None)));
    assert_eq!(get(t, b"a"), None);
    assert_eq!(t.len(), 1);
    let s = t.check().unwrap();
    assert_eq!(s.records, 1);
}

/// A scan in small steps delivers every key once; keys present for the
/// whole scan are delivered exactly once while others come and go between
/// its steps.
#[test]
fn scan_delivers_each_key_once() {
    let mut h = heap(1 << 20);
    let t = &mut h.table;
    for i in 0..3000u32 {
        t.apply(&[put(format!("stable{i}").as_bytes(), &i.to_le_bytes())])
            .unwrap();
    }
    let mut seen: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut slot = 0;
    let mut steps = 0;
    let mut churn = 0u32;
    loop {
        let mut out: Vec<Entry> = Vec::new();
        let next = t.scan(slot, 7, &mut out);
        for (k, _, _) in out {
            *seen.entry(k).or_default() += 1;
        }
        // Churn between steps: insert some keys, delete earlier ones.
        for _ in 0..5 {
            t.apply(&[put(format!("churn{churn}").as_bytes(), b"c")])
                .unwrap();
            if churn >= 3 {
                t.apply(&[Write::Delete {
                    key: format!("churn{}", churn - 3).as_bytes(),
                }])
                .unwrap();
            }
            churn += 1;
        }
        steps += 1;
        match next {
            Some(s) => {
                assert!(s > slot);
                slot = s;
            }
            None => break,
        }
    }
    assert!(steps > 100, "{steps}");
    for i in 0..3000u32 {
        assert_eq!(
            seen.get(format!("stable{i}").as_bytes()),
            Some(&1),
            "stable{i}"
        );
    }
    assert!(seen.values().all(|&n| n == 1));
    t.check().unwrap();
}

#[test]
fn clear_empties_and_the_table_is_reusable() {
    let mut h = heap(64 * 1024);
    let t = &mut h.table;
    for i in 0..100u32 {
        t.apply(&[put(&i.to_le_bytes(), b"value")]).unwrap();
    }
    let fresh = heap(64 * 1024);
    assert_eq!(t.clear(), 100);
    assert_eq!(t.len(), 0);
    assert_eq!(t.heap_bytes_used(), fresh.table.heap_bytes_used());
    assert_eq!(get(t, &5u32.to_le_bytes()), None);
    assert!(all(t).is_empty());
    t.apply(&[put(b"x", b"y")]).unwrap();
    assert_eq!(t.check().unwrap().records, 1);
}

/// The heap's bytes read as a frozen view.
struct BufView<'a>(&'a [u8]);

impl View for BufView<'_> {
    type Error = ();
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), ()> {
        buf.copy_from_slice(self.0.get(offset..offset + buf.len()).ok_or(())?);
        Ok(())
    }
}

/// The dump of a heap (from its bytes alone) decodes to exactly the
/// table's contents, free blocks skipped.
#[test]
fn dump_of_a_heap_holds_exactly_its_records() {
    let mut h = heap(4 << 20);
    for i in 0..5000u32 {
        let v = vec![i as u8; (i as usize * 13) % 700];
        let e = (i % 4 == 0).then_some(UnixMs(u64::from(i) * 1000));
        h.table
            .apply(&[Write::Put {
                key: format!("k{i}").as_bytes(),
                value: &v,
                expires: e,
            }])
            .unwrap();
    }
    for i in (0..5000u32).step_by(3) {
        h.table
            .apply(&[Write::Delete {
                key: format!("k{i}").as_bytes(),
            }])
            .unwrap();
    }
    h.table
        .apply(&[put(b"big", &vec![3u8; MAX_VALUE])])
        .unwrap();
    let want = all(&h.table);
    let len = h.buf.len() * 8;
    // SAFETY: reads the buffer's bytes while nothing writes it (the table
    // is not used until the slice is gone).
    let bytes = unsafe { core::slice::from_raw_parts(h.buf.as_ptr().cast::<u8>(), len) };
    let mut enc = Encoder::new(Vec::new(), 5).unwrap();
    let summary = dump(&mut BufView(bytes), &mut enc).unwrap();
    assert_eq!(summary.records, want.len() as u64);
    let (file, _) = enc.finish().unwrap();
    let mut got = BTreeMap::new();
    decode(&file[..], &mut |r: Record<'_>| {
        got.insert(r.key.to_vec(), (r.value.to_vec(), r.expires.map(UnixMs)));
        Ok(())
    })
    .unwrap();
    assert_eq!(got, want);
}

#[test]
fn the_count_of_keys_with_an_expiry_follows_every_write() {
    let mut h = heap(64 * 1024);
    let t = &mut h.table;
    let ex = |key: &'static [u8]| Write::Put {
        key,
        value: b"v",
        expires: Some(UnixMs(5)),
    };
    t.apply(&[ex(b"a"), ex(b"b"), put(b"c", b"v")]).unwrap();
    assert_eq!((t.len(), t.expiring()), (3, 2));
    // Replaced without an expiry, with one, and written twice in a group.
    t.apply(&[put(b"a", b"w"), ex(b"c"), ex(b"d"), put(b"d", b"x")])
        .unwrap();
    assert_eq!((t.len(), t.expiring()), (4, 2));
    t.apply(&[Write::Delete { key: b"b" }, Write::Delete { key: b"a" }])
        .unwrap();
    assert_eq!((t.len(), t.expiring()), (2, 1));
    t.check().unwrap();
    // A group the heap cannot hold changes nothing, the count included.
    let big = vec![7u8; 40 * 1024];
    let r = t.apply(&[
        ex(b"e"),
        Write::Put {
            key: b"f",
            value: &big,
            expires: Some(UnixMs(1)),
        },
        Write::Put {
            key: b"g",
            value: &big,
            expires: Some(UnixMs(1)),
        },
    ]);
    assert!(matches!(r, Err(EngineError::Full(_))), "{r:?}");
    assert_eq!((t.len(), t.expiring()), (2, 1));
    t.check().unwrap();
    t.clear();
    assert_eq!((t.len(), t.expiring()), (0, 0));
    t.check().unwrap();
}
