//! What a run does: YCSB's core workloads A-F, the key distribution, and
//! the sizes ([`Spec`]).
//!
//! | workload | operations | records chosen by |
//! |---|---|---|
//! | A, update heavy | 50% read, 50% update | the distribution |
//! | B, read mostly | 95% read, 5% update | the distribution |
//! | C, read only | 100% read | the distribution |
//! | D, read latest | 95% read, 5% insert | always [`super::keys::Latest`] |
//! | E, short ranges | 95% scan (1..=100 records, uniform), 5% insert | the distribution |
//! | F, read-modify-write | 50% read, 50% read-modify-write | the distribution |

use alloc::string::{String, ToString};
use core::fmt;
use core::ops::Range;
use core::str::FromStr;

use super::keys::{Chooser, Latest, ScrambledZipfian};

/// The kinds of operation a workload mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// Reads one record and checks it.
    Read,
    /// Writes a new version of one record.
    Update,
    /// Writes a record that did not exist.
    Insert,
    /// Reads up to [`MAX_SCAN`] records in key order from a chosen one.
    Scan,
    /// Reads one record, checks it, writes its next version.
    ReadModifyWrite,
}

impl OpKind {
    /// How many kinds there are.
    pub const COUNT: usize = 5;
    /// Every kind, in report order (also the index order of
    /// [`OpKind::index`]).
    pub const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
    ];

    /// This kind's position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name YCSB reports it under, lower case.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }
}

/// The longest scan: scan lengths are uniform in `1..=MAX_SCAN`.
pub const MAX_SCAN: u64 = 100;
/// The smallest value: the record number and version take 16 bytes.
pub const MIN_VALUE_SIZE: usize = 16;
/// The most puts [`super::load`] groups into one transaction.
pub const MAX_LOAD_BATCH: usize = 16;

/// One of YCSB's core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Update heavy: 50% read, 50% update.
    A,
    /// Read mostly: 95% read, 5% update.
    B,
    /// Read only.
    C,
    /// Read latest: 95% read, 5% insert, reads skewed to new records.
    D,
    /// Short ranges: 95% scan, 5% insert.
    E,
    /// Read-modify-write: 50% read, 50% read-modify-write.
    F,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 6] = [
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::E,
        Workload::F,
    ];

    /// The percentage of each operation kind, indexed by
    /// [`OpKind::index`]; they add up to 100.
    pub fn mix(self) -> [u32; OpKind::COUNT] {
        // read, update, insert, scan, read-modify-write
        match self {
            Workload::A => [50, 50, 0, 0, 0],
            Workload::B => [95, 5, 0, 0, 0],
            Workload::C => [100, 0, 0, 0, 0],
            Workload::D => [95, 0, 5, 0, 0],
            Workload::E => [0, 0, 5, 95, 0],
            Workload::F => [50, 0, 0, 0, 50],
        }
    }

    /// The operation kind a roll in `0..100` selects: kinds take
    /// consecutive ranges of rolls as wide as their percentage.
    pub fn choose(self, roll: u64) -> OpKind {
        let mut upto = 0;
        for (kind, percent) in OpKind::ALL.into_iter().zip(self.mix()) {
            upto += u64::from(percent);
            if roll < upto {
                return kind;
            }
        }
        panic!("roll {roll} not below 100");
    }

    /// True if the workload inserts new records.
    pub fn inserts(self) -> bool {
        self.mix()[OpKind::Insert.index()] > 0
    }

    /// The lower-case letter naming it.
    pub fn letter(self) -> char {
        match self {
            Workload::A => 'a',
            Workload::B => 'b',
            Workload::C => 'c',
            Workload::D => 'd',
            Workload::E => 'e',
            Workload::F => 'f',
        }
    }
}

/// A name that parses to no value, with the values that would have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What was being parsed ("workload", "distribution").
    pub what: &'static str,
    /// The text given.
    pub given: String,
    /// The accepted values, comma separated.
    pub valid: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}' (valid: {})",
            self.what, self.given, self.valid
        )
    }
}

impl FromStr for Workload {
    type Err = ParseError;

    /// `"a"` .. `"f"`, either case.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Workload::ALL
            .into_iter()
            .find(|w| s.len() == 1 && s.as_bytes()[0].to_ascii_lowercase() == w.letter() as u8)
            .ok_or_else(|| ParseError {
                what: "workload",
                given: s.to_string(),
                valid: "a, b, c, d, e, f",
            })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// How reads, updates and scans pick their record (workload D always
/// picks the latest records, whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// YCSB's scrambled Zipfian, theta 0.99 (YCSB's default).
    Zipfian,
}

impl FromStr for Distribution {
    type Err = ParseError;

