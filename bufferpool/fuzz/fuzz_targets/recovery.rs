//! Fuzz target `recovery`: see `dbos_bufferpool::fuzzing::recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_bufferpool::fuzzing::recovery(data);
});
