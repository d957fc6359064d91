//! The reader: [`scan`] reads the log back from a redo point, hands every
//! record to recovery, and where it stops tells a torn tail from
//! corruption by the rules of the `log` module docs ([`LogDamage`]).

use super::format::*;
use super::writer::Tail;
use crate::device::{run_one, BlockDevice, DmaBytes, Io, IoFailure, MAX_IO_BLOCKS};
use crate::record::{Record, RecordError};
use crate::{Env, Lsn};
use alloc::vec::Vec;
use core::fmt;

/// Why the log could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError<E> {
    /// A read failed.
    Device(IoFailure),
    /// The record handler failed.
    Handler(E),
}

/// What is wrong with a damaged log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The sector holding the redo point (durable before the control block
    /// naming it was written) does not hold it.
    Redo { redo: Lsn, found: SectorState },
    /// A sector no crash can leave in a log.
    Sector(SectorState),
    /// A record whose frame does not hold, in sectors whose checksums do.
    Record { lsn: Lsn, error: RecordError },
    /// An intact sector that is not the log's continuation where the log
    /// must continue: a later write batch (its sector `later`) began only
    /// after this sector was durable.
    Overtaken { found: SectorState, later: u64 },
    /// The readable log ends at `end`, before `verified`, the end of the
    /// log that the recovery which began the current epoch read and kept.
    EndsEarly { end: Lsn, verified: Lsn },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Redo { redo, found } => write!(
                f,
                "holds {found} where the log from the redo point {} must be",
                redo.0
            ),
            Damage::Sector(found) => write!(f, "holds {found}, which no crash leaves"),
            Damage::Record { lsn, error } => {
                write!(f, "holds a broken record at LSN {}: {error}", lsn.0)
            }
            Damage::Overtaken { found, later } => write!(
                f,
                "holds {found} where the log continues: log sector {later} was written after \
                 this sector was durable"
            ),
            Damage::EndsEarly { end, verified } => write!(
                f,
                "ends the readable log at LSN {}, before LSN {}, which an earlier recovery \
                 read and kept",
                end.0, verified.0
            ),
        }
    }
}

/// Where and how the log is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogDamage {
    /// What is wrong.
    pub what: Damage,
    /// The damaged sector's number in the unbounded log (it covers LSNs
    /// `512 * sector .. 512 * sector + 512`).
    pub sector: u64,
    /// The device block holding it (sector `sector % 8` of that block).
    pub lba: u64,
    /// Intact log sectors found past the damage: the LSN range from the
    /// first one's start to the last one's end, if any.
    pub beyond: Option<(Lsn, Lsn)>,
    /// Commit records found whole in that intact log past the damage: at
    /// least this many committed (and acknowledged) transactions are lost
    /// if the log is cut at the damage.
    pub commits_beyond: u64,
    /// The end of the last commit record before the damage: where a
    /// truncation would cut the log (filled in by recovery).
    pub keep_end: Lsn,
}

impl LogDamage {
    /// LSNs the damaged sector covers.
    pub fn lsns(&self) -> (Lsn, Lsn) {
        (Lsn(self.sector * SECTOR), Lsn((self.sector + 1) * SECTOR))
    }

    /// Everything before this LSN was read; a truncation discards the log
    /// from [`LogDamage::keep_end`] up to here.
    pub fn lost_end(&self) -> Lsn {
        let mut end = self.lsns().1;
        if let Some((_, b)) = self.beyond {
            end = end.max(b);
        }
        end
    }
}

impl fmt::Display for LogDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.lsns();
        write!(
            f,
            "the log is corrupt: log sector {} (device block {}, sector {} of it, LSNs {}..{}) {}",
            self.sector,
            self.lba,
            self.sector % SECTORS_PER_BLOCK,
            a.0,
            b.0,
            self.what
        )?;
        if let Some((x, y)) = self.beyond {
            write!(
                f,
                "; intact log follows at LSNs {}..{}, holding the commit records of {} \
                 transactions (acknowledged commits, which a truncation would lose)",
                x.0, y.0, self.commits_beyond
            )?;
        }
        Ok(())
    }
}