    /// `"uniform"` or `"zipfian"`, any case.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.eq_ignore_ascii_case("uniform") {
            Ok(Distribution::Uniform)
        } else if s.eq_ignore_ascii_case("zipfian") {
            Ok(Distribution::Zipfian)
        } else {
            Err(ParseError {
                what: "distribution",
                given: s.to_string(),
                valid: "uniform, zipfian",
            })
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        })
    }
}

/// A [`Spec`] the driver cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// `records` is 0.
    NoRecords,
    /// `threads` is 0.
    NoThreads,
    /// `value_size` is below [`MIN_VALUE_SIZE`].
    ValueTooSmall(usize),
    /// `load_batch` is 0 or above [`MAX_LOAD_BATCH`].
    LoadBatch(usize),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::NoRecords => write!(f, "records must be at least 1"),
            SpecError::NoThreads => write!(f, "threads must be at least 1"),
            SpecError::ValueTooSmall(n) => {
                write!(
                    f,
                    "value size {n} is below the minimum of {MIN_VALUE_SIZE} bytes"
                )
            }
            SpecError::LoadBatch(n) => {
                write!(f, "load batch {n} not in 1..={MAX_LOAD_BATCH}")
            }
        }
    }
}

/// One run: which workload, over how many records, how many operations,
/// by how many threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The operation mix.
    pub workload: Workload,
    /// How records are chosen (ignored by workload D).
    pub distribution: Distribution,
    /// Records loaded: numbers `0..records`.
    pub records: u64,
    /// Operations of the run phase, over all threads.
    pub operations: u64,
    /// Bytes per value, at least [`MIN_VALUE_SIZE`].
    pub value_size: usize,
    /// Threads sharing the load and the run; each calls the driver with
    /// its number in `0..threads`.
    pub threads: usize,
    /// Seed of every thread's random choices.
    pub seed: u64,
    /// Keys spell the record number (true) or its hash (false, YCSB's
    /// default), see [`super::key_bytes`].
    pub ordered_keys: bool,
    /// Puts per load transaction: 1 loads with [`crate::Kv::put`], more
    /// groups that many records into one [`crate::Kv::transaction`].
    pub load_batch: usize,
}

impl Default for Spec {
    /// YCSB's defaults where it has them: workload A, Zipfian, 1000
    /// records, 1000 operations, 1000-byte values (10 fields of 100
    /// bytes), one thread; hashed keys, one put per load write.
    fn default() -> Self {
        Spec {
            workload: Workload::A,
            distribution: Distribution::Zipfian,
            records: 1000,
            operations: 1000,
            value_size: 1000,
            threads: 1,
            seed: 1,
            ordered_keys: false,
            load_batch: 1,
        }
    }
}

impl Spec {
    /// Checks that the driver can run this spec.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.records == 0 {
            return Err(SpecError::NoRecords);
        }
        if self.threads == 0 {
            return Err(SpecError::NoThreads);
        }
        if self.value_size < MIN_VALUE_SIZE {
            return Err(SpecError::ValueTooSmall(self.value_size));
        }
        if self.load_batch == 0 || self.load_batch > MAX_LOAD_BATCH {
            return Err(SpecError::LoadBatch(self.load_batch));
        }
        Ok(())
    }

    /// The part of `0..total` that thread `thread` does: consecutive
    /// ranges whose lengths differ by at most one and add up to `total`.
    pub fn share(&self, total: u64, thread: usize) -> Range<u64> {
        assert!(thread < self.threads, "thread {thread} of {}", self.threads);
        let at = |t: usize| (u128::from(total) * t as u128 / self.threads as u128) as u64;
        at(thread)..at(thread + 1)
    }

    /// How many records the run can end with: `records` plus, if the
    /// workload inserts, one per operation (the most it can insert).
    pub fn capacity(&self) -> u64 {
        if self.workload.inserts() {
            self.records + self.operations
        } else {
            self.records
        }
    }

    /// The name of the key distribution in effect: "latest" for
    /// workload D, else [`Spec::distribution`].
    pub fn distribution_name(&self) -> &'static str {
        match (self.workload, self.distribution) {
            (Workload::D, _) => "latest",
            (_, Distribution::Uniform) => "uniform",
            (_, Distribution::Zipfian) => "zipfian",
        }
    }

    /// A fresh key chooser for one thread. The Zipfian spans the records
    /// plus twice the inserts expected, as YCSB sizes it, so that new
    /// records get their share once they exist.
    pub fn chooser(&self) -> Chooser {
        match (self.workload, self.distribution) {
            (Workload::D, _) => Chooser::Latest(Latest::new(self.records)),
            (_, Distribution::Uniform) => Chooser::Uniform,
            (w, Distribution::Zipfian) => {
                let inserts = self.operations * u64::from(w.mix()[OpKind::Insert.index()]) / 100;
                Chooser::Zipfian(ScrambledZipfian::new(self.records + 2 * inserts))
            }
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workload {} ({}), {} keys, {} records, {} operations, {}-byte values, {} thread{}, seed {}",
            self.workload,
            mix_text(self.workload),
            self.distribution_name(),
            self.records,
            self.operations,
            self.value_size,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.seed,
        )
    }
}

