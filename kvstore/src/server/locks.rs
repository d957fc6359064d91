//! Striped key locks: what makes a read-modify-write command (INCR,
//! APPEND, SET NX, RENAME, MSETNX, a MULTI/EXEC block) atomic against
//! every other writer of its keys.
//!
//! Each key hashes to one of [`STRIPES`] locks; a command takes the locks
//! of all its keys in ascending stripe order (so two commands never wait
//! for each other in a cycle) and holds them from its first read to its
//! write. Readers take none: a plain GET sees the last applied write.

use alloc::vec::Vec;
use spin::{Mutex, MutexGuard};

/// Locks in the table: two keys share a lock with probability 1/STRIPES.
pub const STRIPES: usize = 1024;

/// The lock table.
pub struct KeyLocks {
    stripes: Vec<Mutex<()>>,
}

/// The locks a command holds; released when dropped.
pub struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for KeyLocks {
    fn default() -> KeyLocks {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// FNV-1a: the stripe of a key.
fn stripe(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

impl KeyLocks {
    /// Takes the locks of `keys` (in stripe order, each once).
    pub fn lock<'a>(&'a self, keys: impl Iterator<Item = &'a [u8]>) -> Held<'a> {
        let mut ids: Vec<usize> = keys.map(stripe).collect();
        ids.sort_unstable();
        ids.dedup();
        Held {
            _guards: ids.into_iter().map(|i| self.stripes[i].lock()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_stripe_are_locked_once_and_released_on_drop() {
        let locks = KeyLocks::default();
        let k: &[u8] = b"key";
        {
            // The same key twice would deadlock if it were locked twice.
            let _held = locks.lock([k, k, b"other".as_slice()].into_iter());
            assert!(locks.stripes[stripe(k)].is_locked());
        }
        assert!(!locks.stripes[stripe(k)].is_locked());
    }
}
