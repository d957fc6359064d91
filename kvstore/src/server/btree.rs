//! The `btree` engine: the server's commands on the durable store
//! ([`crate::Store`]: a logged B+tree on a buffer pool). Every write is a
//! log unit; the server waits for the units of all the commands it ran in
//! one round before it replies, so one log write carries them all.
//!
//! BGSAVE and SAVE make an online backup through a copier the host gives
//! ([`BtreeEngine::with_backup`]; in process mode `crate::backup`, a copy
//! of the store's file that opens as a store), in the background on a
//! thread the host starts. Without one, SAVE takes a checkpoint and BGSAVE
//! is refused.
//!
//! A value is stored with a one-byte header: `0` (no expiry) or `1`
//! followed by the expiry (u64 little-endian, milliseconds since the
//! epoch), so expiry survives restarts with the data.

use super::engine::{
    BeginRead, Cursor, DeviceError, EngineError, KvEngine, PageId, PendingRead, Resident,
    SaveStatus, Ticket, UnixMs, Write,
};
use crate::store::{Error, Store};
use crate::Op;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dbos_bufferpool::btree::{MAX_KEY, MAX_VALUE};
use dbos_bufferpool::{BlockDevice, BufferManager, Engine, Lsn};

const NO_EXPIRY: u8 = 0;
const EXPIRY: u8 = 1;
const HEADER_MAX: usize = 9;

/// Copies the store (an online backup), returning the bytes written.
pub type Backup<D, B> = Arc<dyn Fn(&Store<D, B>) -> Result<u64, String> + Send + Sync>;

/// Runs a job in the background (a thread, on the host); false if it
/// could not be started.
pub type Spawn = fn(Box<dyn FnOnce() + Send>) -> bool;

/// The state of saves, shared with a background save.
#[derive(Default)]
struct Saves {
    in_progress: AtomicBool,
    /// When the last save completed, seconds since the epoch.
    last_save: AtomicU64,
    last_failed: AtomicBool,
    saves: AtomicU64,
    file_bytes: AtomicU64,
    /// Writes since the last save began.
    changes: AtomicU64,
}

/// The engine (see the module documentation).
pub struct BtreeEngine<D: BlockDevice, B: BufferManager> {
    store: Arc<Store<D, B>>,
    clock: fn() -> UnixMs,
    saves: Arc<Saves>,
    backup: Option<(Backup<D, B>, Spawn)>,
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> BtreeEngine<D, B>
where
    Engine<D, B>: Sync,
{
    /// The engine on an open store; `clock` tells the time for LASTSAVE.
    pub fn new(store: Store<D, B>, clock: fn() -> UnixMs) -> Self {
        let saves = Saves::default();
        saves.last_save.store(clock().0 / 1000, Ordering::Relaxed);
        BtreeEngine {
            store: Arc::new(store),
            clock,
            saves: Arc::new(saves),
            backup: None,
        }
    }

    /// Makes SAVE and BGSAVE copy the store with `backup`, BGSAVE on a job
    /// started by `spawn`.
    pub fn with_backup(mut self, backup: Backup<D, B>, spawn: Spawn) -> Self {
        self.backup = Some((backup, spawn));
        self
    }

    /// The store under the engine.
    pub fn store(&self) -> &Store<D, B> {
        &self.store
    }

    /// [`Store::checkpoint_if_over`].
    pub fn checkpoint_if_over(&self, percent: u64) -> Result<bool, EngineError> {
        self.store.checkpoint_if_over(percent).map_err(err)
    }
}

fn encode(value: &[u8], expires: Option<UnixMs>) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + HEADER_MAX);
    match expires {
        None => v.push(NO_EXPIRY),
        Some(t) => {
            v.push(EXPIRY);
            v.extend_from_slice(&t.0.to_le_bytes());
        }
    }
    v.extend_from_slice(value);
    v
}