/// "50% read, 50% update" for workload A.
fn mix_text(w: Workload) -> impl fmt::Display {
    struct Mix(Workload);
    impl fmt::Display for Mix {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut sep = "";
            for (kind, percent) in OpKind::ALL.into_iter().zip(self.0.mix()) {
                if percent > 0 {
                    write!(f, "{sep}{percent}% {}", kind.name())?;
                    sep = ", ";
                }
            }
            Ok(())
        }
    }
    Mix(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn mixes_are_ycsbs_and_add_up() {
        for w in Workload::ALL {
            assert_eq!(w.mix().iter().sum::<u32>(), 100, "{w}");
            let mut counts = [0u32; OpKind::COUNT];
            for roll in 0..100 {
                counts[w.choose(roll).index()] += 1;
            }
            assert_eq!(counts, w.mix(), "{w}");
        }
        assert_eq!(Workload::E.choose(0), OpKind::Insert);
        assert_eq!(Workload::E.choose(5), OpKind::Scan);
        assert_eq!(Workload::F.choose(50), OpKind::ReadModifyWrite);
        assert!(Workload::D.inserts() && Workload::E.inserts() && !Workload::A.inserts());
    }

    #[test]
    fn parse_names_and_report_valid_values() {
        assert_eq!("a".parse::<Workload>(), Ok(Workload::A));
        assert_eq!("F".parse::<Workload>(), Ok(Workload::F));
        let err = "g".parse::<Workload>().unwrap_err();
        assert_eq!(
            format!("{err}"),
            "unknown workload 'g' (valid: a, b, c, d, e, f)"
        );
        assert!("ab".parse::<Workload>().is_err());
        assert!("".parse::<Workload>().is_err());
        assert_eq!("Zipfian".parse::<Distribution>(), Ok(Distribution::Zipfian));
        assert_eq!("uniform".parse::<Distribution>(), Ok(Distribution::Uniform));
        let err = "latest".parse::<Distribution>().unwrap_err();
        assert_eq!(
            format!("{err}"),
            "unknown distribution 'latest' (valid: uniform, zipfian)"
        );
        for w in Workload::ALL {
            assert_eq!(format!("{w}").parse::<Workload>(), Ok(w));
        }
    }

    #[test]
    fn shares_add_up() {
        let spec = Spec {
            threads: 3,
            ..Spec::default()
        };
        assert_eq!(spec.share(10, 0), 0..3);
        assert_eq!(spec.share(10, 1), 3..6);
        assert_eq!(spec.share(10, 2), 6..10);
        assert_eq!(spec.share(2, 0), 0..0);
        assert_eq!(spec.share(u64::MAX, 2).end, u64::MAX);
    }

    #[test]
    fn validation_and_description() {
        let spec = Spec::default();
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(
            Spec { records: 0, ..spec }.validate(),
            Err(SpecError::NoRecords)
        );
        assert_eq!(
            Spec { threads: 0, ..spec }.validate(),
            Err(SpecError::NoThreads)
        );
        assert_eq!(
            Spec {
                value_size: 15,
                ..spec
            }
            .validate(),
            Err(SpecError::ValueTooSmall(15))
        );
        assert_eq!(
            Spec {
                load_batch: 17,
                ..spec
            }
            .validate(),
            Err(SpecError::LoadBatch(17))
        );
        assert_eq!(
            format!("{}", SpecError::ValueTooSmall(15)),
            "value size 15 is below the minimum of 16 bytes"
        );
        assert_eq!(
            format!("{spec}"),
            "workload a (50% read, 50% update), zipfian keys, 1000 records, 1000 operations, \
             1000-byte values, 1 thread, seed 1"
        );
        let d = Spec {
            workload: Workload::D,
            threads: 2,
            ..spec
        };
        assert_eq!(
            format!("{d}"),
            "workload d (95% read, 5% insert), latest keys, 1000 records, 1000 operations, \
             1000-byte values, 2 threads, seed 1"
        );
        assert_eq!(d.capacity(), 2000);
        assert_eq!(spec.capacity(), 1000);
        assert!(matches!(d.chooser(), Chooser::Latest(_)));
        match (Spec {
            workload: Workload::E,
            ..spec
        })
        .chooser()
        {
            Chooser::Zipfian(z) => assert_eq!(z.items(), 1000 + 2 * 50),
            c => panic!("{c:?}"),
        }
    }
}
