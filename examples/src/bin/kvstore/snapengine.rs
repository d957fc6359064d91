//! `kvstore -- serve engine memory`: the memory engine's [`KvEngine`] in
//! ring 0. The hash table (`dbos_kvstore::memory::table::Table`) lives in
//! the heap of a [`Snappy`] (the guest's page-table snapshots); a save
//! takes a Snappy snapshot under the table's write lock (two page-table
//! writes and a TLB flush, whatever the heap's size), dumps the frozen view
//! in the `dump.dbkv` format to the host file granted as `dump` (`dbos run
//! --file dump=PATH`) while writers go on, and releases the snapshot.
//!
//! - Writes are applied under the table's lock and acknowledged at once;
//!   they are durable only at the next snapshot (as Redis without an AOF):
//!   [`KvEngine::wait`] returns at once and [`KvEngine::durable`] is
//!   `Ticket(u64::MAX)`. A full heap refuses the write (`OOM`).
//! - SAVE and BGSAVE run on the vCPU that received the command, from the
//!   take to the release: that vCPU's clients wait for it, the other vCPUs
//!   go on serving (and writing: their first write to a page after the
//!   take copies it). There is no background thread in the guest, so
//!   BGSAVE replies once the snapshot is on the host's disk. One save runs
//!   at a time; another is refused with Redis's "Background save already
//!   in progress". Periodic saves (`save-every SECONDS`) are run by vCPU 0
//!   between rounds ([`SnapEngine::chores`]).
//!
//! # The snapshot file
//!
//! The guest cannot rename or truncate a host file, so the file holds two
//! superblocks and the snapshots themselves, and a save never overwrites
//! the snapshot the newest valid superblock names:
//!
//! ```text
//! offset 0      superblock slot 0 (64 bytes, alone in its 4 KiB block)
//! offset 4096   superblock slot 1
//! offset 8192   data region 0 (R bytes), then data region 1 (R bytes),
//!               R = the heap's size + 4 KiB, rounded up to 4 KiB
//!
//! superblock    magic "DBKVSUPR", version u32 (1), zero u32,
//!               sequence u64, data offset u64, data length u64,
//!               records u64, created (Unix ms) u64,
//!               CRC32C of the 56 bytes before it u32, zero u32
//! data          one complete `dump.dbkv` file (header, CRC'd record
//!               blocks, trailer with the whole file's CRC)
//! ```
//!
//! A snapshot file is never larger than the heap it came from (a record
//! takes at least 48 bytes of header in the heap, at most 17 plus a
//! 16-byte block header in the file), so it fits its region; a save that
//! would overflow it fails and keeps the previous snapshot. A save writes
//! the new snapshot into the region that does not overlap the newest one,
//! flushes (`fdatasync`), then writes sequence + 1 into the other
//! superblock slot and flushes again. A crash before the second flush
//! leaves the previous superblock the newest valid one (a torn superblock
//! fails its CRC and is ignored); after it, the new one.
//!
//! At start the newest valid superblock is loaded; the other one is never
//! read beyond its 64 bytes (its data may be half overwritten by an
//! interrupted save). If the newest snapshot's data is damaged, the server
//! refuses to start and names the byte offset in the file; it does not
//! fall back to an older snapshot silently. A superblock that fails its
//! CRC beside a valid one is taken for a torn write and ignored (with a
//! console line); one that fails with no valid one beside it is refused.
//! If a superblock write or its flush fails, whether it reached the disk is
//! unknown: the engine refuses further saves rather than risk overwriting
//! the data of the snapshot that superblock may name.

use super::memory::SnapView;
use super::{now_ns, unix_ms};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dbos_bufferpool::checksum::crc32c;
use dbos_kvstore::memory::dump::{dump, DumpError};
use dbos_kvstore::memory::format::{decode, DecodeError, Encoder, Record, Sink, Source};
use dbos_kvstore::memory::heap::HeapMem;
use dbos_kvstore::memory::layout::{MAX_KEY, MAX_VALUE};
use dbos_kvstore::memory::table::{scan_slot, Table, MAX_WRITES};
use dbos_kvstore::server::engine::{
    Cursor, EngineError, KvEngine, SaveStatus, Ticket, UnixMs, Write,
};
use dbos_snapshot::snappy::{Snappy, Snapshot};
use dbos_snapshot::Snapshotter;
use libdbos::hostfile::HostFile;
use libdbos::println;

