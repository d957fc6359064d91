//! Shared helpers for the integration tests.
#![allow(dead_code)]

use dbos_nvme::host::testing::{InspectBackend, Inspector};
use dbos_nvme::host::{BackingFile, Device, DeviceError, PollerConfig, UringBackend, UringConfig};
use std::path::Path;
use std::sync::Arc;

/// A temporary directory where `O_DIRECT` works: the system temp dir if it
/// supports it (ext4 here), else one under the target directory.
pub fn direct_io_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if BackingFile::direct_io_supported(dir.path()) {
        return dir;
    }
    let alt = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir in target");
    eprintln!(
        "note: {} does not support O_DIRECT (tmpfs?); using {}",
        dir.path().display(),
        alt.path().display()
    );
    assert!(
        BackingFile::direct_io_supported(alt.path()),
        "no directory with O_DIRECT support"
    );
    alt
}

/// A new backing file of `blocks` 4 KiB blocks in `dir`.
pub fn backing_file(dir: &Path, blocks: u64) -> BackingFile {
    BackingFile::create(dir.join("disk.img"), blocks * 4096).expect("create backing file")
}

/// A process-mode device over io_uring with an inspector around it.
pub fn inspected_device(
    file: &BackingFile,
    region: usize,
    spin_us: u64,
) -> (Device, Arc<Inspector>) {
    let mut inspector = None;
    let config = PollerConfig {
        spin: std::time::Duration::from_micros(spin_us),
        ..PollerConfig::default()
    };
    let dev = Device::with_backend(region, config, |dma| {
        let uring = UringBackend::new(file, dma, UringConfig::default())?;
        let (b, i) = InspectBackend::new(uring);
        inspector = Some(i);
        Ok::<_, DeviceError>(b)
    })
    .expect("device");
    (dev, inspector.unwrap())
}

/// A deterministic pattern for block `lba` written in round `round`.
pub fn pattern(lba: u64, round: u64, len: usize) -> Vec<u8> {
    let mut x =
        lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small xorshift generator for test inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
