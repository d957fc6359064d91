//! Shared helpers for the integration tests.
#![allow(dead_code)]

use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::host::{block_device, env, ProcessBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::PoolConfig;
use dbos_bufferpool::{CommitMode, Config, Engine, Layout, PoolError};
use dbos_nvme::host::powercut::{PowerCut, PowerCutBackend};
use dbos_nvme::host::testing::{InspectBackend, Inspector};
use dbos_nvme::host::{BackingFile, Device, DeviceError, PollerConfig, UringConfig};
use std::sync::Arc;
use std::time::Duration;

/// Registered memory per device: log buffer, scan buffer, page buffer,
/// queues.
pub const REGION: usize = 4 << 20;

pub fn poller() -> PollerConfig {
    PollerConfig {
        spin: Duration::from_micros(50),
        ..PollerConfig::default()
    }
}

/// A device on an in-memory power-cut disk holding `image`.
pub fn memory_device(image: Vec<u8>) -> (Device, Arc<PowerCut>) {
    let mut pc = None;
    let dev = Device::with_backend(REGION, poller(), |_| {
        let (b, p) = PowerCutBackend::new(image);
        pc = Some(p);
        Ok::<_, DeviceError>(b)
    })
    .expect("device");
    (dev, pc.unwrap())
}

/// A device on a power-cut disk, with an inspector recording operations.
pub fn inspected_memory_device(image: Vec<u8>) -> (Device, Arc<PowerCut>, Arc<Inspector>) {
    let mut pc = None;
    let mut ins = None;
    let dev = Device::with_backend(REGION, poller(), |_| {
        let (b, p) = PowerCutBackend::new(image);
        let (b, i) = InspectBackend::new(b);
        pc = Some(p);
        ins = Some(i);
        Ok::<_, DeviceError>(b)
    })
    .expect("device");
    (dev, pc.unwrap(), ins.unwrap())
}

/// A temporary directory where O_DIRECT works.
pub fn direct_io_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if BackingFile::direct_io_supported(dir.path()) {
        return dir;
    }
    let alt = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir in target");
    assert!(BackingFile::direct_io_supported(alt.path()));
    alt
}

/// A device on an O_DIRECT file through io_uring.
pub fn file_device(file: &BackingFile) -> Device {
    Device::open(file, REGION, poller(), UringConfig::default()).expect("device")
}

/// The two queues an engine uses.
pub fn devices(dev: &Device) -> (ProcessBlockDevice, ProcessBlockDevice) {
    (
        block_device(dev, 64).unwrap(),
        block_device(dev, 64).unwrap(),
    )
}

pub fn config(mode: CommitMode) -> Config {
    Config {
        env: env(),
        mode,
        log_buffer_blocks: 32,
        checkpoint_percent: 50,
    }
}

/// `config` without automatic checkpoints.
pub fn manual_config(mode: CommitMode) -> Config {
    Config {
        checkpoint_percent: 0,
        ..config(mode)
    }
}

/// The pool of the engine tests on a process device.
pub type TestPool = HashPool<ProcessBlockDevice>;

/// The engine of the tests on a process device.
pub type TestEngine = Engine<ProcessBlockDevice, TestPool>;

/// Frames of the tests' pools: more than their layouts' pages (the tests
/// of a pool smaller than the data say so).
pub const FRAMES: usize = 16;

/// A hash pool of `capacity` frames on two queues of `dev` (batches of 4
/// pages: little registered memory per queue).
pub fn hash_pool(
    dev: &Device,
    capacity: usize,
) -> impl FnOnce(PoolSetup) -> Result<TestPool, PoolError> + '_ {
    move |setup| {
        HashPool::new(
            vec![
                block_device(dev, 64).unwrap(),
                block_device(dev, 64).unwrap(),
            ],
            PoolConfig {
                evict_batch: 4,
                ..setup.config(capacity)
            },
        )
    }
}

pub fn format(dev: &Device, layout: Layout, mode: CommitMode) -> TestEngine {
    format_with(dev, layout, config(mode))
}

pub fn format_with(dev: &Device, layout: Layout, config: Config) -> TestEngine {
    let (l, d) = devices(dev);
    Engine::format(l, d, layout, config, hash_pool(dev, FRAMES)).expect("format")
}

pub fn open(
    dev: &Device,
    mode: CommitMode,
) -> Result<(TestEngine, dbos_bufferpool::RecoveryReport), dbos_bufferpool::Error> {
    let (l, d) = devices(dev);
    Engine::open(l, d, config(mode), hash_pool(dev, FRAMES))
}

pub fn open_truncating(
    dev: &Device,
    request: dbos_bufferpool::TruncateRequest,
) -> Result<(TestEngine, dbos_bufferpool::RecoveryReport), dbos_bufferpool::Error> {
    let (l, d) = devices(dev);
    Engine::open_truncating(
        l,
        d,
        config(CommitMode::Fua),
        request,
        hash_pool(dev, FRAMES),
    )
}

/// Opens `dev`, truncating exactly the loss a refusing recovery reported
/// as `d` (what an operator who accepts that loss asks for).
pub fn open_truncating_reported(
    dev: &Device,
    d: &dbos_bufferpool::LogDamage,
) -> Result<(TestEngine, dbos_bufferpool::RecoveryReport), dbos_bufferpool::Error> {
    open_truncating(
        dev,
        dbos_bufferpool::TruncateRequest {
            at: d.keep_end,
            discard_to: d.lost_end(),
        },
    )
}

/// A layout whose log (8 blocks) fills after a few hundred small commits.
pub const SMALL_LOG: Layout = Layout {
    log_blocks: 8,
    data_pages: 4,
};

/// Blocks of a disk for `layout`.
pub fn disk_bytes(layout: Layout) -> usize {
    layout.blocks() as usize * 4096
}
