//! A command's view of the data: reads go to the writes it has made so
//! far, then to the engine, with expired entries filtered out; writes are
//! collected and applied as one atomic group at the end of the command
//! (or of a whole MULTI/EXEC block), which is what makes MSET, RENAME and
//! EXEC atomic and a block one durable commit.

use super::engine::{EngineError, KvEngine, Resident, Ticket, UnixMs, Write};
use super::session::Blocked;
use alloc::vec::Vec;

/// A value and its expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expires: Option<UnixMs>,
}

/// The view (see the module documentation).
pub struct Db<'e, E: KvEngine + ?Sized> {
    engine: &'e E,
    now: UnixMs,
    /// The latest write per key, in first-write order (`None` = deleted).
    pending: Vec<(Vec<u8>, Option<Entry>)>,
    /// Reads that found a key / found none (Redis's keyspace hits and
    /// misses), counted while `counting` (for reading commands: a write's
    /// look at the old value is not a hit, as in Redis).
    pub hits: u64,
    pub misses: u64,
    pub counting: bool,
    /// Writes with an expiry that [`commit`](Self::commit) applied.
    pub expiring_writes: u64,
    /// Reads do not wait for storage: a read that would wait fails with
    /// [`EngineError::WouldWait`] and says why in `blocked`.
    pub no_wait: bool,
    /// What a read needed that was not there without waiting.
    pub blocked: Option<Blocked>,
}

impl<'e, E: KvEngine + ?Sized> Db<'e, E> {
    /// A view at time `now` (entries expiring at or before it are gone).
    pub fn new(engine: &'e E, now: UnixMs) -> Db<'e, E> {
        Db {
            engine,
            now,
            pending: Vec::new(),
            hits: 0,
            misses: 0,
            counting: true,
            expiring_writes: 0,
            no_wait: false,
            blocked: None,
        }
    }

    /// The engine under the view.
    pub fn engine(&self) -> &'e E {
        self.engine
    }

    /// The view's time.
    pub fn now(&self) -> UnixMs {
        self.now
    }

    /// Whether an entry with this expiry is still alive.
    pub fn alive(&self, expires: Option<UnixMs>) -> bool {
        expires.is_none_or(|t| t > self.now)
    }

    /// The live entry of `key`, if any.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Entry>, EngineError> {
        let found = if let Some((_, e)) = self.pending.iter().find(|(k, _)| k == key) {
            e.clone()
        } else {
            let mut value = Vec::new();
            let got = if self.no_wait {
                match self.engine.get_resident(key, &mut value)? {
                    Resident::Done(got) => got,
                    Resident::Missing(page) => return Err(self.block(Blocked::Read(page))),
                    Resident::WouldBlock => return Err(self.block(Blocked::Storage)),
                }
            } else {
                self.engine.get(key, &mut value)?
            };
            match got {
                Some(expires) if self.alive(expires) => Some(Entry { value, expires }),
                _ => None,
            }
        };
        if self.counting {
            if found.is_some() {
                self.hits += 1;
            } else {
                self.misses += 1;
            }
        }
        Ok(found)
    }

    fn block(&mut self, why: Blocked) -> EngineError {
        self.blocked = Some(why);
        EngineError::WouldWait
    }

    /// Whether `key` has a live entry.
    pub fn exists(&mut self, key: &[u8]) -> Result<bool, EngineError> {
        Ok(self.get(key)?.is_some())
    }

    fn set(&mut self, key: &[u8], entry: Option<Entry>) {
        match self.pending.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = entry,
            None => self.pending.push((key.to_vec(), entry)),
        }
    }

    /// Sets `key` (applied at [`commit`](Self::commit)).
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, expires: Option<UnixMs>) {
        self.set(key, Some(Entry { value, expires }));
    }

    /// Removes `key` (applied at [`commit`](Self::commit)).
    pub fn delete(&mut self, key: &[u8]) {
        self.set(key, None);
    }

    /// Writes collected and not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Applies the collected writes as one atomic group; the ticket to
    /// wait for, or `None` if there was nothing to write.
    pub fn commit(&mut self) -> Result<Option<Ticket>, EngineError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let writes: Vec<Write<'_>> = self
            .pending
            .iter()
            .map(|(k, e)| match e {
                Some(e) => Write::Put {
                    key: k,
                    value: &e.value,
                    expires: e.expires,
                },
                None => Write::Delete { key: k },
            })
            .collect();
        let t = self.engine.write(&writes);
        if t.is_ok() {
            self.expiring_writes += writes
                .iter()
                .filter(|w| {
                    matches!(
                        w,
                        Write::Put {
                            expires: Some(_),
                            ..
                        }
                    )
                })
                .count() as u64;
        }
        drop(writes);
        self.pending.clear();
        t.map(Some)
    }
}
