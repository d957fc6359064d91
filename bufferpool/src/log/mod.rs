//! The write-ahead log: records packed into 512-byte sectors of 4 KiB log
//! blocks, appended by many committers at once and made durable in groups
//! by one writer at a time (group commit).
//!
//! # Format
//!
//! The log is a circular area of `log_blocks` blocks. A log sequence number
//! is a byte position in the unbounded log; sector `n` covers LSNs
//! `[512 n, 512 n + 512)` and lives in log block `n / 8` at block
//! `start + (n / 8) % log_blocks`. Each sector starts with a header, and
//! records ([`crate::record`]) are packed into the sector payloads as one
//! byte stream, spanning sectors and blocks as needed:
//!
//! ```text
//! offset  size  field
//!      0     4  CRC32C of bytes 4..512
//!      4     2  payload bytes used (0..=488)
//!      6     2  back: this sector's distance from the first sector
//!                its write batch changed (the batch marker)
//!      8     4  epoch (the control block's epoch when written)
//!     12     4  format id (low half)
//!     16     8  sector number
//!     24   488  payload
//! ```
//!
//! The CRC and LSN unit is the sector, the unit a write can be torn at:
//! a torn 4 KiB log write leaves every sector either old or new, each
//! self-validating. The tail block is rewritten by each batch; its sectors
//! that were already durable are rewritten byte for byte (from a copy of
//! what was written), so whichever version of them survives is
//! the same. Every batch also writes the sector holding its end, even when
//! no payload of it is used yet (`used` = 0): the durable end of the log is
//! always a valid sector that is not full. The sectors after the end in
//! its last block are written as *blank* sectors (checksummed, numbered,
//! `used` = 0xFFFF, with the batch marker), and format writes every sector
//! of the log area as an *unwritten* sector (`used` = 0xFFFE): **no sector
//! of a log is ever all zeros**, so a zeroed sector is damage wherever it
//! is found, never the old contents of a torn write. The epoch (raised at
//! every start) keeps stale sectors written past the recovered end by an
//! earlier run from being read as the continuation of a later one.
//!
//! # Torn tail or corruption: the in-flight invariant
//!
//! **Invariant.** At most one write batch is in flight at any time: a
//! leader holds the writer lock from sealing a batch until all of its
//! writes (and, in [`CommitMode::WriteFlush`], its flush) have completed,
//! and only then publishes the durable LSN; nothing else writes the log
//! area (format zeroes it before the log exists). A batch whose durable
//! LSN was `D` when it began changes only sectors from `D`'s sector on
//! (earlier sectors of the block are rewritten byte for byte), and every
//! sector it seals records in `back` how far it is from `D`'s sector. So
//! for a sector `v` written by some batch, every sector before
//! `v - back(v)` was durable, and final, before `v` was written.
//!
//! A crash leaves every sector the in-flight batch wrote either old or new,
//! and both are intact (a sector is the atomic unit; format wrote every
//! sector of the log area, so "old" is an unwritten sector, a blank one, an
//! older version of the same sector, or a sector of an earlier lap or
//! epoch, and never zeros). Therefore, when the reader ([`scan`]) stops at
//! sector `s`:
//!
//! - if `s` is damaged in a way no crash produces (zeros, a checksum
//!   failure, an impossible header, a foreign format, a misplaced sector
//!   number, an epoch newer than the control block's, a record frame that
//!   does not hold in sectors whose checksums do), that is corruption;
//! - if some later valid or blank sector `v` of this epoch has
//!   `v - back(v) > s` (or `= s` where `s` is not a valid sector: a batch
//!   can only begin in a sector that holds the durable end, a valid
//!   sector in every version a crash leaves), or a blank one says its
//!   batch began past the
//!   readable log, a batch began after `s` was durable, so `s` cannot be
//!   the torn tail of the in-flight batch: corruption (the in-flight
//!   batch began at the durable end, and every version of the sector
//!   holding it, old or new, holds the log up to there);
//! - if the readable log ends before the epoch start the control block
//!   names (log the recovery that began the epoch had read and kept), that
//!   is corruption;
//! - otherwise `s` and every valid sector after it can belong to the batch
//!   that was in flight, which acknowledged nothing: a torn tail.
//!
//! What this cannot tell apart: a sector of the *last* completed batch
//! (with no batch after it) reverted to the version it had before that
//! batch, which is exactly what a crash during that batch leaves. No log
//! can: nothing is written after the last batch to contradict it (see
//! `docs/wal.md`).
//!
//! Corruption is reported as [`LogDamage`] (sector, device block, LSN
//! range, what was found, the intact log beyond it); recovery refuses to
//! open and writes nothing, unless the operator asks for that exact
//! truncation ([`TruncateRequest`]).
//!
//! # Group commit
//!
//! [`Wal::append`] reserves log space and copies records into an in-memory
//! ring under a short spin lock and returns the end LSN.
//! [`Wal::flush_to`] waits until that LSN is durable: the first waiter to
//! find no writer active becomes the writer (the leader), takes everything
//! appended so far as one batch, seals its sectors into a DMA buffer,
//! writes the blocks (FUA writes, or writes and one flush:
//! [`CommitMode`]) and publishes the new durable LSN. Committers that
//! appended while a batch was in flight are served by the next leader.
//!
//! # Failure
//!
//! A failed log write or flush puts the log into a failed state: the
//! leader gets the device error, every waiter and every later append gets
//! [`WalError::Failed`]. Nothing is retried; the next start recovers from
//! what is durable. A log that would overwrite history still needed by
//! recovery (older than the last checkpoint's redo LSN) refuses the append
//! with [`WalError::LogFull`] and changes nothing.

//!
//! # Modules
//!
//! - [`format`]: sectors, blocks and LSNs: the on-disk sector format, how a
//!   sector read back is classified ([`check_sector`]), format's unwritten
//!   sectors;
//! - [`writer`]: the [`Wal`]: appends, group commit, the failed state;
//! - [`reader`]: [`scan`], which reads the log back and tells a torn tail
//!   from corruption ([`LogDamage`]).

pub mod format;
pub mod reader;
pub mod writer;

pub use format::*;
pub use reader::*;
pub use writer::*;