impl LogDamage {
    /// What truncating at this damage discards, for the refusal.
    pub fn truncation(&self) -> impl fmt::Display + '_ {
        struct T<'a>(&'a LogDamage);
        impl fmt::Display for T<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let d = self.0;
                write!(
                    f,
                    "truncating the log at LSN {} would discard LSNs {}..{} and at least {} \
                     committed transactions",
                    d.keep_end.0,
                    d.keep_end.0,
                    d.lost_end().0,
                    d.commits_beyond
                )
            }
        }
        T(self)
    }
}

/// The operator's request to give up part of a corrupt log: recovery cuts
/// the log at `at` and discards it up to `discard_to`. Both must equal
/// what recovery finds ([`LogDamage::keep_end`], [`LogDamage::lost_end`],
/// as the refusal reported them), so the request states exactly how much
/// is lost; anything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TruncateRequest {
    /// Keep the log before this LSN (the end of the last commit before the
    /// damage).
    pub at: Lsn,
    /// Discard the log from `at` up to this LSN (the end of the intact log
    /// found past the damage).
    pub discard_to: Lsn,
}

/// What a scan found.
pub struct ScanSummary {
    /// Records handed to the handler.
    pub records: u64,
    /// Valid sectors read.
    pub sectors: u64,
    /// Why the scan stopped, for the report.
    pub stop: ScanStop,
    /// The end of the last valid record.
    pub end: Lsn,
    /// Corruption, if the log is corrupt (then `stop` is
    /// [`ScanStop::Damaged`] and the records read were those before it).
    pub damage: Option<LogDamage>,
}

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// A valid sector that is not full: the clean end of the log (a new
    /// log ends in sector 0 with nothing in it).
    PartialSector,
    /// The write batch in flight at a crash did not reach this sector
    /// (it holds `found`): a torn tail. Later sectors of that batch, if
    /// any landed, are ignored.
    TornTail { sector: u64, found: SectorState },
    /// The whole log area was read (a log this crate writes always ends
    /// before).
    LogEnd,
    /// The log is corrupt ([`ScanSummary::damage`]).
    Damaged,
}

impl fmt::Display for ScanStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanStop::PartialSector => f.write_str("clean end"),
            ScanStop::TornTail { sector, found } => {
                write!(f, "torn tail at log sector {sector}, which holds {found}")
            }
            ScanStop::LogEnd => f.write_str("end of the log area"),
            ScanStop::Damaged => f.write_str("corrupt log"),
        }
    }
}

/// Reads sectors of the log through `buf`, a window of blocks at a time.
struct SectorReader<'a, D> {
    dev: &'a mut D,
    geo: LogGeometry,
    buf: &'a mut DmaBytes,
    env: Env,
    chunk_blocks: u64,
    /// (first block, blocks) held in `buf`.
    loaded: Option<(u64, u64)>,
}

impl<D: BlockDevice> SectorReader<'_, D> {
    fn sector(&mut self, sector: u64) -> Result<&[u8], IoFailure> {
        let block = sector / SECTORS_PER_BLOCK;
        if !self
            .loaded
            .is_some_and(|(b, n)| block >= b && block < b + n)
        {
            let phys = block % self.geo.blocks;
            let n = self.chunk_blocks.min(self.geo.blocks - phys);
            let io = Io::read(self.geo.start_lba + phys, n as u32, self.buf.io_buf().addr);
            run_one(self.dev, io, self.env.relax)?;
            self.loaded = Some((block, n));
        }
        let (b0, _) = self.loaded.unwrap();
        let at = ((sector - b0 * SECTORS_PER_BLOCK) * SECTOR) as usize;
        Ok(&self.buf.bytes()[at..at + SECTOR as usize])
    }
}

/// Reads the log of `geo` from `redo` on, handing every valid record to
/// `handle` in order, until the end of the log, and tells a torn tail from
/// corruption (see the module docs). Sectors must carry `geo.format_id`,
/// epochs up to `geo.epoch`, never decreasing, and `geo.epoch` from
/// `epoch_start` on. Uses `buf` (at least one block) to read. Reads the
/// whole log area past the end; writes nothing.
pub fn scan<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    redo: Lsn,
    epoch_start: Lsn,
    buf: &mut DmaBytes,
    env: Env,
    handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    scan_until(dev, geo, redo, epoch_start, None, buf, env, handle)
}

