//! Submission-queue entries against a registered memory map: see
//! `dbos_nvme::host::fuzzing::sqe`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbos_nvme::host::fuzzing::sqe(data));
