//! A store that reports every write it acknowledged, for crash tests: the
//! guest prints `acked RECORD VERSION`, `dbos-kv --acks FILE` appends it to
//! a file; after a crash, every record so reported must hold that version
//! or a newer one.

use super::check_value;
use crate::{Kv, Op};
use alloc::vec::Vec;

/// `kv`, calling `on_ack(record, version)` for every value of the
/// workload's format ([`check_value`] of `value_size` bytes) that a put or
/// transaction wrote and `kv` acknowledged (after it returned: durable).
pub struct Acking<'a, K: ?Sized, F> {
    pub kv: &'a K,
    pub value_size: usize,
    pub on_ack: F,
}

impl<K: Kv + ?Sized, F: Fn(u64, u64) + Sync> Acking<'_, K, F> {
    fn ack(&self, value: &[u8]) {
        if let Ok((record, version)) = check_value(value, self.value_size) {
            (self.on_ack)(record, version);
        }
    }
}

impl<K: Kv + ?Sized, F: Fn(u64, u64) + Sync> Kv for Acking<'_, K, F> {
    type Error = K::Error;
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, K::Error> {
        self.kv.get(key, out)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, K::Error> {
        let r = self.kv.put(key, value)?;
        self.ack(value);
        Ok(r)
    }
    fn delete(&self, key: &[u8]) -> Result<bool, K::Error> {
        self.kv.delete(key)
    }
    fn transaction(&self, ops: &[Op<'_>]) -> Result<(), K::Error> {
        self.kv.transaction(ops)?;
        for op in ops {
            if let Op::Put { value, .. } = op {
                self.ack(value);
            }
        }
        Ok(())
    }
    fn scan(
        &self,
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, K::Error> {
        self.kv.scan(start, limit, f)
    }
}
