//! The log's on-disk format: sectors of 512 bytes (a 24-byte header and
//! 488 payload bytes), blocks of 8 sectors, LSNs as byte positions in the
//! unbounded log, the sector header and its markers, and how a sector read
//! back is classified (see the `log` module docs for what each state means
//! to recovery).

use crate::checksum::crc32c;
use crate::Lsn;
use core::fmt;

/// Bytes per sector.
pub const SECTOR: u64 = dbos_abi::SECTOR_SIZE;
/// Bytes of sector header.
pub const SECTOR_HEADER: u64 = 24;
/// Payload bytes per sector.
pub const SECTOR_PAYLOAD: u64 = SECTOR - SECTOR_HEADER;
/// Sectors per log block.
pub const SECTORS_PER_BLOCK: u64 = 8;
/// Bytes per log block.
pub const LOG_BLOCK: u64 = SECTOR * SECTORS_PER_BLOCK;
/// `used` of a blank sector: written by a batch past its end sector.
pub const USED_BLANK: u16 = 0xFFFF;
/// `used` of an unwritten sector: written by format, by no batch since.
pub const USED_UNWRITTEN: u16 = 0xFFFE;
/// The LSN of the first record of a new log.
pub const FIRST_LSN: Lsn = Lsn(SECTOR_HEADER);
/// Most blocks of log buffer ([`Wal::new`](super::Wal::new)): a batch's sectors must be able
/// to name their distance from its first in 16 bits.
pub const MAX_BUFFER_BLOCKS: usize = (u16::MAX as usize + 1) / SECTORS_PER_BLOCK as usize - 2;

/// A block of the unbounded log: `LogBlock(n)` covers LSNs
/// `[4096 n, 4096 n + 4096)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogBlock(pub u64);

impl LogBlock {
    /// The block holding `lsn`.
    pub fn of(lsn: Lsn) -> LogBlock {
        LogBlock(lsn.0 / LOG_BLOCK)
    }
}

/// Index of the payload byte at `lsn` in the stream of all payload bytes.
/// `lsn` must be a payload position (`lsn % 512 >= 24`).
pub fn payload_index(lsn: Lsn) -> u64 {
    debug_assert!(lsn.0 % SECTOR >= SECTOR_HEADER, "{lsn:?} is in a header");
    (lsn.0 / SECTOR) * SECTOR_PAYLOAD + (lsn.0 % SECTOR - SECTOR_HEADER)
}

/// The LSN of payload byte `p`.
pub fn lsn_of_payload(p: u64) -> Lsn {
    Lsn((p / SECTOR_PAYLOAD) * SECTOR + SECTOR_HEADER + p % SECTOR_PAYLOAD)
}

/// The LSN `bytes` payload bytes after `lsn`.
pub fn lsn_advance(lsn: Lsn, bytes: u64) -> Lsn {
    lsn_of_payload(payload_index(lsn) + bytes)
}

/// Where the log is and how its sectors are tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogGeometry {
    /// First block of the log area.
    pub start_lba: u64,
    /// Blocks in the log area.
    pub blocks: u64,
    /// The format id sectors are tagged with (low 32 bits stored).
    pub format_id: u64,
    /// The epoch sectors written now are tagged with.
    pub epoch: u32,
}

impl LogGeometry {
    /// The device block holding log block `block`.
    pub fn lba_of(&self, block: LogBlock) -> u64 {
        self.start_lba + block.0 % self.blocks
    }
}

