//! The `btree` engine: the server's commands on the durable store
//! ([`crate::Store`]: a logged B+tree on a buffer pool). Every write is a
//! log unit; the server waits for the units of all the commands it ran in
//! one round before it replies, so one log write carries them all.
//!
//! A value is stored with a one-byte header: `0` (no expiry) or `1`
//! followed by the expiry (u64 little-endian, milliseconds since the
//! epoch), so expiry survives restarts with the data.

use super::engine::{Cursor, EngineError, KvEngine, SaveStatus, Ticket, UnixMs, Write};
use crate::store::{Error, Store};
use crate::Op;
use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use dbos_bufferpool::btree::{MAX_KEY, MAX_VALUE};
use dbos_bufferpool::{BlockDevice, BufferManager, Engine, Lsn};

const NO_EXPIRY: u8 = 0;
const EXPIRY: u8 = 1;
const HEADER_MAX: usize = 9;

/// The engine (see the module documentation).
pub struct BtreeEngine<D: BlockDevice, B: BufferManager> {
    store: Store<D, B>,
    clock: fn() -> UnixMs,
    /// When the last checkpoint (SAVE, SHUTDOWN) completed, seconds.
    last_save: AtomicU64,
    saves: AtomicU64,
    changes: AtomicU64,
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> BtreeEngine<D, B>
where
    Engine<D, B>: Sync,
{
    /// The engine on an open store; `clock` tells the time for LASTSAVE.
    pub fn new(store: Store<D, B>, clock: fn() -> UnixMs) -> Self {
        BtreeEngine {
            store,
            clock,
            last_save: AtomicU64::new(clock().0 / 1000),
            saves: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// The store under the engine.
    pub fn store(&self) -> &Store<D, B> {
        &self.store
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

impl<D: BlockDevice + Send + 'static, B: BufferManager> KvEngine for BtreeEngine<D, B>
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
        self.changes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        Ok(Ticket(lsn.0))
    }

    fn wait(&self, ticket: Ticket) -> Result<(), EngineError> {
        self.store.wait(Lsn(ticket.0)).map_err(err)
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
            self.changes.fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
    }

    fn bgsave(&self) -> Result<(), EngineError> {
        Err(EngineError::Unsupported(
            "BGSAVE (an online backup) is not built for the btree engine yet; every \
             acknowledged write is already durable in its log, and SAVE takes a checkpoint"
                .into(),
        ))
    }

    fn save(&self) -> Result<(), EngineError> {
        self.store.checkpoint().map_err(err)?;
        self.last_save
            .store((self.clock)().0 / 1000, Ordering::Relaxed);
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.changes.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn save_status(&self) -> SaveStatus {
        SaveStatus {
            in_progress: false,
            last_save_unix: self.last_save.load(Ordering::Relaxed),
            last_ok: true,
            saves: self.saves.load(Ordering::Relaxed),
            changes_since_save: self.changes.load(Ordering::Relaxed),
            ..SaveStatus::default()
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
        // Every write is durable already; a checkpoint makes the next open
        // replay nothing.
        self.save()
    }
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
