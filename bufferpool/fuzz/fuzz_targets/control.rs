//! Fuzz target `control`: see `dbos_bufferpool::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_bufferpool::fuzzing::control(data);
});
