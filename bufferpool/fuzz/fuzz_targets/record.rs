//! Fuzz target `record`: see `dbos_bufferpool::fuzzing::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_bufferpool::fuzzing::record(data);
});
