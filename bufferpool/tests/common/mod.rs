//! Shared helpers for the integration tests.
#![allow(dead_code)]

use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::host::{block_device, env, ProcessBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::tabby::{Eviction, Tabby, TabbyConfig};
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::PoolConfig;
use dbos_bufferpool::{BufferManager, CommitMode, Config, Engine, Layout, PoolError};
use dbos_nvme::host::powercut::{PowerCut, PowerCutBackend};
use dbos_nvme::host::testing::{InspectBackend, Inspector};
use dbos_nvme::host::{BackingFile, Device, DeviceError, PollerConfig, UringConfig};
use libdbos::process::{Config as PlatformConfig, ProcessPlatform};
use std::sync::{Arc, OnceLock};
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

/// The vmcache-style pool of the tests on a process device.
pub type TestVmCache = VmCache<ProcessBlockDevice>;

/// The Tabby pool of the tests on a process device.
pub type TestTabby = Tabby<ProcessPlatform, ProcessBlockDevice>;

/// A pool constructor: a pool of `capacity` frames on queues of `dev`, for
/// the engine's `setup` ([`hash_pool`], [`vmcache_pool`], [`tabby_pool`]).
pub type MakePool<B> = fn(&Device, usize, PoolSetup) -> Result<B, PoolError>;

/// Two queues of `dev` for a pool.
fn pool_queues(dev: &Device) -> Vec<ProcessBlockDevice> {
    vec![
        block_device(dev, 64).unwrap(),
        block_device(dev, 64).unwrap(),
    ]
}

/// `setup`'s pool configuration for `capacity` frames, in batches of 4
/// pages (little registered memory per queue).
fn small_batches(setup: &PoolSetup, capacity: usize) -> PoolConfig {
    PoolConfig {
        evict_batch: 4,
        ..setup.config(capacity)
    }
}

/// A hash pool of `capacity` frames on two queues of `dev` (batches of 4
/// pages).
pub fn hash_pool(dev: &Device, capacity: usize, setup: PoolSetup) -> Result<TestPool, PoolError> {
    HashPool::new(pool_queues(dev), small_batches(&setup, capacity))
}

/// A vmcache-style pool of `capacity` frames on two queues of `dev`
/// (batches of 4 pages).
pub fn vmcache_pool(
    dev: &Device,
    capacity: usize,
    setup: PoolSetup,
) -> Result<TestVmCache, PoolError> {
    VmCache::new(pool_queues(dev), small_batches(&setup, capacity))
}

/// The process platform the Tabby pools of a test binary share (created
/// at its first use; unpinned, so that tests running at once share the
/// cores).
pub fn tabby_platform() -> &'static ProcessPlatform {
    static P: OnceLock<&'static ProcessPlatform> = OnceLock::new();
    P.get_or_init(|| {
        ProcessPlatform::new(PlatformConfig {
            frames: 1024,
            cpus: 2,
            pin: false,
            ..PlatformConfig::default()
        })
        .expect("process platform")
    })
}

/// A Tabby pool (`Eviction::Tabby`) of `capacity` frames on two queues of
/// `dev` (batches of 4 pages), on [`tabby_platform`]. Its window covers the
/// layout's data pages only, and the process platform maps each of them at
/// creation (2 mappings each charged against `vm.max_map_count`,
/// process-wide, until the pool is dropped): keep the layouts of tests
/// that run at once small.
pub fn tabby_pool(dev: &Device, capacity: usize, setup: PoolSetup) -> Result<TestTabby, PoolError> {
    Tabby::new(
        tabby_platform(),
        pool_queues(dev),
        TabbyConfig {
            eviction: Eviction::Tabby,
            ..TabbyConfig::of(small_batches(&setup, capacity))
        },
    )
}

pub fn format(dev: &Device, layout: Layout, mode: CommitMode) -> TestEngine {
    format_on(dev, layout, mode, hash_pool)
}

pub fn format_with(dev: &Device, layout: Layout, config: Config) -> TestEngine {
    let (l, d) = devices(dev);
    Engine::format(l, d, layout, config, |s| hash_pool(dev, FRAMES, s)).expect("format")
}

/// Formats `dev` with an engine on a pool of [`FRAMES`] frames that `make`
/// builds.
pub fn format_on<B: BufferManager>(
    dev: &Device,
    layout: Layout,
    mode: CommitMode,
    make: MakePool<B>,
) -> Engine<ProcessBlockDevice, B> {
    let (l, d) = devices(dev);
    Engine::format(l, d, layout, config(mode), |s| make(dev, FRAMES, s)).expect("format")
}

pub fn open(
    dev: &Device,
    mode: CommitMode,
) -> Result<(TestEngine, dbos_bufferpool::RecoveryReport), dbos_bufferpool::Error> {
    open_on(dev, mode, hash_pool)
}

/// Opens (recovers) the store on `dev` with an engine on a pool of
/// [`FRAMES`] frames that `make` builds.
pub fn open_on<B: BufferManager>(
    dev: &Device,
    mode: CommitMode,
    make: MakePool<B>,
) -> Result<
    (
        Engine<ProcessBlockDevice, B>,
        dbos_bufferpool::RecoveryReport,
    ),
    dbos_bufferpool::Error,
> {
    let (l, d) = devices(dev);
    Engine::open(l, d, config(mode), |s| make(dev, FRAMES, s))
}

pub fn open_truncating(
    dev: &Device,
    request: dbos_bufferpool::TruncateRequest,
) -> Result<(TestEngine, dbos_bufferpool::RecoveryReport), dbos_bufferpool::Error> {
    let (l, d) = devices(dev);
    Engine::open_truncating(l, d, config(CommitMode::Fua), request, |s| {
        hash_pool(dev, FRAMES, s)
    })
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