/// Splits a stored value into its expiry and the value's offset.
fn decode(stored: &[u8]) -> Result<(Option<UnixMs>, usize), EngineError> {
    match stored.first() {
        Some(&NO_EXPIRY) => Ok((None, 1)),
        Some(&EXPIRY) if stored.len() >= HEADER_MAX => Ok((
            Some(UnixMs(u64::from_le_bytes(
                stored[1..9].try_into().expect("8 bytes"),
            ))),
            HEADER_MAX,
        )),
        _ => Err(EngineError::Failed(format!(
            "a stored value of {} bytes has no valid header (byte 0 = {:?}): not a server store",
            stored.len(),
            stored.first()
        ))),
    }
}

fn err(e: Error) -> EngineError {
    use dbos_bufferpool::btree::TreeError;
    match e {
        Error::KeyTooLong { .. } | Error::ValueTooLarge { .. } => {
            EngineError::TooLarge(format!("{e}"))
        }
        Error::Engine(dbos_bufferpool::Error::StoreFull { .. }) => {
            EngineError::Full(format!("{e}"))
        }
        Error::Tree(TreeError::TooManyChanges { changes }) => EngineError::TooManyWrites {
            writes: changes,
            max: crate::store::MAX_TRANSACTION,
        },
        Error::Tree(TreeError::TooManyLargeValues { .. }) => EngineError::TooLarge(format!("{e}")),
        e => EngineError::Failed(format!("{e}")),
    }
}

impl<D: BlockDevice + Send + 'static, B: BufferManager + Send + 'static> KvEngine
    for BtreeEngine<D, B>