/// The `--file` name of the snapshot file.
pub const FILE_NAME: &str = "dump";
/// Redis's answer to a save while one runs.
const IN_PROGRESS: &str = "Background save already in progress";

const SUPER_MAGIC: [u8; 8] = *b"DBKVSUPR";
const SUPER_VERSION: u32 = 1;
const SUPER_LEN: usize = 64;
/// Where the two superblock slots are.
const SUPER_AT: [u64; 2] = [0, 4096];
/// Where the data regions start.
const DATA_START: u64 = 8192;
const BLOCK: u64 = 4096;
/// Bytes moved per host-file hypercall.
const IO_CHUNK: usize = 64 * 1024;

/// One superblock: where a complete snapshot lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Super {
    slot: usize,
    seq: u64,
    offset: u64,
    len: u64,
    records: u64,
    created_ms: u64,
}

/// What a superblock slot holds.
enum SlotState {
    /// Never written (zeroes, or past the end of the file).
    Empty,
    /// Not a valid superblock (a torn write, or damage).
    Bad(String),
    Valid(Super),
}

impl Super {
    fn encode(&self) -> [u8; SUPER_LEN] {
        let mut b = [0u8; SUPER_LEN];
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        b[8..12].copy_from_slice(&SUPER_VERSION.to_le_bytes());
        for (i, v) in [
            self.seq,
            self.offset,
            self.len,
            self.records,
            self.created_ms,
        ]
        .iter()
        .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn parse(slot: usize, b: &[u8; SUPER_LEN]) -> SlotState {
        if b.iter().all(|&x| x == 0) {
            return SlotState::Empty;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if b[0..8] != SUPER_MAGIC {
            return SlotState::Bad("no superblock magic".into());
        }
        let (stored, computed) = (u32_at(56), crc32c(&b[..56]));
        if stored != computed {
            return SlotState::Bad(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        if u32_at(8) != SUPER_VERSION {
            return SlotState::Bad(format!("version {} not supported", u32_at(8)));
        }
        let s = Super {
            slot,
            seq: u64_at(16),
            offset: u64_at(24),
            len: u64_at(32),
            records: u64_at(40),
            created_ms: u64_at(48),
        };
        if s.offset < DATA_START || s.offset.checked_add(s.len).is_none() {
            return SlotState::Bad(format!(
                "data at {} for {} bytes is impossible",
                s.offset, s.len
            ));
        }
        SlotState::Valid(s)
    }
}

/// Where the next snapshot goes: the first data region (of `region` bytes)
/// that does not overlap the newest snapshot, or past its end if both do
/// (a snapshot written by a run with a larger heap).
fn place(current: Option<&Super>, region: u64) -> u64 {
    let Some(c) = current else {
        return DATA_START;
    };
    let overlaps = |at: u64| at < c.offset + c.len && c.offset < at + region;
    [DATA_START, DATA_START + region]
        .into_iter()
        .find(|&at| !overlaps(at))
        .unwrap_or_else(|| (c.offset + c.len).next_multiple_of(BLOCK))
}

fn io(what: &str, e: libdbos::hostfile::Errno) -> String {
    format!("{what} the host file '{FILE_NAME}': {e}")
}

/// Writes an encoded snapshot into its region of the file, buffered.
struct FileSink<'a> {
    file: &'a HostFile,
    /// Where the snapshot starts in the file.
    base: u64,
    /// Bytes already written to the file.
    written: u64,
    /// The region's size: a snapshot may not grow past it.
    limit: u64,
    buf: Vec<u8>,
}

impl FileSink<'_> {
    fn flush_buf(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            self.file
                .write_at(self.base + self.written, &self.buf)
                .map_err(|e| io("writing", e))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Sink for FileSink<'_> {
    type Error = String;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.written + (self.buf.len() + bytes.len()) as u64 > self.limit {
            return Err(format!(
                "the snapshot is larger than its region of {} bytes",
                self.limit
            ));
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= IO_CHUNK {
            self.flush_buf()?;
        }
        Ok(())
    }
}

/// Reads a snapshot's bytes from the file, buffered, up to its length.
struct FileSource<'a> {
    file: &'a HostFile,
    /// The next file offset to read, and the end of the snapshot.
    next: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Source for FileSource<'_> {
    type Error = String;
    fn read(&mut self, out: &mut [u8]) -> Result<usize, String> {
        if self.at == self.buf.len() {
            let n = (self.end - self.next).min(IO_CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            let got = self
                .file
                .read_at(self.next, &mut self.buf)
                .map_err(|e| io("reading", e))?;
            self.buf.truncate(got);
            self.next += got as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What the save machinery keeps (under a short lock; the save itself
/// runs outside it, claimed by [`SnapEngine::saving`]).
#[derive(Default)]
struct SaveState {
    status: SaveStatus,
    /// The change counter at the snapshot of the last successful save.
    changes_at_save: u64,
    snapshots: u64,
    failed: u64,
    /// Snappy's page-table writes for the last take.
    pte_writes: u64,
    /// The newest complete snapshot in the file.
    current: Option<Super>,
    /// A superblock write failed: saves are refused (see the module doc).
    broken: bool,
}

/// The memory engine on Snappy (see the module documentation).
pub struct SnapEngine {
    /// Declared before `snappy`: dropped first (it points into its heap).
    table: spin::RwLock<Table>,
    snappy: Snappy,
    file: Option<HostFile>,
    /// Keys changed since start.
    changes: AtomicU64,
    /// A save is running (on some vCPU).
    saving: AtomicBool,
    state: spin::Mutex<SaveState>,
    /// Seconds between periodic saves (0: none), and when vCPU 0 last
    /// considered one (ns).
    save_every: u64,
    last_periodic: AtomicU64,
}

impl SnapEngine {
    /// Makes a heap of `heap_kib` KiB on Snappy with an empty table and
    /// loads the newest snapshot of `file`, if any. Refuses (with the
    /// message to print) a damaged newest snapshot, naming its byte offset.
    pub fn open(heap_kib: u64, file: Option<HostFile>, save_every: u64) -> Result<Self, String> {
        let heap_len = (heap_kib as usize * 1024).next_multiple_of(dbos_snapshot::PAGE_SIZE);
        let snappy =
            Snappy::new(heap_len as u64).map_err(|e| format!("heap of {heap_kib} KiB: {e:?}"))?;
        snappy
            .populate(0, heap_len as u64)
            .map_err(|e| format!("mapping the heap: {e:?}"))?;
        // SAFETY: Snappy's heap is mapped, readable and writable for
        // `heap_len` bytes (populated above) for as long as `snappy` lives;
        // the table is dropped before it (field order of `SnapEngine`), and
        // only the table writes the heap (Snappy reads it for snapshots).
        let heap = unsafe { HeapMem::new(snappy.heap(), heap_len) };
        // SAFETY: rdtsc has no preconditions.
        let seed = unsafe { core::arch::x86_64::_rdtsc() };
        let mut table = Table::format(heap, seed)?;
        let mut state = SaveState {
            status: SaveStatus {
                last_ok: true,
                ..SaveStatus::default()
            },
            ..SaveState::default()
        };
        if let Some(f) = &file {
            state.current = load(f, &mut table)?;
            if let Some(s) = &state.current {
                state.status.last_save_unix = s.created_ms / 1000;
                state.status.latest_file_bytes = s.len;
            }
        }
        Ok(SnapEngine {
            table: spin::RwLock::new(table),
            snappy,
            file,
            changes: AtomicU64::new(0),
            saving: AtomicBool::new(false),
            state: spin::Mutex::new(state),
            save_every,
            last_periodic: AtomicU64::new(now_ns()),
        })
    }

    /// Bytes of the heap.
    pub fn heap_len(&self) -> usize {
        self.snappy.heap_len()
    }

    /// Seconds between periodic saves (0: none).
    pub fn save_every(&self) -> u64 {
        self.save_every
    }

    /// The size of a data region of the file.
    fn region(&self) -> u64 {
        (self.heap_len() as u64 + BLOCK).next_multiple_of(BLOCK)
    }

    /// vCPU 0's chores between rounds: a periodic save when one is due and
    /// keys changed since the last one.
    pub fn chores(&self) {
        if self.save_every == 0 {
            return;
        }
        let now = now_ns();
        let last = self.last_periodic.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.save_every * 1_000_000_000 {
            return;
        }
        self.last_periodic.store(now, Ordering::Relaxed);
        let s = self.save_status();
        if s.changes_since_save == 0 || s.in_progress {
            return;
        }
        if let Err(e) = self.save() {
            println!("memory engine: periodic save failed: {e}");
        }
    }

    /// Takes a snapshot, writes it, releases it and records the outcome.
    fn save_now(&self) -> Result<(), EngineError> {
        let Some(file) = &self.file else {
            return Err(EngineError::Unsupported(format!(
                "saving needs a snapshot file: dbos run --file {FILE_NAME}=PATH ..."
            )));
        };
        if self.state.lock().broken {
            return Err(EngineError::Unsupported(
                "save refused: an earlier save failed writing its superblock; restart the server"
                    .into(),
            ));
        }
        if self.saving.swap(true, Ordering::AcqRel) {
            return Err(EngineError::Unsupported(IN_PROGRESS.into()));
        }
        let cow_before = self.snappy.stats().bytes_copied;
        let t0 = now_ns();
        let guard = self.table.write();
        let taken = self.snappy.take_snapshot();
        let changes = self.changes.load(Ordering::Relaxed);
        drop(guard);
        let stall_us = (now_ns() - t0) / 1000;
        let snap = match taken {
            Ok(s) => s,
            Err(e) => {
                let mut st = self.state.lock();
                st.failed += 1;
                st.status.last_ok = false;
                drop(st);
                self.saving.store(false, Ordering::Release);
                return Err(EngineError::Unsupported(format!(
                    "save failed: cannot take a snapshot: {e:?}"
                )));
            }
        };
        let pte_writes = self.snappy.stats().last_take_writes;
        {
            let mut st = self.state.lock();
            st.snapshots += 1;
            st.status.latest_stall_us = stall_us;
            st.pte_writes = pte_writes;
        }
        let current = self.state.lock().current;
        let written = self.write(file, &snap, current);
        let copied = self.snappy.stats().bytes_copied - cow_before;
        if let Err(e) = self.snappy.release_snapshot(snap) {
            println!("memory engine: releasing a snapshot: {e:?}");
        }
        let mut st = self.state.lock();
        st.status.latest_copied_bytes = copied;
        let result = match written {
            Ok(s) => {
                st.status.last_ok = true;
                st.status.saves += 1;
                st.status.last_save_unix = s.created_ms / 1000;
                st.status.latest_file_bytes = s.len;
                st.changes_at_save = changes;
                st.current = Some(s);
                println!(
                    "memory engine: snapshot {} saved: {} keys, {} bytes at offset {}; writers \
                     stalled {stall_us} us, {pte_writes} page-table writes, {copied} bytes \
                     copied on write",
                    s.seq, s.records, s.len, s.offset
                );
                Ok(())
            }
            Err((e, superblock)) => {
                st.status.last_ok = false;
                st.failed += 1;
                st.broken |= superblock;
                println!("memory engine: save failed, the previous snapshot is kept: {e}");
                Err(EngineError::Unsupported(format!("save failed: {e}")))
            }
        };
        drop(st);
        self.saving.store(false, Ordering::Release);
        result
    }

    /// Dumps the snapshot into the region that does not overlap `current`,
    /// flushes, then writes and flushes the other superblock. On error,
    /// whether the superblock write had begun.
    fn write(
        &self,
        file: &HostFile,
        snap: &Snapshot,
        current: Option<Super>,
    ) -> Result<Super, (String, bool)> {
        let base = place(current.as_ref(), self.region());
        let created_ms = unix_ms();
        let sink = FileSink {
            file,
            base,
            written: 0,
            limit: self.region(),
            buf: Vec::with_capacity(IO_CHUNK),
        };
        let plain = |e: String| (e, false);
        let mut enc = Encoder::new(sink, created_ms).map_err(plain)?;
        let mut view = SnapView {
            snappy: &self.snappy,
            snap,
        };
        dump(&mut view, &mut enc).map_err(|e| {
            plain(match e {
                DumpError::View(e) => format!("reading the snapshot: {e}"),
                DumpError::Sink(e) => e,
                DumpError::Layout(e) => format!("the snapshot's heap is inconsistent: {e}"),
            })
        })?;
        let (mut sink, summary) = enc.finish().map_err(plain)?;
        sink.flush_buf().map_err(plain)?;
        file.flush().map_err(|e| plain(io("flushing", e)))?;
        let s = Super {
            slot: current.map_or(0, |c| 1 - c.slot),
            seq: current.map_or(1, |c| c.seq + 1),
            offset: base,
            len: summary.bytes,
            records: summary.records,
            created_ms,
        };
        file.write_at(SUPER_AT[s.slot], &s.encode())
            .and_then(|()| file.flush())
            .map_err(|e| (io("writing the superblock of", e), true))?;
        Ok(s)
    }

    fn read(&self) -> spin::RwLockReadGuard<'_, Table> {
        self.table.read()
    }
}

/// Loads the newest valid snapshot of `file` into `table`; `None` if the
/// file holds none yet.
fn load(file: &HostFile, table: &mut Table) -> Result<Option<Super>, String> {
    let size = file.size().map_err(|e| io("sizing", e))?;
    let mut slots = Vec::new();
    for (slot, &at) in SUPER_AT.iter().enumerate() {
        let mut b = [0u8; SUPER_LEN];
        let got = if at < size {
            file.read_at(at, &mut b).map_err(|e| io("reading", e))?
        } else {
            0
        };
        b[got..].fill(0);
        slots.push((at, Super::parse(slot, &b)));
    }
    let newest = slots
        .iter()
        .filter_map(|(_, s)| match s {
            SlotState::Valid(s) => Some(*s),
            _ => None,
        })
        .max_by_key(|s| s.seq);
    for (at, s) in &slots {
        if let SlotState::Bad(why) = s {
            match newest {
                Some(n) => println!(
                    "memory engine: ignored the superblock at byte offset {at} of '{FILE_NAME}' \
                     ({why}: a save interrupted while writing it), using snapshot {} beside it",
                    n.seq
                ),
                None => {
                    return Err(format!(
                        "the snapshot file '{FILE_NAME}' is damaged at byte offset {at}: \
                         superblock: {why}; no valid superblock beside it (not a snapshot file \
                         of the guest's memory engine?)"
                    ))
                }
            }
        }
    }
    let Some(s) = newest else {
        if size > 0 {
            println!(
                "memory engine: '{FILE_NAME}' holds no superblock yet ({size} bytes of an \
                 interrupted first save), starting empty"
            );
        } else {
            println!("memory engine: '{FILE_NAME}' is empty, starting empty");
        }
        return Ok(None);
    };
    let src = FileSource {
        file,
        next: s.offset,
        end: s.offset + s.len,
        buf: Vec::new(),
        at: 0,
    };
    let decoded = decode(src, &mut |r: Record<'_>| {
        table
            .apply(&[Write::Put {
                key: r.key,
                value: r.value,
                expires: r.expires.map(UnixMs),
            }])
            .map(|_| ())
            .map_err(|e| format!("{e}"))
    });
    match decoded {
        Ok(d) => {
            println!(
                "memory engine: loaded snapshot {} ({} keys, {} bytes at byte offset {} of \
                 '{FILE_NAME}')",
                s.seq, d.records, d.bytes, s.offset
            );
            Ok(Some(s))
        }
        Err(e) => {
            let at = s.offset + e.offset();
            let what = match &e {
                DecodeError::Rejected { .. } => "does not fit the heap",
                _ => "is damaged",
            };
            Err(format!(
                "the newest snapshot ({}, bytes {}..{} of '{FILE_NAME}') {what} at byte offset \
                 {at} of the file: {e} (offsets within the snapshot)",
                s.seq,
                s.offset,
                s.offset + s.len
            ))
        }
    }
}

impl KvEngine for SnapEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Option<UnixMs>>, EngineError> {
        Ok(self.read().get(key, out))
    }

    fn write(&self, writes: &[Write<'_>]) -> Result<Ticket, EngineError> {
        Table::check_limits(writes)?;
        let n = self.table.write().apply(writes)?;
        self.changes.fetch_add(n, Ordering::Relaxed);
        Ok(Ticket(0))
    }

    fn wait(&self, _ticket: Ticket) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every write is as durable as it will be until the next snapshot.
    fn durable(&self) -> Ticket {
        Ticket(u64::MAX)
    }

    fn max_writes(&self) -> usize {
        MAX_WRITES
    }

    fn max_key(&self) -> usize {
        MAX_KEY
    }

    fn max_value(&self) -> usize {
        MAX_VALUE
    }

    fn ordered(&self) -> bool {
        false
    }

    fn scan(
        &self,
        from: &Cursor,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8], Option<UnixMs>),
    ) -> Result<Cursor, EngineError> {
        let Some(slot) = scan_slot(from)? else {
            return Ok(Cursor::Done);
        };
        let mut entries = Vec::new();
        // Copied out under the lock, delivered after it.
        let next = self.read().scan(slot, limit, &mut entries);
        for (k, v, e) in &entries {
            f(k, v, *e);
        }
        Ok(next.map_or(Cursor::Done, Cursor::Slot))
    }

    fn len(&self) -> Result<u64, EngineError> {
        Ok(self.read().len())
    }

    fn expiring(&self) -> Result<u64, EngineError> {
        Ok(self.read().expiring())
    }

    fn clear(&self) -> Result<Ticket, EngineError> {
        let n = self.table.write().clear();
        self.changes.fetch_add(n, Ordering::Relaxed);
        Ok(Ticket(0))
    }

    /// Runs the whole save on this vCPU (see the module documentation).
    fn bgsave(&self) -> Result<(), EngineError> {
        self.save_now()
    }

    fn save(&self) -> Result<(), EngineError> {
        self.save_now()
    }

    fn save_status(&self) -> SaveStatus {
        let st = self.state.lock();
        let mut s = st.status.clone();
        s.in_progress = self.saving.load(Ordering::Acquire);
        s.changes_since_save = self
            .changes
            .load(Ordering::Relaxed)
            .saturating_sub(st.changes_at_save);
        s
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let (keys, used, bump, heap, slots) = {
            let t = self.read();
            (
                t.len(),
                t.used_bytes(),
                t.heap_bytes_used(),
                t.heap_len() as u64,
                t.slots() as u64,
            )
        };
        let st = self.state.lock();
        out.extend_from_slice(&[
            ("keys", keys),
            ("heap_bytes", heap),
            ("heap_bytes_used", bump),
            ("heap_record_bytes", used),
            ("index_slots", slots),
            ("snapshots", st.snapshots),
            ("snapshot_stall_us_last", st.status.latest_stall_us),
            ("snapshot_bytes_copied_last", st.status.latest_copied_bytes),
            ("snapshot_pte_writes_last", st.pte_writes),
            ("snapshot_file_bytes_last", st.status.latest_file_bytes),
            ("snapshot_seq", st.current.map_or(0, |s| s.seq)),
            ("saves_failed", st.failed),
        ]);
    }

    fn shutdown(&self, save: bool) -> Result<(), EngineError> {
        loop {
            // A save on another vCPU: let it finish.
            while self.saving.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            if !save {
                return Ok(());
            }
            match self.save_now() {
                Err(EngineError::Unsupported(m)) if m == IN_PROGRESS => continue,
                r => return r,
            }
        }
    }
}
