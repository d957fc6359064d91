//! Corruption sweeps (issue 16): damage that no crash leaves, applied to
//! every place of a store in turn, must never lose an acknowledged commit
//! silently. For each damaged image recovery either opens the store with
//! every acknowledged commit, every key as the model says (so a partly
//! applied transaction shows), or refuses, writing nothing and naming the
//! damaged place where it is in the log.
//!
//! Damage applied, to a store whose log holds many batches, once with the
//! log never wrapped and once wrapped several times:
//! - every sector zeroed;
//! - every sector reverted to each earlier version it had (the image after
//!   every earlier commit);
//! - every pair of blocks swapped;
//! - the first N blocks zeroed, for every N, and the last block zeroed.
//!
//! The one exception is the documented limit (`docs/wal.md`): a sector of
//! the log's final blocks (those the last batch wrote), put back as it was
//! earlier, can look like what a crash during the last batch leaves, since
//! nothing was written after them; recovery may then end the log at that
//! sector, and the test requires exactly that: every commit whose records
//! end before the damaged sector is there.

use dbos_bufferpool::device::BLOCK_SIZE;
use dbos_bufferpool::fuzzing::{config, pool, MemDevice, MemDisk};
use dbos_bufferpool::kv::SLOTS_PER_PAGE;
use dbos_bufferpool::log::{LogBlock, LOG_BLOCK, SECTOR};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{Config, Engine, Error, KvTable, Layout, Lsn, PageId, RecoveryReport};
use std::collections::BTreeMap;
use std::sync::Arc;

type Mem = Engine<MemDevice, HashPool<MemDevice>>;

const FRAMES: usize = 8;
const SECTOR_BYTES: usize = SECTOR as usize;

/// A store and its history: the image after format and after each commit,
/// and what each commit wrote.
struct History {
    layout: Layout,
    images: Vec<Vec<u8>>,
    commits: Vec<Vec<(u64, u64)>>,
    /// Where each commit's records end in the log.
    ends: Vec<Lsn>,
}

impl History {
    /// Formats `layout` and commits `n` transactions of `keys` keys each,
    /// with automatic checkpoints (`checkpoint_percent`), keeping the image
    /// after each.
    fn build(layout: Layout, n: u64, keys: u64, checkpoint_percent: u8) -> History {
        let disk = MemDisk::new(vec![0; layout.blocks() as usize * BLOCK_SIZE]);
        let config = Config {
            checkpoint_percent,
            log_buffer_blocks: 16,
            ..config()
        };
        let e: Mem = Engine::format(
            MemDevice::new(&disk),
            MemDevice::new(&disk),
            layout,
            config,
            pool(&disk, FRAMES),
        )
        .unwrap();
        let capacity = layout.data_pages * SLOTS_PER_PAGE;
        let kv = KvTable::new(&e, PageId(0), layout.data_pages);
        let mut images = vec![disk.image()];
        let mut commits = Vec::new();
        let mut ends = Vec::new();
        for t in 0..n {
            // Keys spread over every page; values name the transaction.
            let puts: Vec<(u64, u64)> = (0..keys)
                .map(|j| ((t * 7 + j * 509) % capacity, t * 1000 + j + 1))
                .collect();
            ends.push(kv.put(&puts).unwrap());
            commits.push(puts);
            images.push(disk.image());
        }
        drop(e);
        assert!(disk.image() == *images.last().unwrap());
        History {
            layout,
            images,
            commits,
            ends,
        }
    }

    fn last(&self) -> &[u8] {
        self.images.last().unwrap()
    }