/// Reads the log like [`scan`] from `records.start` (the redo point), but
/// only the records that start before `records.end`, and reads nothing
/// past them: for a second pass over a log that a [`scan`] has already
/// judged (recovery's redo), not a check of its end. The summary's `stop`
/// is then [`ScanStop::PartialSector`] and `damage` `None` unless the
/// sectors before `records.end` no longer hold.
pub fn scan_to<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    records: core::ops::Range<Lsn>,
    epoch_start: Lsn,
    buf: &mut DmaBytes,
    env: Env,
    handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    scan_until(
        dev,
        geo,
        records.start,
        epoch_start,
        Some(records.end),
        buf,
        env,
        handle,
    )
}

#[allow(clippy::too_many_arguments)]
fn scan_until<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    redo: Lsn,
    epoch_start: Lsn,
    until: Option<Lsn>,
    buf: &mut DmaBytes,
    env: Env,
    handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    let chunk_blocks = (buf.io_buf().blocks as u64).min(MAX_IO_BLOCKS as u64);
    let mut scan = Scan {
        reader: SectorReader {
            dev,
            geo: *geo,
            buf,
            env,
            chunk_blocks,
            loaded: None,
        },
        rules: SectorRules {
            geo: *geo,
            min_epoch: 0,
            epoch_start,
        },
        redo,
        until,
        max_record: geo.blocks.saturating_mul(LOG_BLOCK).min(u32::MAX as u64) as usize,
        // The log may occupy the redo point's block and the blocks after
        // it, one lap of the area (appends never go further).
        window_end: (LogBlock::of(redo).0 + geo.blocks) * SECTORS_PER_BLOCK,
    };
    let read = scan.read_records(handle)?;
    let mut damage = read.damage;
    let summary = |stop, damage| ScanSummary {
        records: read.records,
        sectors: read.sectors,
        stop,
        end: read.end,
        damage,
    };
    if until.is_some() && damage.is_none() {
        // What lies past `end` was judged by the scan before.
        return Ok(summary(ScanStop::PartialSector, None));
    }
    let Some(found) = read.stop_state else {
        // Every sector of the area was full: nothing past it to check.
        return Ok(summary(ScanStop::LogEnd, None));
    };
    let sector = read.sector;
    let past = scan
        .look_past(sector, found, read.valid_end)
        .map_err(ScanError::Device)?;
    if damage.is_none() {
        if let Some(v) = past.later {
            damage = Some(Damage::Overtaken { found, later: v });
        } else if read.valid_end < epoch_start {
            damage = Some(Damage::EndsEarly {
                end: read.valid_end,
                verified: epoch_start,
            });
        }
    }
    let stop = match (&damage, found) {
        (Some(_), _) => ScanStop::Damaged,
        (None, SectorState::Valid { .. }) if past.intact.is_none() => ScanStop::PartialSector,
        (None, found) => ScanStop::TornTail { sector, found },
    };
    let damage = damage.map(|what| {
        let sector = match what {
            Damage::Record { lsn, .. } => lsn.0 / SECTOR,
            _ => sector,
        };
        LogDamage {
            what,
            sector,
            lba: geo.lba_of(LogBlock(sector / SECTORS_PER_BLOCK)),
            beyond: past.intact,
            commits_beyond: past.commits,
            keep_end: read.end,
        }
    });
    Ok(summary(stop, damage))
}

/// One scan of the log (see [`scan`]).
struct Scan<'a, D> {
    reader: SectorReader<'a, D>,
    rules: SectorRules,
    redo: Lsn,
    until: Option<Lsn>,
    max_record: usize,
    /// The sector after the last the log may occupy.
    window_end: u64,
}

/// What [`Scan::read_records`] read.
struct Read {
    records: u64,
    /// Valid sectors read.
    sectors: u64,
    /// The sector the reading stopped at.
    sector: u64,
    /// What it holds (`None`: every sector of the window was full).
    stop_state: Option<SectorState>,
    /// Where the readable payload ends (the next payload byte's position).
    valid_end: Lsn,
    /// The end of the last whole record.
    end: Lsn,
    /// Damage found while reading.
    damage: Option<Damage>,
}

