//! Queue-pair registration and a few poller turns over guest-written rings:
//! see `dbos_nvme::host::fuzzing::queue`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbos_nvme::host::fuzzing::queue(data));
