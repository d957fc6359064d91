//! Owns the hash table: records (key, value, expiry) chained from the
//! index's buckets, every byte of it inside the snapshotted heap (layout in
//! [`layout`](super::layout), blocks from [`arena`](super::arena)).
//!
//! The table is single-threaded: reads take `&self`, writes `&mut self`;
//! the engine puts it behind its one lock. A group of writes is applied
//! atomically: each step is logged (outside the heap) and, if a block
//! cannot be allocated, undone in reverse order, so a full heap changes
//! nothing ([`EngineError::Full`]). Blocks a group replaces or deletes are
//! freed only once the whole group succeeded, so undoing never finds one
//! reused.
//!
//! The index never resizes: it is sized from the heap (one bucket per 128
//! bytes), so a key stays in its bucket for the table's life and a scan by
//! bucket number ([`Table::scan`]) delivers every key present for the whole
//! scan exactly once.

use super::arena::{allocate, free, reset};
use super::hash::hash;
use super::heap::HeapMem;
use super::layout::*;
use crate::server::engine::{Cursor, EngineError, UnixMs, Write};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// One entry as a scan copies it out.
pub type Entry = (Vec<u8>, Vec<u8>, Option<UnixMs>);

/// A step of a group, as undone on failure. `link` is the offset of the
/// word that pointed at the changed place (a bucket or a record's `next`).
#[derive(Clone, Copy, Debug)]
enum Undo {
    Inserted { link: usize, new: usize },
    Replaced { link: usize, old: usize },
    Removed { link: usize, old: usize },
}

/// Most writes one atomic group (a MULTI block, an MSET) may hold.
pub const MAX_WRITES: usize = 1024;

/// The slot a scan resumes from, for an engine on a [`Table`]: `None` when
/// the scan is over; an ordered cursor (a key) is refused, the table being
/// unordered.
pub fn scan_slot(from: &Cursor) -> Result<Option<u64>, EngineError> {
    match from {
        Cursor::Start => Ok(Some(0)),
        Cursor::Slot(n) => Ok(Some(*n)),
        Cursor::Done => Ok(None),
        Cursor::Key(_) => Err(EngineError::Unsupported(
            "the memory engine is unordered: its scan resumes from a slot cursor, not a key".into(),
        )),
    }
}

/// What [`Table::check`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckSummary {
    pub records: u64,
    pub live_bytes: u64,
    pub free_blocks: u64,
}

/// The hash table in a heap.
#[derive(Debug)]
pub struct Table {
    heap: HeapMem,
    index_off: usize,
    slots: usize,
    arena_start: usize,
    seed: u64,
}

impl Table {
    /// Formats `heap` as an empty table whose hash uses `seed`. Refuses a
    /// heap under [`MIN_HEAP`] bytes.
    pub fn format(mut heap: HeapMem, seed: u64) -> Result<Table, String> {
        let len = heap.len();
        if len < MIN_HEAP {
            return Err(format!(
                "a heap of {len} bytes is too small for the memory engine (at least {MIN_HEAP})"
            ));
        }
        let (index_off, slots, arena_start) = geometry(len);
        heap.zero(0, arena_start);
        heap.set_u64(H_MAGIC, HEAP_MAGIC);
        heap.set_u64(H_VERSION, HEAP_VERSION);
        heap.set_u64(H_HEAP_LEN, len as u64);
        heap.set_u64(H_INDEX_OFF, index_off as u64);
        heap.set_u64(H_INDEX_SLOTS, slots as u64);
        heap.set_u64(H_ARENA_START, arena_start as u64);
        heap.set_u64(H_ARENA_END, len as u64);
        heap.set_u64(H_SEED, seed);
        heap.set_u64(H_COUNT, 0);
        reset(&mut heap, arena_start);
        Ok(Table {
            heap,
            index_off,
            slots,
            arena_start,
            seed,
        })
    }

    /// Keys in the table.
    pub fn len(&self) -> u64 {
        self.heap.u64_at(H_COUNT)
    }

    /// Keys with an expiry (expired ones not yet removed included).
    pub fn expiring(&self) -> u64 {
        self.heap.u64_at(H_EXPIRING)
    }

    fn expires(&self, rec: usize) -> bool {
        self.heap.u64_at(rec + R_FLAGS) & FLAG_EXPIRES != 0
    }

    /// True if the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the heap.
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Bytes of live blocks.
    pub fn used_bytes(&self) -> u64 {
        self.heap.u64_at(H_USED)
    }

