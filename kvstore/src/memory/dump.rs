//! Owns the saver's walk of a frozen heap: it reads a snapshot's view
//! (through whatever the snapshot mechanism offers, as [`View`]) in large
//! sequential chunks, walks the arena block by block (see
//! [`arena`](super::arena): the arena is always a sequence of whole blocks)
//! and encodes every live record into a snapshot file. The view is checked
//! as it is read: a damaged heap gives an error, not a panic.

use super::format::{Encoder, Sink};
use super::layout::*;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A frozen view of the heap.
pub trait View {
    type Error;
    /// Copies `buf.len()` bytes of the view at `offset` into `buf`.
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), Self::Error>;
}

/// Bytes read from the view at once (the fork baseline's largest request).
pub const CHUNK: usize = 256 * 1024;

/// What went wrong while dumping.
#[derive(Debug)]
pub enum DumpError<V, S> {
    /// Reading the view failed.
    View(V),
    /// Writing the file failed.
    Sink(S),
    /// The view is not a consistent heap (a bug: the heap is ours).
    Layout(String),
}

/// What a dump wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub records: u64,
    /// Bytes read from the view.
    pub view_bytes: u64,
}

/// A window on the view: `buf` holds the view's bytes from `start`.
struct Window {
    buf: Vec<u8>,
    start: usize,
    read: u64,
}

impl Window {
    /// The view's bytes `off..off + len`, reading a chunk from `off` if
    /// they are not in the window; never past `limit`.
    fn get<V: View>(
        &mut self,
        view: &mut V,
        off: usize,
        len: usize,
        limit: usize,
    ) -> Result<&[u8], V::Error> {
        if off < self.start || off + len > self.start + self.buf.len() {
            let n = len.max(CHUNK).min(limit - off);
            self.buf.resize(n, 0);
            view.read(off, &mut self.buf)?;
            self.start = off;
            self.read += n as u64;
        }
        let at = off - self.start;
        Ok(&self.buf[at..at + len])
    }
}

/// Encodes every live record of the heap `view` holds into `enc`.
pub fn dump<V: View, W: Sink>(
    view: &mut V,
    enc: &mut Encoder<W>,
) -> Result<DumpSummary, DumpError<V::Error, W::Error>> {
    let mut header = [0u8; H_FREE_HEADS];
    view.read(0, &mut header).map_err(DumpError::View)?;
    let bad = |what: String| DumpError::Layout(what);
    let field = |off| word(&header, off) as usize;
    if word(&header, H_MAGIC) != HEAP_MAGIC || word(&header, H_VERSION) != HEAP_VERSION {
        return Err(bad("the view's header is not a memory-engine heap".into()));
    }
    let (arena_start, arena_end, bump) = (field(H_ARENA_START), field(H_ARENA_END), field(H_BUMP));
    let heap_len = field(H_HEAP_LEN);
    if !(arena_start <= bump && bump <= arena_end && arena_end <= heap_len) {
        return Err(bad(format!(
            "arena {arena_start}..{arena_end}, bump {bump}, heap {heap_len}: inconsistent"
        )));
    }
    let count = word(&header, H_COUNT);
    let mut win = Window {
        buf: Vec::new(),
        start: 0,
        read: 0,
    };
    let mut records = 0u64;
    let mut at = arena_start;
    while at < bump {
        if bump - at < RECORD_HEADER {
            return Err(bad(format!("arena block at {at} runs past bump {bump}")));
        }
        let head = win
            .get(view, at, RECORD_HEADER, bump)
            .map_err(DumpError::View)?;
        let w = word(head, R_STATE);
        let class = (w & 0xFFFF_FFFF) as usize;
        if class >= CLASSES || class_size(class) > bump - at {
            return Err(bad(format!("arena block at {at}: bad class in {w:#x}")));
        }
        match w >> 32 {
            FREE => {}
            LIVE => {
                let lens = word(head, R_LENS);
                let (klen, vlen) = ((lens >> 32) as usize, (lens & 0xFFFF_FFFF) as usize);
                let flags = word(head, R_FLAGS);
                let expires = word(head, R_EXPIRES);
                if klen > MAX_KEY
                    || vlen > MAX_VALUE
                    || record_bytes(klen, vlen) > class_size(class)
                {
                    return Err(bad(format!(
                        "record at {at}: {klen}+{vlen} bytes do not fit class {class}"
                    )));
                }
                let rec = win
                    .get(view, at, record_bytes(klen, vlen), bump)
                    .map_err(DumpError::View)?;
                let key = &rec[RECORD_HEADER..RECORD_HEADER + klen];
                let value = &rec[RECORD_HEADER + klen..];
                enc.record(key, value, (flags & FLAG_EXPIRES != 0).then_some(expires))
                    .map_err(DumpError::Sink)?;
                records += 1;
            }
            s => return Err(bad(format!("arena block at {at}: bad state {s:#x}"))),
        }
        at += class_size(class);
    }
    if records != count {
        return Err(bad(format!(
            "{records} live records in the arena, the header counts {count}"
        )));
    }
    Ok(DumpSummary {
        records,
        view_bytes: win.read + H_FREE_HEADS as u64,
    })
}