/// What lies past the stop sector.
struct Past {
    /// Intact log sectors: from the first one's start to the last one's end.
    intact: Option<(Lsn, Lsn)>,
    /// A sector (valid or blank) written by a batch that began after the
    /// stop sector was durable, if any.
    later: Option<u64>,
    /// Commit records whole in the intact sectors.
    commits: u64,
}

impl<D: BlockDevice> Scan<'_, D> {
    /// Reads sectors from the redo point's, handing every whole record to
    /// `handle`, until a sector that does not continue the log, a partial
    /// sector, damage, or a record at or past `until`.
    fn read_records<E>(
        &mut self,
        mut handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
    ) -> Result<Read, ScanError<E>> {
        let redo = self.redo;
        let geo = self.rules.geo;
        let epoch_start = self.rules.epoch_start;
        let first_sector = redo.0 / SECTOR;
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_start = payload_index(redo);
        let mut read = Read {
            records: 0,
            sectors: 0,
            sector: first_sector,
            stop_state: None,
            valid_end: redo,
            end: redo,
            damage: None,
        };
        let mut reached_until = false;
        while read.sector < self.window_end && !reached_until {
            let sector = read.sector;
            let raw = self.reader.sector(sector).map_err(ScanError::Device)?;
            let state = check_sector(raw, sector, &self.rules);
            let SectorState::Valid {
                used, epoch, back, ..
            } = state
            else {
                if sector == first_sector {
                    read.damage = Some(Damage::Redo { redo, found: state });
                } else if !state.crash_can_leave() {
                    read.damage = Some(Damage::Sector(state));
                }
                read.stop_state = Some(state);
                break;
            };
            let payload_start = sector * SECTOR + SECTOR_HEADER;
            let skip = if sector == first_sector {
                redo.0 - payload_start
            } else {
                0
            };
            let mut used = used as u64;
            if used < skip {
                read.damage = Some(Damage::Redo { redo, found: state });
                read.stop_state = Some(state);
                break;
            }
            // Payload of an older epoch counts only up to the epoch start.
            if epoch < geo.epoch && payload_start + used > epoch_start.0 {
                used = epoch_start.0 - payload_start;
            }
            read.sectors += 1;
            self.rules.min_epoch = epoch;
            let h = SECTOR_HEADER as usize;
            pending.extend_from_slice(&raw[h + skip as usize..h + used as usize]);
            // The position of the next payload byte (in the next sector if
            // this one is full), comparable with the epoch start.
            read.valid_end = lsn_of_payload(payload_index(Lsn(payload_start)) + used);
            let mut consumed = 0;
            while pending.len() - consumed >= 4 {
                let rest = &pending[consumed..];
                let lsn = lsn_of_payload(pending_start);
                if self.until.is_some_and(|u| lsn >= u) {
                    reached_until = true;
                    break;
                }
                let decoded = Record::framed_len(rest, self.max_record).and_then(|len| {
                    if rest.len() < len {
                        Ok(None)
                    } else {
                        Record::decode(&rest[..len], lsn).map(|r| Some((len, r)))
                    }
                });
                match decoded {
                    Ok(None) => break,
                    Ok(Some((len, r))) => {
                        handle(lsn, r).map_err(ScanError::Handler)?;
                        read.records += 1;
                        consumed += len;
                        pending_start += len as u64;
                    }
                    Err(error) => {
                        read.damage = Some(Damage::Record { lsn, error });
                        break;
                    }
                }
            }
            pending.drain(..consumed);
            if reached_until {
                break;
            }
            if read.damage.is_some() || used < SECTOR_PAYLOAD {
                read.stop_state = Some(SectorState::Valid {
                    used: used as u16,
                    epoch,
                    back,
                });
                break;
            }
            read.sector += 1;
        }
        read.end = lsn_of_payload(pending_start);
        Ok(read)
    }

    /// Reads the rest of the window past `stop` (which holds `found`; the
    /// readable log ends at `valid_end`): intact sectors continuing the log,
    /// the commits in them, and whether any sector (or a blank one) was
    /// written by a batch that began after the stop sector was durable.
    fn look_past(
        &mut self,
        stop: u64,
        found: SectorState,
        valid_end: Lsn,
    ) -> Result<Past, IoFailure> {
        let mut past = Past {
            intact: None,
            later: None,
            commits: 0,
        };
        // Runs of consecutive valid sectors: (the payload index of the
        // first byte, the payload), for counting the commits there.
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut run_next = None;
        for v in stop + 1..self.window_end {
            let raw = self.reader.sector(v)?;
            // Only a sector carrying its own number, written by a batch, can
            // say anything: skip the checksum of the others (stale laps, the
            // format's unwritten sectors, zeros), most of the area.
            if raw[16..24] != v.to_le_bytes() || raw[4..6] == USED_UNWRITTEN.to_le_bytes() {
                continue;
            }
            let back = match check_sector(raw, v, &self.rules) {
                SectorState::Valid { used, back, .. } => {
                    let start = Lsn(v * SECTOR);
                    let end = Lsn(v * SECTOR + SECTOR_HEADER + used as u64);
                    past.intact = Some(past.intact.map_or((start, end), |(a, _)| (a, end)));
                    let payload = &raw[SECTOR_HEADER as usize..][..used as usize];
                    if run_next != Some(v) {
                        runs.push((payload_index(Lsn(start.0 + SECTOR_HEADER)), Vec::new()));
                    }
                    runs.last_mut().unwrap().1.extend_from_slice(payload);
                    run_next = (used as u64 == SECTOR_PAYLOAD).then_some(v + 1);
                    back
                }
                // A blank sector says exactly where its batch began: past the
                // readable log, that batch began after more log than we read
                // was durable (a sector before it reverted to an older
                // version, which no crash leaves).
                SectorState::Blank { back, began, .. } if began > valid_end => {
                    past.later.get_or_insert(v);
                    back
                }
                SectorState::Blank { back, .. } => back,
                _ => continue,
            };
            // A batch that began in the stop sector found it valid (the
            // sector holding the durable end always is), and a crash leaves
            // such a sector old or new, valid either way.
            let began = v - back as u64;
            let stop_valid = matches!(found, SectorState::Valid { .. });
            if past.later.is_none() && (began > stop || (began == stop && !stop_valid)) {
                past.later = Some(v);
            }
        }
        past.commits = runs
            .iter()
            .map(|(first, payload)| count_commits(*first, payload, self.max_record))
            .sum();
        Ok(past)
    }
}

