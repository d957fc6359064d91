//! Shared code of the dbos benchmarks: workloads run side by side on the
//! same file and machine, so that their ratios mean something.

use dbos_nvme::host::{BackingFile, PollerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod child;
pub mod load;
pub mod nvme;
pub mod pools;
pub mod redis;
pub mod snapshots;
pub mod vmcache;
pub mod wal;

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

/// Exits (status 2, a usage error) with a message unless the directory of
/// `file` (a `--file` option) is fit for a disk benchmark
/// ([`disk_dir_problem`]).
pub fn require_direct_io(file: &Path) {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(problem) = disk_dir_problem(&dir) {
        eprintln!(
            "{}: {problem}; pass --file on a disk file system",
            dir.display()
        );
        std::process::exit(2);
    }
}

/// Exits (status 2, a usage error) with a message unless `dir` (a `--dir`
/// option) is fit for a disk benchmark ([`disk_dir_problem`]).
pub fn require_disk_dir(dir: &Path) {
    if let Some(problem) = disk_dir_problem(dir) {
        eprintln!(
            "--dir {}: {problem}; pass --dir on a disk file system",
            dir.display()
        );
        std::process::exit(2);
    }
}

/// Why `dir` is no place for a disk benchmark's files, if it is not: it
/// does not take `O_DIRECT`, or it is memory (tmpfs, ramfs), which on
/// recent kernels takes `O_DIRECT` and makes every "durable" write a
/// memory copy, so that the figures would measure no disk at all.
pub fn disk_dir_problem(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some("not a directory".into());
    }
    if let Some(fs) = memory_file_system(dir) {
        return Some(format!("on {fs}, which is memory, not a disk"));
    }
    if !BackingFile::direct_io_supported(dir) {
        return Some("does not support O_DIRECT".into());
    }
    None
}

/// The name of the memory file system `dir` is on, if it is on one.
fn memory_file_system(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a statfs we own.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    match st.f_type as i64 {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}
