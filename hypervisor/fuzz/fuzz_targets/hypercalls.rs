//! The hypercall server against arbitrary guest memory, call numbers and
//! argument-block addresses (see `dbos_hypervisor::fuzzing::hypercalls`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_hypervisor::fuzzing::hypercalls(data);
});