    /// Every key's value after the first `n` commits.
    fn model(&self, n: usize) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        for puts in &self.commits[..n] {
            for &(k, v) in puts {
                m.insert(k, v);
            }
        }
        m
    }

    /// Whether `e` holds exactly the first `n` commits: every key of the
    /// table as the model says, keys never written absent.
    fn holds(&self, e: &Mem, n: usize) -> bool {
        let model = self.model(n);
        let kv = KvTable::new(e, PageId(0), self.layout.data_pages);
        (0..self.layout.data_pages * SLOTS_PER_PAGE)
            .all(|k| kv.get(k).unwrap() == model.get(&k).copied().unwrap_or(0))
    }

    /// Device blocks of the log that the last commit's batch wrote: the
    /// log's final blocks, which no later write has gone past.
    fn last_batch_blocks(&self) -> Vec<u64> {
        let (a, b) = (
            &self.images[self.images.len() - 2],
            &self.images[self.images.len() - 1],
        );
        let log = self.layout.log_start()..self.layout.log_start() + self.layout.log_blocks;
        let mut blocks: Vec<u64> = (0..a.len() / SECTOR_BYTES)
            .filter(|&s| {
                a[s * SECTOR_BYTES..][..SECTOR_BYTES] != b[s * SECTOR_BYTES..][..SECTOR_BYTES]
            })
            .map(|s| (s * SECTOR_BYTES / BLOCK_SIZE) as u64)
            .filter(|b| log.contains(b))
            .collect();
        blocks.dedup();
        blocks
    }

    /// The LSN at which device sector `s` of the log area starts, in the
    /// log's last lap.
    fn sector_lsn(&self, s: usize) -> Lsn {
        let l = self.layout.log_blocks;
        let last = LogBlock::of(*self.ends.last().unwrap()).0;
        let d = (s * SECTOR_BYTES / BLOCK_SIZE) as u64 - self.layout.log_start();
        let u = last - (last % l + l - d) % l;
        Lsn(u * LOG_BLOCK + (s % 8) as u64 * SECTOR)
    }
}

fn open(disk: &Arc<MemDisk>) -> Result<(Mem, RecoveryReport), Error> {
    Engine::open(
        MemDevice::new(disk),
        MemDevice::new(disk),
        config(),
        pool(disk, FRAMES),
    )
}

/// Tallies of one sweep.
#[derive(Default, Debug)]
struct Tally {
    recovered: u64,
    refused: u64,
    limit: u64,
}

/// Opens `img` (the last image damaged at `blocks`, the device blocks
/// touched): it must recover every commit or refuse writing nothing,
/// naming a damaged block when it refuses for a damaged log. Where
/// `limit` is the LSN a damaged sector of the log's final blocks starts
/// at, recovery may instead end the log there: it must then hold a prefix
/// of the commits with every commit whose records end before that LSN.
fn judge(h: &History, img: Vec<u8>, blocks: &[u64], limit: Option<Lsn>, what: &str, t: &mut Tally) {
    let n = h.commits.len();
    let disk = MemDisk::new(img.clone());
    match open(&disk) {
        Ok((e, report)) => {
            if h.holds(&e, n) {
                t.recovered += 1;
            } else {
                let got = (0..=n).rev().find(|&k| h.holds(&e, k));
                let kept = limit.map(|at| h.ends.iter().filter(|&&end| end <= at).count());
                assert!(
                    got.zip(kept).is_some_and(|(got, kept)| got >= kept),
                    "{what}: commits lost: holds the first {got:?} of {n} (the limit allows \
                     losing those from {limit:?} on: {kept:?} kept); {report:?}"
                );
                t.limit += 1;
            }
        }
        Err(err) => {
            assert!(disk.image() == img, "{what}: a refusing recovery wrote");
            if let Error::LogCorrupt(d) = &err {
                let log = h.layout.log_start()..h.layout.log_start() + h.layout.log_blocks;
                if blocks.iter().all(|b| log.contains(b)) {
                    assert!(
                        blocks.contains(&d.lba),
                        "{what}: refused at block {}: {d}",
                        d.lba
                    );
                }
            }
            t.refused += 1;
        }
    }
}

