//! A tiny key-value table on the engine's pages: `u64` keys `0..capacity`
//! with `u64` values, key `k` in slot `k % SLOTS_PER_PAGE` of page
//! `first_page + k / SLOTS_PER_PAGE`; value 0 means absent. A transaction
//! writes several keys atomically. It is the data layer the crash tests
//! run on until the B+tree arrives.

use crate::device::BlockDevice;
use crate::engine::{Engine, Error, PageWrite};
use crate::page::{PAGE_CONTENTS, PAGE_HEADER};
use crate::pool::BufferManager;
use crate::{Lsn, PageId};
use alloc::vec::Vec;

/// Bytes per slot.
pub const SLOT: usize = 8;

/// Slots per page.
pub const SLOTS_PER_PAGE: u64 = (PAGE_CONTENTS / SLOT) as u64;

/// A key-value table on pages `first_page .. first_page + pages`.
pub struct KvTable<'e, D: BlockDevice, B> {
    engine: &'e Engine<D, B>,
    first_page: PageId,
    pages: u64,
}

impl<'e, D: BlockDevice + Send + 'static, B: BufferManager> KvTable<'e, D, B> {
    /// The table on `pages` pages from `first_page` of `engine`.
    pub fn new(engine: &'e Engine<D, B>, first_page: PageId, pages: u64) -> KvTable<'e, D, B> {
        KvTable {
            engine,
            first_page,
            pages,
        }
    }

    /// Keys the table holds.
    pub fn capacity(&self) -> u64 {
        self.pages * SLOTS_PER_PAGE
    }

    fn place(&self, key: u64) -> Result<(PageId, usize), Error> {
        if key >= self.capacity() {
            return Err(Error::NoSuchPage(PageId(
                self.first_page.0 + key / SLOTS_PER_PAGE,
            )));
        }
        let page = PageId(self.first_page.0 + key / SLOTS_PER_PAGE);
        Ok((page, PAGE_HEADER + (key % SLOTS_PER_PAGE) as usize * SLOT))
    }

    /// The value of `key` (0: absent).
    pub fn get(&self, key: u64) -> Result<u64, Error> {
        let (page, offset) = self.place(key)?;
        let mut v = [0u8; SLOT];
        self.engine.read(page, offset, &mut v)?;
        Ok(u64::from_le_bytes(v))
    }

    /// Logs and applies `puts` as one transaction; returns the LSN to wait
    /// for (see [`Engine::append_commit`]).
    pub fn put_async(&self, puts: &[(u64, u64)]) -> Result<Lsn, Error> {
        let values: Vec<[u8; SLOT]> = puts.iter().map(|&(_, v)| v.to_le_bytes()).collect();
        let mut writes = Vec::with_capacity(puts.len());
        for (&(k, _), v) in puts.iter().zip(&values) {
            let (page, offset) = self.place(k)?;
            writes.push(PageWrite {
                page,
                offset,
                data: v,
            });
        }
        self.engine.append_commit(&writes)
    }

    /// Commits `puts` as one transaction, durably.
    pub fn put(&self, puts: &[(u64, u64)]) -> Result<Lsn, Error> {
        let lsn = self.put_async(puts)?;
        self.engine.wait_durable(lsn)?;
        Ok(lsn)
    }
}