/// Writes sector `s`'s header (`used` payload bytes or a marker, batch
/// marker `back`, the geometry's epoch and format id) and its checksum
/// over `out`, whose payload is filled already.
pub(crate) fn seal_header(geo: &LogGeometry, s: u64, used: u16, back: u16, out: &mut [u8]) {
    out[4..6].copy_from_slice(&used.to_le_bytes());
    out[6..8].copy_from_slice(&back.to_le_bytes());
    out[8..12].copy_from_slice(&geo.epoch.to_le_bytes());
    out[12..16].copy_from_slice(&(geo.format_id as u32).to_le_bytes());
    out[16..24].copy_from_slice(&s.to_le_bytes());
    let crc = crc32c(&out[4..SECTOR as usize]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Fills `out` (one log block) with the unwritten sectors format writes at
/// `block` of the log of `geo`: checksummed and numbered, so that no sector
/// of a log is ever all zeros (see the module docs).
pub fn unwritten_block(geo: &LogGeometry, block: LogBlock, out: &mut [u8]) {
    let first = block.0 * SECTORS_PER_BLOCK;
    for (i, sector) in out[..LOG_BLOCK as usize]
        .chunks_exact_mut(SECTOR as usize)
        .enumerate()
    {
        sector.fill(0);
        // No checksum (the field stays zero): the pattern is checked whole
        // instead (`unwritten_number`), which costs the guest, whose
        // CRC32C is software, far less at format and at every recovery.
        sector[4..6].copy_from_slice(&USED_UNWRITTEN.to_le_bytes());
        sector[12..16].copy_from_slice(&(geo.format_id as u32).to_le_bytes());
        sector[16..24].copy_from_slice(&(first + i as u64).to_le_bytes());
    }
}

/// The sector number of `raw` if it is exactly an unwritten sector of the
/// log of `geo` (see [`unwritten_block`]): checksum field, batch marker,
/// epoch and payload zero, the unwritten marker, `geo`'s format id.
fn unwritten_number(raw: &[u8], geo: &LogGeometry) -> Option<u64> {
    let words = |r: &[u8]| {
        r.chunks_exact(8)
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == 0)
    };
    (raw[0..4] == [0; 4]
        && raw[4..6] == USED_UNWRITTEN.to_le_bytes()
        && raw[6..12] == [0; 6]
        && raw[12..16] == (geo.format_id as u32).to_le_bytes()
        && words(&raw[SECTOR_HEADER as usize..SECTOR as usize]))
    .then(|| u64::from_le_bytes(raw[16..24].try_into().unwrap()))
}

/// What a sector read from the log turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorState {
    /// It belongs here: checksum, format id, number and epoch hold.
    Valid { used: u16, epoch: u32, back: u16 },
    /// A blank sector of this epoch, written by a batch past its end
    /// sector (`back` as in a valid sector; `began`: the durable LSN when
    /// that batch began).
    Blank { epoch: u32, back: u16, began: Lsn },
    /// A sector format wrote and no batch has written since.
    Unwritten,
    /// All zero: no log writes such a sector (format writes every sector
    /// of the area), so it is damage.
    Zeros,
    /// Not all zero, and the checksum does not hold.
    BadChecksum,
    /// The checksum holds but the header is impossible (payload length
    /// over 488, or a batch marker before sector 0).
    BadHeader { used: u16, back: u16 },
    /// A sector of another format (low 32 bits of its format id).
    OtherFormat(u32),
    /// This log's sector `n` of an earlier lap of the circular area.
    OtherLap(u64),
    /// A sector number that never belongs at this position.
    Misplaced(u64),
    /// An epoch older than this position requires (a sector an earlier
    /// run left past the end its recovery kept).
    OldEpoch(u32),
    /// An epoch newer than the control block's: the newer control block
    /// that started it has been lost.
    NewerEpoch(u32),
}

impl SectorState {
    /// Whether a crash can leave this where a write batch was writing: an
    /// intact sector, the write's old or new version (see the module docs).
    pub fn crash_can_leave(&self) -> bool {
        matches!(
            self,
            SectorState::Valid { .. }
                | SectorState::Blank { .. }
                | SectorState::Unwritten
                | SectorState::OtherLap(_)
                | SectorState::OldEpoch(_)
        )
    }
}