fn sweep(h: &History) -> Tally {
    let last = h.last();
    let sectors = last.len() / SECTOR_BYTES;
    let blocks = last.len() / BLOCK_SIZE;
    let block_of = |s: usize| (s * SECTOR_BYTES / BLOCK_SIZE) as u64;
    let final_blocks = h.last_batch_blocks();
    let mut t = Tally::default();
    // Every sector zeroed.
    for s in 0..sectors {
        let mut img = last.to_vec();
        img[s * SECTOR_BYTES..][..SECTOR_BYTES].fill(0);
        if img != last {
            judge(
                h,
                img,
                &[block_of(s)],
                None,
                &format!("sector {s} zeroed"),
                &mut t,
            );
        }
    }
    // Every sector reverted to each earlier version it had.
    for s in 0..sectors {
        let r = s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES;
        let mut seen: Vec<&[u8]> = vec![&last[r.clone()]];
        for (i, old) in h.images.iter().enumerate().rev() {
            let v = &old[r.clone()];
            if seen.contains(&v) {
                continue;
            }
            seen.push(v);
            let mut img = last.to_vec();
            img[r.clone()].copy_from_slice(v);
            // The log's final blocks: nothing written after them can say
            // what they held (see the module docs).
            let limit = final_blocks.contains(&block_of(s)).then(|| h.sector_lsn(s));
            let what = format!("sector {s} reverted to its version after commit {i}");
            judge(h, img, &[block_of(s)], limit, &what, &mut t);
        }
    }
    // Every pair of blocks swapped.
    for a in 0..blocks {
        for b in a + 1..blocks {
            let (ra, rb) = (
                a * BLOCK_SIZE..(a + 1) * BLOCK_SIZE,
                b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE,
            );
            if last[ra.clone()] == last[rb.clone()] {
                continue;
            }
            let mut img = last.to_vec();
            img[ra.clone()].copy_from_slice(&last[rb.clone()]);
            img[rb].copy_from_slice(&last[ra]);
            let what = format!("blocks {a} and {b} swapped");
            judge(h, img, &[a as u64, b as u64], None, &what, &mut t);
        }
    }
    // The first N blocks zeroed (all but the whole device), and the last
    // block.
    for n in 1..blocks {
        let mut img = last.to_vec();
        img[..n * BLOCK_SIZE].fill(0);
        let touched: Vec<u64> = (0..n as u64).collect();
        let disk = MemDisk::new(img.clone());
        // Never taken for a blank device.
        assert!(
            !matches!(open(&disk), Err(Error::NotFormatted)),
            "first {n} blocks zeroed: taken for a blank device"
        );
        judge(
            h,
            img,
            &touched,
            None,
            &format!("first {n} blocks zeroed"),
            &mut t,
        );
    }
    let mut img = last.to_vec();
    img[(blocks - 1) * BLOCK_SIZE..].fill(0);
    judge(
        h,
        img,
        &[blocks as u64 - 1],
        None,
        "last block zeroed",
        &mut t,
    );
    t
}

/// The log never wraps: 60 commits of 3 keys over 16 log blocks, with one
/// automatic checkpoint or more.
#[test]
fn every_damage_to_an_unwrapped_log_is_recovered_or_refused_never_lost() {
    let layout = Layout {
        log_blocks: 16,
        data_pages: 4,
    };
    let h = History::build(layout, 60, 3, 50);
    let t = sweep(&h);
    eprintln!("unwrapped: {t:?}");
    assert!(t.refused > 0 && t.recovered > 0, "{t:?}");
}

/// The log wraps several times: 300 commits of 8 keys over 16 log blocks.
#[test]
fn every_damage_to_a_wrapped_log_is_recovered_or_refused_never_lost() {
    let layout = Layout {
        log_blocks: 16,
        data_pages: 4,
    };
    let h = History::build(layout, 300, 8, 50);
    // Wrapped: the log's last LSN is several laps in.
    let disk = MemDisk::new(h.last().to_vec());
    let (e, _) = open(&disk).unwrap();
    assert!(
        e.wal().insert_lsn().0 > 3 * layout.log_blocks * 4096,
        "{:?}",
        e.wal().insert_lsn()
    );
    drop(e);
    let t = sweep(&h);
    eprintln!("wrapped: {t:?}");
    assert!(t.refused > 0 && t.recovered > 0, "{t:?}");
}
