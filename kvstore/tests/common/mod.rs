//! Shared helpers of the tests on the power-cut disk model
//! (`dbos_nvme::host::powercut`): a device on it, the engine's two queues,
//! the engine's configuration.
#![allow(dead_code)]

use dbos_bufferpool::host::{block_device, env, ProcessBlockDevice};
use dbos_bufferpool::{CommitMode, Config};
use dbos_nvme::host::powercut::{PowerCut, PowerCutBackend};
use dbos_nvme::host::{Device, DeviceError, PollerConfig};
use std::sync::Arc;

/// A device on an in-memory power-cut disk holding `image`.
pub fn device(image: Vec<u8>) -> (Device, Arc<PowerCut>) {
    let mut pc = None;
    let dev = Device::with_backend(4 << 20, PollerConfig::default(), |_| {
        let (b, p) = PowerCutBackend::new(image);
        pc = Some(p);
        Ok::<_, DeviceError>(b)
    })
    .expect("device");
    (dev, pc.expect("the backend was made"))
}

/// FUA commits with a log buffer of `log_buffer_blocks`.
pub fn config(log_buffer_blocks: usize) -> Config {
    Config {
        env: env(),
        mode: CommitMode::Fua,
        log_buffer_blocks,
        checkpoint_percent: 50,
    }
}

/// The engine's two queues (the log's, the control block's).
pub fn queues(dev: &Device) -> (ProcessBlockDevice, ProcessBlockDevice) {
    (
        block_device(dev, 64).expect("queue"),
        block_device(dev, 64).expect("queue"),
    )
}
