//! Replays every committed fuzz input (`hypervisor/fuzz/corpus/<target>/`,
//! crash reproducers included) through the same functions the cargo-fuzz
//! targets call, so that a fix stays fixed without libFuzzer. Each replay
//! reports how many inputs got past the body's first check (the input's
//! shape) to the code under test, and fails if too few did: a corpus, or a
//! body, that exercises nothing is a failure, not a pass.

use std::path::Path;

/// Replays `target`'s corpus; returns (inputs, inputs past the first check).
fn replay(target: &str, body: fn(&[u8]) -> bool) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    let mut past = 0;
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        match outcome {
            Ok(reached) => past += usize::from(reached),
            Err(_) => panic!("{} panics", input.display()),
        }
    }
    eprintln!(
        "{target}: {} inputs replayed, {past} past the first check",
        inputs.len()
    );
    (inputs.len(), past)
}

/// Most of a corpus libFuzzer kept reaches the code under test (it keeps
/// inputs for the coverage they add); at least half must.
fn assert_most_reach(target: &str, (inputs, past): (usize, usize)) {
    assert!(
        past * 2 >= inputs,
        "{target}: only {past} of {inputs} inputs got past the first check"
    );
}

#[test]
fn hypercalls_corpus() {
    assert_most_reach(
        "hypercalls",
        replay("hypercalls", dbos_hypervisor::fuzzing::hypercalls),
    );
}

#[test]
fn dma_regions_corpus() {
    assert_most_reach(
        "dma_regions",
        replay("dma_regions", dbos_hypervisor::fuzzing::dma_regions),
    );
}

#[test]
fn net_queue_corpus() {
    assert_most_reach(
        "net_queue",
        replay("net_queue", dbos_hypervisor::fuzzing::net_queue),
    );
}

#[test]
fn elf_corpus() {
    assert_most_reach("elf", replay("elf", dbos_hypervisor::fuzzing::elf));
}
