//! Replays every committed fuzz corpus file (`nvme/fuzz/corpus/<target>/`)
//! through the target's body in `dbos_nvme::host::fuzzing`, so that what
//! the fuzzer once found (and the coverage it reached) stays checked by an
//! ordinary `cargo test`.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        body(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
    eprintln!("{target}: {n} corpus files replayed");
}

#[test]
fn sqe_corpus() {
    replay("sqe", dbos_nvme::host::fuzzing::sqe);
}

#[test]
fn queue_corpus() {
    replay("queue", dbos_nvme::host::fuzzing::queue);
}
