//! Active expiry: a sweep through the keyspace that deletes keys whose
//! expiry has passed, so that they stop taking space and stop being
//! counted by DBSIZE (reads already skip them: expiry is lazy first).
//!
//! The host calls [`sweep`] now and then with a small `limit` and the
//! cursor it returned last (Redis samples keys with expiries ten times a
//! second; here the whole keyspace is walked a slice at a time). Each
//! delete takes its key's lock and checks again that the key is still
//! expired, so a key set again meanwhile is kept. The deletes are not
//! waited for: after a crash a swept key may be back, still expired.

use super::engine::{Cursor, EngineError, KvEngine, Write};
use super::session::Shared;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Deletes the expired keys among about `limit` entries from `from` on;
/// returns where the next sweep resumes (the start again after the end)
/// and how many it deleted.
pub fn sweep<E: KvEngine>(
    shared: &Shared<E>,
    from: &Cursor,
    limit: usize,
) -> Result<(Cursor, u64), EngineError> {
    let now = (shared.clock)();
    let mut expired: Vec<Vec<u8>> = Vec::new();
    let next = shared.engine.scan(from, limit, &mut |k, _, exp| {
        if exp.is_some_and(|t| t <= now) {
            expired.push(k.to_vec());
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
