//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`)
//! through the target's body in `dbos_bufferpool::fuzzing`, so that every
//! past finding stays fixed without a fuzzer.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn record_corpus() {
    replay("record", dbos_bufferpool::fuzzing::record);
}

#[test]
fn control_corpus() {
    replay("control", dbos_bufferpool::fuzzing::control);
}

#[test]
fn recovery_corpus() {
    replay("recovery", dbos_bufferpool::fuzzing::recovery);
}