/// The commit records in `payload` (consecutive log payload from payload
/// index `first`, which may begin inside a record): from the first place a
/// whole record starts (its frame's length, LSN and checksum hold), the
/// records that follow one another.
fn count_commits(first: u64, payload: &[u8], max_record: usize) -> u64 {
    let frame_at = |i: usize| -> Option<(usize, bool)> {
        let rest = &payload[i..];
        let len = Record::framed_len(rest, max_record).ok()?;
        let lsn = lsn_of_payload(first + i as u64);
        // The LSN field first: it rules out almost every wrong offset
        // without a checksum.
        if rest.len() < len || rest[8..16] != lsn.0.to_le_bytes() {
            return None;
        }
        let r = Record::decode(&rest[..len], lsn).ok()?;
        Some((len, matches!(r, Record::Commit { .. })))
    };
    let Some(mut i) = (0..payload.len().saturating_sub(16)).find(|&i| frame_at(i).is_some()) else {
        return 0;
    };
    let mut commits = 0;
    while i + 16 <= payload.len() {
        let Some((len, commit)) = frame_at(i) else {
            break;
        };
        commits += commit as u64;
        i += len;
    }
    commits
}

/// Reads the log block holding `end`, where the log is to continue.
pub fn read_tail<D: BlockDevice>(
    dev: &mut D,
    geo: &LogGeometry,
    end: Lsn,
    buf: &mut DmaBytes,
    env: Env,
) -> Result<Tail, IoFailure> {
    let io = Io::read(geo.lba_of(LogBlock::of(end)), 1, buf.io_buf().addr);
    run_one(dev, io, env.relax)?;
    Ok(Tail {
        end,
        block: buf.bytes()[..LOG_BLOCK as usize].to_vec(),
    })
}
