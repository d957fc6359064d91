//! `dbos-kv`: the key-value database as a Linux process (being written).
fn main() {
    eprintln!("dbos-kv: not built yet");
    std::process::exit(2);
}
