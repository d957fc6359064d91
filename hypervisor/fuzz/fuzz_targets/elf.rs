//! The ELF loader and the layout on arbitrary bytes (see
//! `dbos_hypervisor::fuzzing::elf`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_hypervisor::fuzzing::elf(data);
});
