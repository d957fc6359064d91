//! Records the target libdbos is built for, so that `entry!` can name it in
//! the error it gives when a guest is built for a target other than
//! x86_64-unknown-none (`src/host_macros.rs`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // `{:?}` of a string is a Rust string literal.
    let source = format!(
        "/// The target this libdbos was built for, as a string literal.\n\
         #[doc(hidden)]\n\
         #[macro_export]\n\
         macro_rules! __libdbos_target {{\n    () => {{\n        {target:?}\n    }};\n}}\n"
    );
    let path = out.join("target.rs");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(source.as_str()) {
        std::fs::write(&path, source)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
