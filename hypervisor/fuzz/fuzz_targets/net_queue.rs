//! The network queue pair's registration and entries against a real
//! network (see `dbos_hypervisor::fuzzing::net_queue`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_hypervisor::fuzzing::net_queue(data);
});