where
    Engine<D, B>: Sync,
{
    fn name(&self) -> &'static str {
        "btree"
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Option<UnixMs>>, EngineError> {
        if key.len() > MAX_KEY {
            // No such key can exist.
            return Ok(None);
        }
        if !self.store.get(key, out).map_err(err)? {
            return Ok(None);
        }
        let (expires, at) = decode(out)?;
        out.drain(..at);
        Ok(Some(expires))
    }

    fn get_resident(
        &self,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Resident<Option<Option<UnixMs>>>, EngineError> {
        if key.len() > MAX_KEY {
            return Ok(Resident::Done(None));
        }
        match self.store.get_resident(key, out).map_err(err)? {
            Resident::Done(false) => Ok(Resident::Done(None)),
            Resident::Done(true) => {
                let (expires, at) = decode(out)?;
                out.drain(..at);
                Ok(Resident::Done(Some(expires)))
            }
            Resident::Missing(page) => Ok(Resident::Missing(page)),
            Resident::WouldBlock => Ok(Resident::WouldBlock),
        }
    }

    fn reads_storage(&self) -> bool {
        true
    }

    fn begin_read(&self, page: PageId) -> Result<BeginRead, EngineError> {
        self.store
            .engine()
            .pool()
            .begin_read(page)
            .map_err(|e| EngineError::Failed(format!("{e}")))
    }

    fn finish_read(
        &self,
        read: PendingRead,
        result: Result<(), DeviceError>,
    ) -> Result<(), EngineError> {
        self.store
            .engine()
            .pool()
            .finish_read(read, result)
            .map_err(|e| EngineError::Failed(format!("{e}")))
    }

    fn write(&self, writes: &[Write<'_>]) -> Result<Ticket, EngineError> {
        if writes.len() > self.max_writes() {
            return Err(EngineError::TooManyWrites {
                writes: writes.len(),
                max: self.max_writes(),
            });
        }
        let encoded: Vec<Option<Vec<u8>>> = writes
            .iter()
            .map(|w| match *w {
                Write::Put { value, expires, .. } => Some(encode(value, expires)),
                Write::Delete { .. } => None,
            })
            .collect();
        let ops: Vec<Op<'_>> = writes
            .iter()
            .zip(&encoded)
            .map(|(w, e)| match (w, e) {
                (Write::Put { key, .. }, Some(v)) => Op::Put { key, value: v },
                (Write::Delete { key }, _) | (Write::Put { key, .. }, None) => Op::Delete { key },
            })
            .collect();
        let lsn = self.store.write(&ops).map_err(err)?;
        self.saves
            .changes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        Ok(Ticket(lsn.0))
    }

    fn wait(&self, ticket: Ticket) -> Result<(), EngineError> {
        self.store.wait(Lsn(ticket.0)).map_err(err)
    }

    fn durable(&self) -> Ticket {
        Ticket(self.store.engine().wal().durable_lsn().0)
    }

    fn max_writes(&self) -> usize {
        crate::store::MAX_TRANSACTION
    }

    fn max_key(&self) -> usize {
        MAX_KEY
    }

    fn max_value(&self) -> usize {
        MAX_VALUE - HEADER_MAX
    }

    fn ordered(&self) -> bool {
        true
    }

    fn scan(
        &self,
        from: &Cursor,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8], Option<UnixMs>),
    ) -> Result<Cursor, EngineError> {
        let start: &[u8] = match from {
            Cursor::Start => &[],
            Cursor::Key(k) => k,
            Cursor::Slot(_) => {
                return Err(EngineError::Unsupported(
                    "the btree engine resumes scans at keys, not slots".into(),
                ))
            }
            Cursor::Done => return Ok(Cursor::Done),
        };
        let mut last: Option<Vec<u8>> = None;
        let mut bad = None;
        let n = self
            .store
            .scan(start, limit.max(1), &mut |k, v| match decode(v) {
                Ok((exp, at)) => {
                    f(k, &v[at..], exp);
                    last = Some(k.to_vec());
                }
                Err(e) => bad = Some(e),
            })
            .map_err(err)?;
        if let Some(e) = bad {
            return Err(e);
        }
        Ok(match last {
            Some(mut k) if n >= limit.max(1) => {
                // The smallest key after the last one delivered.
                k.push(0);
                Cursor::Key(k)
            }
            _ => Cursor::Done,
        })
    }

    fn len(&self) -> Result<u64, EngineError> {
        let mut n = 0u64;
        self.store
            .scan(&[], usize::MAX, &mut |_, _| n += 1)
            .map_err(err)?;
        Ok(n)
    }

    fn expiring(&self) -> Result<u64, EngineError> {
        // A value's first byte says whether an expiry follows (`encode`).
        let mut n = 0u64;
        self.store
            .scan(&[], usize::MAX, &mut |_, v| {
                n += u64::from(v.first() == Some(&EXPIRY))
            })
            .map_err(err)?;
        Ok(n)
    }

    fn clear(&self) -> Result<Ticket, EngineError> {
        let mut ticket = Ticket(0);
        loop {
            let mut keys: Vec<Vec<u8>> = Vec::new();
            self.store
                .scan(&[], self.max_writes(), &mut |k, _| keys.push(k.to_vec()))
                .map_err(err)?;
            if keys.is_empty() {
                return Ok(ticket);
            }
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Delete { key: k }).collect();
            ticket = Ticket(self.store.write(&ops).map_err(err)?.0);
            self.saves
                .changes
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
    }

    fn bgsave(&self) -> Result<(), EngineError> {
        let Some((backup, spawn)) = &self.backup else {
            return Err(EngineError::Unsupported(
                "BGSAVE (an online backup) needs a backup destination, which this server \
                 was started without; every acknowledged write is durable in the log already"
                    .into(),
            ));
        };
        if self.saves.in_progress.swap(true, Ordering::AcqRel) {
            return Err(EngineError::Unsupported(
                "Background save already in progress".into(),
            ));
        }
        let (store, saves, backup, clock) = (
            self.store.clone(),
            self.saves.clone(),
            backup.clone(),
            self.clock,
        );
        let started = spawn(Box::new(move || {
            let _ = run_save(&store, &saves, &*backup, clock);
        }));
        if !started {
            self.saves.in_progress.store(false, Ordering::Release);
            return Err(EngineError::Failed(
                "the background save could not be started".into(),
            ));
        }
        Ok(())
    }

    fn save(&self) -> Result<(), EngineError> {
        let Some((backup, _)) = &self.backup else {
            self.store.checkpoint().map_err(err)?;
            self.saves
                .last_save
                .store((self.clock)().0 / 1000, Ordering::Relaxed);
            self.saves.saves.fetch_add(1, Ordering::Relaxed);
            self.saves.changes.store(0, Ordering::Relaxed);
            return Ok(());
        };
        if self.saves.in_progress.swap(true, Ordering::AcqRel) {
            return Err(EngineError::Unsupported(
                "Background save already in progress".into(),
            ));
        }
        run_save(&self.store, &self.saves, &**backup, self.clock).map_err(EngineError::Failed)
    }

    fn save_status(&self) -> SaveStatus {
        let s = &self.saves;
        SaveStatus {
            in_progress: s.in_progress.load(Ordering::Acquire),
            last_save_unix: s.last_save.load(Ordering::Relaxed),
            last_ok: !s.last_failed.load(Ordering::Relaxed),
            saves: s.saves.load(Ordering::Relaxed),
            latest_file_bytes: s.file_bytes.load(Ordering::Relaxed),
            changes_since_save: s.changes.load(Ordering::Relaxed),
            // Writers are not stopped for a backup.
            latest_stall_us: 0,
            latest_copied_bytes: 0,
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let s = self.store.stats();
        out.extend([
            ("page_reads", s.pool.reads),
            ("page_writes", s.pool.writes),
            ("evictions", s.pool.evictions),
            ("page_visits", s.visits),
            ("log_units", s.engine.transactions),
            ("log_writes", s.log.batches),
            ("log_bytes", s.log.record_bytes),
            ("checkpoints", s.engine.checkpoints),
            ("store_growths", s.engine.growths),
        ]);
        #[cfg(not(target_os = "none"))]
        if let Some(n) = dbos_bufferpool::host::tlb_shootdowns() {
            out.push(("tlb_shootdowns_machine", n));
        }
    }

    fn shutdown(&self, _save: bool) -> Result<(), EngineError> {
        // A background save finishes first (the process exits next).
        while self.saves.in_progress.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // Every acknowledged write is durable already; a checkpoint only
        // makes the next open replay nothing. One that fails (the engine
        // stopped after a failed write, say) must not keep a server that
        // can no longer write from stopping: it is logged, and the next
        // open recovers from the log.
        if let Err(e) = self.store.checkpoint() {
            log::error!("SHUTDOWN without a checkpoint ({e}); the next open recovers from the log");
        }
        Ok(())
    }
}

/// One save (the caller set `in_progress`, cleared here).
#[allow(clippy::type_complexity)]
fn run_save<D: BlockDevice + Send + 'static, B: BufferManager>(
    store: &Store<D, B>,
    saves: &Saves,
    backup: &dyn Fn(&Store<D, B>) -> Result<u64, String>,
    clock: fn() -> UnixMs,
) -> Result<(), String>
where
    Engine<D, B>: Sync,
{
    let changes = saves.changes.load(Ordering::Relaxed);
    let r = backup(store);
    match &r {
        Ok(bytes) => {
            saves.file_bytes.store(*bytes, Ordering::Relaxed);
            saves.last_save.store(clock().0 / 1000, Ordering::Relaxed);
            saves.saves.fetch_add(1, Ordering::Relaxed);
            saves.changes.fetch_sub(changes, Ordering::Relaxed);
            saves.last_failed.store(false, Ordering::Relaxed);
        }
        Err(e) => {
            log::error!("backup failed (the previous one is kept): {e}");
            saves.last_failed.store(true, Ordering::Relaxed);
        }
    }
    saves.in_progress.store(false, Ordering::Release);
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_expiry() {
        let v = encode(b"abc", Some(UnixMs(0x0102_0304_0506_0708)));
        assert_eq!(v.len(), 12);
        assert_eq!(decode(&v), Ok((Some(UnixMs(0x0102_0304_0506_0708)), 9)));
        assert_eq!(decode(&encode(b"", None)), Ok((None, 1)));
        assert!(decode(b"").is_err());
        assert!(decode(&[EXPIRY, 1, 2]).is_err());
        assert!(decode(&[7, 1]).is_err());
    }
}