    /// Bytes of the heap in use: the header, the index and the arena up to
    /// its bump offset (free blocks included).
    pub fn heap_bytes_used(&self) -> u64 {
        self.heap.u64_at(H_BUMP)
    }

    /// Buckets of the index.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn bucket_off(&self, h: u64) -> usize {
        self.index_off + (h as usize & (self.slots - 1)) * 8
    }

    fn key_of(&self, rec: usize) -> &[u8] {
        let lens = self.heap.u64_at(rec + R_LENS);
        self.heap.bytes(rec + RECORD_HEADER, (lens >> 32) as usize)
    }

    fn value_of(&self, rec: usize) -> &[u8] {
        let lens = self.heap.u64_at(rec + R_LENS);
        let klen = (lens >> 32) as usize;
        self.heap
            .bytes(rec + RECORD_HEADER + klen, (lens & 0xFFFF_FFFF) as usize)
    }

    fn expiry_of(&self, rec: usize) -> Option<UnixMs> {
        self.expires(rec)
            .then(|| UnixMs(self.heap.u64_at(rec + R_EXPIRES)))
    }

    /// The link pointing at `key`'s record and the record, or the chain's
    /// last link and `None`.
    fn find(&self, key: &[u8], h: u64) -> (usize, Option<usize>) {
        let mut link = self.bucket_off(h);
        loop {
            let rec = self.heap.u64_at(link) as usize;
            if rec == 0 {
                return (link, None);
            }
            if self.heap.u64_at(rec + R_HASH) == h && self.key_of(rec) == key {
                return (link, Some(rec));
            }
            link = rec + R_NEXT;
        }
    }

    /// Copies `key`'s value into `out` and returns its expiry; `None` if
    /// absent.
    pub fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Option<Option<UnixMs>> {
        let (_, rec) = self.find(key, hash(self.seed, key));
        let rec = rec?;
        out.clear();
        out.extend_from_slice(self.value_of(rec));
        Some(self.expiry_of(rec))
    }

    /// Checks a group of `writes` against the limits (at most
    /// [`MAX_WRITES`] writes, keys and values within theirs): nothing is
    /// applied if one is over them.
    pub fn check_limits(writes: &[Write<'_>]) -> Result<(), EngineError> {
        if writes.len() > MAX_WRITES {
            return Err(EngineError::TooManyWrites {
                writes: writes.len(),
                max: MAX_WRITES,
            });
        }
        for w in writes {
            let key = match w {
                Write::Put { key, value, .. } => {
                    if value.len() > MAX_VALUE {
                        return Err(EngineError::TooLarge(format!(
                            "string exceeds maximum allowed size (value of {} bytes, at most {MAX_VALUE})",
                            value.len()
                        )));
                    }
                    key
                }
                Write::Delete { key } => key,
            };
            if key.len() > MAX_KEY {
                return Err(EngineError::TooLarge(format!(
                    "key of {} bytes is longer than the limit of {MAX_KEY} bytes",
                    key.len()
                )));
            }
        }
        Ok(())
    }

    /// Applies `writes` in order, atomically: on error nothing changed.
    /// Returns the number of keys changed (puts, and deletes of present
    /// keys).
    pub fn apply(&mut self, writes: &[Write<'_>]) -> Result<u64, EngineError> {
        Self::check_limits(writes)?;
        let mut undo: Vec<Undo> = Vec::with_capacity(writes.len());
        let mut allocated: Vec<usize> = Vec::new();
        let mut replaced: Vec<usize> = Vec::new();
        let mut changes = 0;
        for w in writes {
            let step = match *w {
                Write::Put {
                    key,
                    value,
                    expires,
                } => match self.put(key, value, expires) {
                    Ok((step, new, old)) => {
                        allocated.push(new);
                        replaced.extend(old);
                        Some(step)
                    }
                    Err(e) => {
                        self.rollback(&undo, &allocated);
                        return Err(e);
                    }
                },
                Write::Delete { key } => {
                    let h = hash(self.seed, key);
                    match self.find(key, h) {
                        (link, Some(old)) => {
                            let next = self.heap.u64_at(old + R_NEXT);
                            self.heap.set_u64(link, next);
                            self.set_count(self.len() - 1);
                            replaced.push(old);
                            Some(Undo::Removed { link, old })
                        }
                        (_, None) => None,
                    }
                }
            };
            if let Some(step) = step {
                undo.push(step);
                changes += 1;
            }
        }
        // The group applied: records it wrote and records it replaced or
        // removed (a key written twice in a group is in both) move the
        // count of keys with an expiry.
        let gained = allocated.iter().filter(|&&r| self.expires(r)).count() as u64;
        let lost = replaced.iter().filter(|&&r| self.expires(r)).count() as u64;
        self.heap
            .set_u64(H_EXPIRING, self.expiring() + gained - lost);
        for old in replaced {
            free(&mut self.heap, old);
        }
        Ok(changes)
    }

    fn set_count(&mut self, n: u64) {
        self.heap.set_u64(H_COUNT, n);
    }

    /// Writes a new record for `key` and links it in place of the old one
    /// (or at its bucket's head): (undo step, new block, replaced block).
    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires: Option<UnixMs>,
    ) -> Result<(Undo, usize, Option<usize>), EngineError> {
        let bytes = record_bytes(key.len(), value.len());
        let class = class_for(bytes).expect("limits checked: every record has a class");
        let Some(new) = allocate(&mut self.heap, class) else {
            return Err(EngineError::Full(format!(
                "OOM command not allowed when used memory > 'maxmemory' (the memory engine's heap of {} bytes has no free block of {} bytes; {} bytes in live records)",
                self.heap.len(),
                class_size(class),
                self.used_bytes()
            )));
        };
        let h = hash(self.seed, key);
        let heap = &mut self.heap;
        heap.set_u64(new + R_HASH, h);
        heap.set_u64(new + R_EXPIRES, expires.map_or(0, |e| e.0));
        heap.set_u64(
            new + R_LENS,
            ((key.len() as u64) << 32) | value.len() as u64,
        );
        heap.set_u64(
            new + R_FLAGS,
            if expires.is_some() { FLAG_EXPIRES } else { 0 },
        );
        heap.write(new + RECORD_HEADER, key);
        heap.write(new + RECORD_HEADER + key.len(), value);
        match self.find(key, h) {
            (link, Some(old)) => {
                let next = self.heap.u64_at(old + R_NEXT);
                self.heap.set_u64(new + R_NEXT, next);
                self.heap.set_u64(link, new as u64);
                Ok((Undo::Replaced { link, old }, new, Some(old)))
            }
            (_, None) => {
                let link = self.bucket_off(h);
                let head = self.heap.u64_at(link);
                self.heap.set_u64(new + R_NEXT, head);
                self.heap.set_u64(link, new as u64);
                self.set_count(self.len() + 1);
                Ok((Undo::Inserted { link, new }, new, None))
            }
        }
    }

    /// Undoes `undo` in reverse order and frees the blocks the group
    /// allocated.
    fn rollback(&mut self, undo: &[Undo], allocated: &[usize]) {
        for step in undo.iter().rev() {
            match *step {
                Undo::Inserted { link, new } => {
                    let next = self.heap.u64_at(new + R_NEXT);
                    self.heap.set_u64(link, next);
                    self.set_count(self.len() - 1);
                }
                Undo::Replaced { link, old } => self.heap.set_u64(link, old as u64),
                Undo::Removed { link, old } => {
                    self.heap.set_u64(link, old as u64);
                    self.set_count(self.len() + 1);
                }
            }
        }
        for &b in allocated {
            free(&mut self.heap, b);
        }
    }

    /// Removes every key; returns how many there were.
    pub fn clear(&mut self) -> u64 {
        let n = self.len();
        self.heap.zero(self.index_off, self.slots * 8);
        reset(&mut self.heap, self.arena_start);
        self.set_count(0);
        self.heap.set_u64(H_EXPIRING, 0);
        n
    }

    /// Copies the entries of the buckets from `slot` on into `out`, whole
    /// buckets, until `limit` entries or `10 * limit + 100` buckets; returns
    /// the next bucket to scan, `None` at the end.
    pub fn scan(&self, slot: u64, limit: usize, out: &mut Vec<Entry>) -> Option<u64> {
        let mut slot = usize::try_from(slot).ok()?;
        let max_buckets = limit.saturating_mul(10).saturating_add(100);
        let mut visited = 0;
        let mut delivered = 0;
        while slot < self.slots {
            if delivered >= limit.max(1) || visited >= max_buckets {
                return Some(slot as u64);
            }
            let mut rec = self.heap.u64_at(self.index_off + slot * 8) as usize;
            while rec != 0 {
                out.push((
                    self.key_of(rec).to_vec(),
                    self.value_of(rec).to_vec(),
                    self.expiry_of(rec),
                ));
                delivered += 1;
                rec = self.heap.u64_at(rec + R_NEXT) as usize;
            }
            visited += 1;
            slot += 1;
        }
        None
    }

    /// Checks every invariant of the heap: the index's chains (each record
    /// live, in the bucket of its hash, hash right, lengths fitting its
    /// block), the arena as a sequence of whole blocks, the free lists and
    /// the header's counters. Walks everything: for tests and diagnostics.
    pub fn check(&self) -> Result<CheckSummary, String> {
        let heap = &self.heap;
        let bump = heap.u64_at(H_BUMP) as usize;
        let (mut records, mut expiring) = (0u64, 0u64);
        for slot in 0..self.slots {
            let mut rec = heap.u64_at(self.index_off + slot * 8) as usize;
            let mut steps = 0;
            while rec != 0 {
                if rec < self.arena_start || rec >= bump || !rec.is_multiple_of(16) {
                    return Err(format!(
                        "bucket {slot}: record offset {rec} outside the arena"
                    ));
                }
                let w = heap.u64_at(rec);
                if w >> 32 != LIVE {
                    return Err(format!("bucket {slot}: block {rec} is not live ({w:#x})"));
                }
                let class = (w & 0xFFFF_FFFF) as usize;
                let lens = heap.u64_at(rec + R_LENS);
                let (k, v) = ((lens >> 32) as usize, (lens & 0xFFFF_FFFF) as usize);
                if class >= CLASSES || record_bytes(k, v) > class_size(class) {
                    return Err(format!(
                        "record {rec}: {k}+{v} bytes do not fit class {class}"
                    ));
                }
                let h = hash(self.seed, self.key_of(rec));
                if h != heap.u64_at(rec + R_HASH) || self.bucket_off(h) != self.index_off + slot * 8
                {
                    return Err(format!("record {rec}: wrong hash or bucket {slot}"));
                }
                records += 1;
                expiring += u64::from(self.expires(rec));
                steps += 1;
                if steps > self.len() {
                    return Err(format!("bucket {slot}: chain loops"));
                }
                rec = heap.u64_at(rec + R_NEXT) as usize;
            }
        }
        if records != self.len() {
            return Err(format!(
                "{records} records in the index, the header counts {}",
                self.len()
            ));
        }
        if expiring != self.expiring() {
            return Err(format!(
                "{expiring} records with an expiry, the header counts {}",
                self.expiring()
            ));
        }
        let (mut live, mut live_bytes, mut free_blocks) = (0u64, 0u64, 0u64);
        let mut free_by_class = [0u64; CLASSES];
        let mut at = self.arena_start;
        while at < bump {
            let w = heap.u64_at(at);
            let class = (w & 0xFFFF_FFFF) as usize;
            if class >= CLASSES || at + class_size(class) > bump {
                return Err(format!("arena block {at}: bad class in {w:#x}"));
            }
            match w >> 32 {
                LIVE => {
                    live += 1;
                    live_bytes += class_size(class) as u64;
                }
                FREE => {
                    free_blocks += 1;
                    free_by_class[class] += 1;
                }
                s => return Err(format!("arena block {at}: bad state {s:#x}")),
            }
            at += class_size(class);
        }
        if live != records || live_bytes != self.used_bytes() {
            return Err(format!(
                "arena: {live} live blocks of {live_bytes} bytes; index {records} records, header {} bytes",
                self.used_bytes()
            ));
        }
        for (class, &want) in free_by_class.iter().enumerate() {
            let mut n = 0u64;
            let mut b = heap.u64_at(H_FREE_HEADS + class * 8) as usize;
            while b != 0 {
                if heap.u64_at(b) != (FREE << 32) | class as u64 {
                    return Err(format!(
                        "free list {class}: block {b} not free of its class"
                    ));
                }
                n += 1;
                if n > want {
                    return Err(format!(
                        "free list {class}: more than the {want} free blocks"
                    ));
                }
                b = heap.u64_at(b + R_NEXT) as usize;
            }
            if n != want {
                return Err(format!("free list {class}: {n} blocks, arena has {want}"));
            }
        }
        Ok(CheckSummary {
            records,
            live_bytes,
            free_blocks,
        })
    }
}
