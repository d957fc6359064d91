//! Shared code of the dbos benchmarks: workloads run side by side on the
//! same file and machine, so that their ratios mean something.

use dbos_nvme::host::{BackingFile, PollerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod load;
pub mod nvme;

/// The middle of `v` by `key` (the lower middle for an even count).
pub fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut sorted: Vec<&T> = v.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[(sorted.len() - 1) / 2].clone()
}

/// The middle of `v` (the lower middle for an even count).
pub fn median(v: &[f64]) -> f64 {
    median_by(v, |x| *x)
}

/// The default poller configuration, spinning `spin_us` microseconds
/// before it parks if given (a `--spin-us` option).
pub fn poller_config(spin_us: Option<u64>) -> PollerConfig {
    let mut poller = PollerConfig::default();
    if let Some(us) = spin_us {
        poller.spin = Duration::from_micros(us);
    }
    poller
}

/// Exits with a message unless the directory of `file` (a `--file`
/// option) supports O_DIRECT.
pub fn require_direct_io(file: &Path) {
    let dir = file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if !BackingFile::direct_io_supported(&dir) {
        eprintln!(
            "{} does not support O_DIRECT (tmpfs?); pass --file on a disk file system",
            dir.display()
        );
        std::process::exit(1);
    }
}