impl fmt::Display for SectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectorState::Valid { used, epoch, .. } => {
                write!(f, "a valid sector ({used} payload bytes, epoch {epoch})")
            }
            SectorState::Blank { epoch, .. } => {
                write!(f, "a blank sector past a write's end (epoch {epoch})")
            }
            SectorState::Unwritten => f.write_str("a sector unwritten since the format"),
            SectorState::Zeros => f.write_str("zeros"),
            SectorState::BadChecksum => f.write_str("a sector failing its checksum"),
            SectorState::BadHeader { used, back } => write!(
                f,
                "a sector with an impossible header ({used} payload bytes, marker {back})"
            ),
            SectorState::OtherFormat(id) => {
                write!(f, "a sector of another format (id {id:#010x})")
            }
            SectorState::OtherLap(n) => write!(f, "log sector {n} of an earlier lap"),
            SectorState::Misplaced(n) => write!(f, "log sector {n}, which does not belong here"),
            SectorState::OldEpoch(e) => write!(f, "a stale sector of epoch {e}"),
            SectorState::NewerEpoch(e) => write!(
                f,
                "a sector of epoch {e}, newer than the control block's (a newer control block was lost)"
            ),
        }
    }
}

/// What the reader requires of the sectors it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRules {
    /// Format id and current epoch (the control block's).
    pub geo: LogGeometry,
    /// The epoch of the previous valid sector: epochs never decrease.
    pub min_epoch: u32,
    /// Log bytes from here on carry the current epoch (the control
    /// block's epoch start).
    pub epoch_start: Lsn,
}

/// Classifies `raw` (one 512-byte sector) read where log sector `sector`
/// belongs.
pub fn check_sector(raw: &[u8], sector: u64, rules: &SectorRules) -> SectorState {
    let raw = &raw[..SECTOR as usize];
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_le_bytes(raw[at..at + 2].try_into().unwrap());
    let lap = rules.geo.blocks.saturating_mul(SECTORS_PER_BLOCK);
    if let Some(n) = unwritten_number(raw, &rules.geo) {
        return match n {
            n if n == sector => SectorState::Unwritten,
            n if n < sector && (sector - n).is_multiple_of(lap) => SectorState::OtherLap(n),
            n => SectorState::Misplaced(n),
        };
    }
    if u32_at(0) != crc32c(&raw[4..]) {
        if raw.iter().all(|&b| b == 0) {
            return SectorState::Zeros;
        }
        return SectorState::BadChecksum;
    }
    let (used, back, epoch) = (u16_at(4), u16_at(6), u32_at(8));
    let format = u32_at(12);
    let number = u64::from_le_bytes(raw[16..24].try_into().unwrap());
    let geo = &rules.geo;
    if format != geo.format_id as u32 {
        return SectorState::OtherFormat(format);
    }
    if number != sector {
        if number < sector && (sector - number).is_multiple_of(lap) {
            return SectorState::OtherLap(number);
        }
        return SectorState::Misplaced(number);
    }
    let blank = used == USED_BLANK;
    if (used as u64 > SECTOR_PAYLOAD && !blank) || back as u64 > sector {
        return SectorState::BadHeader { used, back };
    }
    if epoch > geo.epoch {
        return SectorState::NewerEpoch(epoch);
    }
    let payload_start = sector * SECTOR + SECTOR_HEADER;
    if epoch < rules.min_epoch || (epoch < geo.epoch && payload_start >= rules.epoch_start.0) {
        return SectorState::OldEpoch(epoch);
    }
    if blank {
        let h = SECTOR_HEADER as usize;
        let began = Lsn(u64::from_le_bytes(raw[h..h + 8].try_into().unwrap()));
        return SectorState::Blank { epoch, back, began };
    }
    SectorState::Valid { used, epoch, back }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_arithmetic() {
        assert_eq!(payload_index(FIRST_LSN), 0);
        assert_eq!(lsn_of_payload(0), FIRST_LSN);
        assert_eq!(lsn_of_payload(487), Lsn(511));
        assert_eq!(lsn_of_payload(488), Lsn(512 + 24));
        assert_eq!(lsn_advance(Lsn(500), 12), Lsn(536));
        assert_eq!(lsn_advance(Lsn(500), 11), Lsn(511));
        assert_eq!(lsn_advance(FIRST_LSN, 488 * 8), Lsn(4096 + 24));
        assert_eq!(LogBlock::of(Lsn(4096 + 24)), LogBlock(1));
    }
}
