//! Active expiry: a sweep through the keyspace that deletes keys whose
//! expiry has passed, so that they stop taking space and stop being
//! counted by DBSIZE (reads already skip them: expiry is lazy first).
//!
//! The host keeps a [`Sweeper`] and calls [`Sweeper::step`] now and then
//! (Redis samples keys with expiries ten times a second; here the whole
//! keyspace is walked a slice at a time). Each delete takes its
//! key's lock and checks again that the key is still expired, so a key set
//! again meanwhile is kept. The deletes are not waited for: after a crash a
//! swept key may be back, still expired.
//!
//! A store without keys that expire costs nothing: once a whole pass found
//! no key with an expiry, and no write with an expiry was applied since
//! that pass began ([`Stats::expiring_writes`], counted after each write is
//! applied), the sweeper rests until that count moves. A key with an
//! expiry written before a pass began is present for the whole pass, so
//! the pass sees it; one written after makes the count move. (Walking the
//! keyspace regardless took 5% of the memory engine's CPU under
//! `redis-benchmark -t set,get`, none of whose keys expire.)
//!
//! Each whole pass also measures the mean remaining time to live of the
//! keys with an expiry it found, which `INFO keyspace` reports as
//! `avg_ttl` (Redis estimates it from its expiry sampling in the same
//! way; 0 when no key has one).
//!
//! [`Stats::expiring_writes`]: super::session::Stats::expiring_writes

use super::engine::{Cursor, EngineError, KvEngine, Write};
use super::session::Shared;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// What a pass saw of the keys with an expiry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Keys with an expiry, expired or not.
    expiring: u64,
    /// Of those not expired yet: how many, and the sum of their
    /// remaining times to live in milliseconds.
    live: u64,
    live_ttl_ms: u64,
}

/// Deletes the expired keys among about `limit` entries from `from` on,
/// adding what it saw of the keys with an expiry to `seen`; returns where
/// the next sweep resumes (the start again after the end) and how many it
/// deleted.
fn sweep<E: KvEngine>(
    shared: &Shared<E>,
    from: &Cursor,
    limit: usize,
    seen: &mut Seen,
) -> Result<(Cursor, u64), EngineError> {
    let now = (shared.clock)();
    let mut expired: Vec<Vec<u8>> = Vec::new();
    let next = shared.engine.scan(from, limit, &mut |k, _, exp| {
        let Some(t) = exp else { return };
        seen.expiring += 1;
        if t <= now {
            expired.push(k.to_vec());
        } else {
            seen.live += 1;
            seen.live_ttl_ms = seen.live_ttl_ms.saturating_add(t.0 - now.0);
        }
    })?;
    let mut deleted = 0;
    let mut value = Vec::new();
    for key in &expired {
        let _held = shared.locks.lock(core::iter::once(key.as_slice()));
        if let Some(Some(t)) = shared.engine.get(key, &mut value)? {
            if t <= now {
                shared.engine.write(&[Write::Delete { key }])?;
                deleted += 1;
            }
        }
    }
    shared
        .stats
        .expired_keys
        .fetch_add(deleted, Ordering::Relaxed);
    let next = match next {
        Cursor::Done => Cursor::Start,
        c => c,
    };
    Ok((next, deleted))
}

/// Active expiry's state between sweeps: where the next resumes, and
/// whether it may rest (module documentation).
#[derive(Debug)]
pub struct Sweeper {
    cursor: Cursor,
    /// `expiring_writes` when the current pass began.
    pass_began: u64,
    /// What the current pass saw of the keys with an expiry.
    seen: Seen,
    /// The last whole pass found no key with an expiry: resting while
    /// `expiring_writes` stays at `pass_began`.
    rested: bool,
}

impl Default for Sweeper {
    fn default() -> Sweeper {
        Sweeper::new()
    }
}

impl Sweeper {
    /// A sweeper at the start of its first pass.
    pub fn new() -> Sweeper {
        Sweeper {
            cursor: Cursor::Start,
            pass_began: 0,
            seen: Seen::default(),
            rested: false,
        }
    }

    /// Whether no key can be due: the last whole pass found none with an
    /// expiry and no write with one was applied since it began.
    pub fn resting<E: KvEngine>(&mut self, shared: &Shared<E>) -> bool {
        self.rested &= shared.stats.expiring_writes.load(Ordering::Acquire) == self.pass_began;
        self.rested
    }

    /// Sweeps about `limit` entries on from where the last step ended:
    /// the keys deleted. Does nothing while [`resting`](Self::resting).
    pub fn step<E: KvEngine>(
        &mut self,
        shared: &Shared<E>,
        limit: usize,
    ) -> Result<u64, EngineError> {
        if self.resting(shared) {
            return Ok(0);
        }
        if self.cursor == Cursor::Start {
            self.pass_began = shared.stats.expiring_writes.load(Ordering::Acquire);
            self.seen = Seen::default();
        }
        let (next, deleted) = sweep(shared, &self.cursor, limit, &mut self.seen)?;
        self.cursor = next;
        if self.cursor == Cursor::Start {
            // A whole pass: its mean time to live is INFO's `avg_ttl`.
            let avg = self
                .seen
                .live_ttl_ms
                .checked_div(self.seen.live)
                .unwrap_or(0);
            shared.stats.avg_ttl_ms.store(avg, Ordering::Relaxed);
        }
        self.rested = self.cursor == Cursor::Start
            && self.seen.expiring == 0
            && shared.stats.expiring_writes.load(Ordering::Acquire) == self.pass_began;
        Ok(deleted)
    }

    /// Whether the last step ended a pass (the next begins one).
    pub fn pass_ended(&self) -> bool {
        self.cursor == Cursor::Start
    }
}
