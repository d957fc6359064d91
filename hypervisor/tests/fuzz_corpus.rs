//! Replays every committed fuzz input (`hypervisor/fuzz/corpus/<target>/`,
//! crash reproducers included) through the same functions the cargo-fuzz
//! targets call, so that a fix stays fixed without libFuzzer.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{} panics", input.display());
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn hypercalls_corpus() {
    replay("hypercalls", dbos_hypervisor::fuzzing::hypercalls);
}

#[test]
fn elf_corpus() {
    replay("elf", dbos_hypervisor::fuzzing::elf);
}
