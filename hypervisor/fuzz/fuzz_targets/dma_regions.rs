//! The DMA-region hypercalls against a real disk, checked against a model
//! of the declared regions (see `dbos_hypervisor::fuzzing::dma_regions`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbos_hypervisor::fuzzing::dma_regions(data);
});
