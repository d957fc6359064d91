//! The key-value workload of issue 12, shared by the process benchmark
//! (`benches/src/bin/snapshot-compare.rs`) and the guest's event report
//! (`examples/src/bin/snappy.rs`, `kv`): the layout and hashing of the hash
//! table, the writers' key stream and values, and the digest a snapshot
//! reader computes. `no_std`, no allocation, no floating point.
//!
//! This module owns nothing but the interpretation of a byte range: an
//! open-addressing (linear probing) table of [`SLOT`]-byte slots, each a
//! key (`u64`, 0 = empty) followed by a [`VALUE`]-byte value. Half the slots
//! hold keys (`1..=slots / 2`, [`Table::fill`]); writer `id` of `writers`
//! updates only the keys `k` with `(k - 1) % writers == id`, so no two
//! writers ever write the same slot.

use crate::PAGE_SIZE;

/// Bytes per slot: an 8-byte key and a [`VALUE`]-byte value, padded.
pub const SLOT: usize = 128;
/// Bytes per value.
pub const VALUE: usize = 100;
/// Slots per 4 KiB page (a slot never straddles pages).
pub const SLOTS_PER_PAGE: usize = PAGE_SIZE / SLOT;

/// The table's hash of a key (a multiplicative mix).
pub fn hash(key: u64) -> u64 {
    let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// The value a writer stores at its `n`-th update (every byte `n as u8`).
pub fn value(n: u64) -> [u8; VALUE] {
    [n as u8; VALUE]
}

/// A hash table over `slots * SLOT` bytes of memory the caller provides
/// (a snapshotted heap).
pub struct Table {
    base: *mut u8,
    slots: usize,
}

// SAFETY: the table is a pointer and a length; concurrent use is what the
// workload does: writers write disjoint slots (each owns its keys), and a
// probe only reads keys, which change from 0 to their final value once, in
// `fill`, before any writer starts (every later put rewrites the same key).
unsafe impl Sync for Table {}
// SAFETY: as for `Sync`; the memory is not owned by the table.
unsafe impl Send for Table {}

impl Table {
    /// A table of `slots` slots at `base`.
    ///
    /// # Safety
    ///
    /// `base` is 8-byte aligned and `slots * SLOT` bytes from it are
    /// readable and writable for the life of the table, and written by no
    /// one else while it is in use.
    pub unsafe fn new(base: *mut u8, slots: usize) -> Table {
        assert!(slots >= 2, "a table needs at least 2 slots");
        Table { base, slots }
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The number of keys the workload stores: half the slots.
    pub fn keys(&self) -> u64 {
        (self.slots / 2) as u64
    }

    fn key_at(&self, slot: usize) -> u64 {
        assert!(slot < self.slots);
        // SAFETY: the slot lies in the table's memory (checked; `new`'s
        // contract), 8-byte aligned (slots are 128 bytes from an aligned
        // base). Volatile: the memory is a snapshotted heap.
        unsafe { self.base.add(slot * SLOT).cast::<u64>().read_volatile() }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    pub fn find(&self, key: u64) -> usize {
        let mut slot = (hash(key) % self.slots as u64) as usize;
        loop {
            let k = self.key_at(slot);
            if k == key || k == 0 {
                return slot;
            }
            slot = (slot + 1) % self.slots;
        }
    }

    /// Stores `value` under `key` (the key is written too, as an insert
    /// would); returns the slot written.
    ///
    /// # Panics
    ///
    /// If `key` is 0 (the empty marker).
    pub fn put(&self, key: u64, value: &[u8; VALUE]) -> usize {
        assert_ne!(key, 0, "key 0 marks an empty slot");
        let slot = self.find(key);
        // SAFETY: `find` returns a slot below `self.slots`, so the key and
        // bytes 8..108 of it lie in the table's memory (`new`'s contract);
        // each writer owns its keys, so no two threads write one slot.
        unsafe {
            let at = self.base.add(slot * SLOT);
            at.cast::<u64>().write_volatile(key);
            core::ptr::copy_nonoverlapping(value.as_ptr(), at.add(8), VALUE);
        }
        slot
    }

    /// Inserts the keys `1..=keys()` with zeroed values.
    pub fn fill(&self) {
        for key in 1..=self.keys() {
            self.put(key, &[0; VALUE]);
        }
    }
}

/// The digest a snapshot reader computes over a table image: each slot's
/// key and first value word, mixed in slot order (two loads per slot, so a
/// reader can digest a view many times while writers write).
///
/// # Safety
///
/// `base` is 8-byte aligned and `slots * SLOT` bytes from it are readable.
pub unsafe fn digest(base: *const u8, slots: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for slot in 0..slots {
        // SAFETY: in range and aligned by the caller's contract.
        let (k, v) = unsafe {
            let at = base.add(slot * SLOT).cast::<u64>();
            (at.read_volatile(), at.add(1).read_volatile())
        };
        h = (h ^ k).wrapping_mul(0x0000_0100_0000_01b3);
        h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writer `id` of `writers`: its stream of keys (xorshift over the keys it
/// owns) and its update count.
pub struct Writer {
    rng: u64,
    id: u64,
    writers: u64,
    keys: u64,
    /// Updates made so far (the value of the next is `value(n)`).
    pub n: u64,
}

impl Writer {
    /// # Panics
    ///
    /// If `id >= writers` or there are fewer keys than writers.
    pub fn new(id: usize, writers: usize, keys: u64) -> Writer {
        assert!(id < writers && keys >= writers as u64);
        Writer {
            rng: 0x1234_5678_u64 + id as u64,
            id: id as u64,
            writers: writers as u64,
            keys,
            n: 0,
        }
    }

    /// The next key this writer updates (one of its own).
    pub fn next_key(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % (self.keys / self.writers)) * self.writers + self.id + 1
    }

    /// One update: the next key, with the next value; returns the slot.
    pub fn update(&mut self, table: &Table) -> usize {
        let key = self.next_key();
        let slot = table.put(key, &value(self.n));
        self.n += 1;
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn fill_then_updates_find_their_keys_and_own_disjoint_keys() {
        let slots = 256;
        let mut mem = vec![0u64; slots * SLOT / 8];
        // SAFETY: `mem` is aligned and `slots * SLOT` bytes long, and lives
        // longer than the table.
        let t = unsafe { Table::new(mem.as_mut_ptr().cast(), slots) };
        t.fill();
        assert_eq!(t.keys(), 128);
        let keys: Vec<u64> = (0..slots)
            .map(|s| t.key_at(s))
            .filter(|&k| k != 0)
            .collect();
        assert_eq!(keys.len(), 128);
        for key in 1..=128 {
            assert_eq!(t.key_at(t.find(key)), key);
        }
        let (mut a, mut b) = (Writer::new(0, 2, 128), Writer::new(1, 2, 128));
        for _ in 0..100 {
            let (ka, kb) = (a.next_key(), b.next_key());
            assert!((1..=128).contains(&ka) && (ka - 1) % 2 == 0);
            assert!((1..=128).contains(&kb) && (kb - 1) % 2 == 1);
        }
        let slot = a.update(&t);
        assert_eq!(a.n, 1);
        // An update rewrites an existing key's slot: no new key appears.
        let keys_after = (0..slots).filter(|&s| t.key_at(s) != 0).count();
        assert_eq!(keys_after, 128);
        assert_eq!(mem[slot * SLOT / 8 + 1], 0, "value(0) is zeroes");
        let before = {
            // SAFETY: `mem` as above.
            unsafe { digest(mem.as_ptr().cast(), slots) }
        };
        mem[slot * SLOT / 8 + 1] = 7;
        // SAFETY: `mem` as above.
        assert_ne!(unsafe { digest(mem.as_ptr().cast(), slots) }, before);
    }
}
