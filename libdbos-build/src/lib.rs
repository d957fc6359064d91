//! Build-script helper for dbos guests.
//!
//! A dbos guest is a static, non-position-independent ELF executable linked
//! at the fixed addresses of libdbos's linker script (`libdbos/guest.ld`,
//! embedded in this crate as [`LINKER_SCRIPT`]). Without it, cargo links a
//! `x86_64-unknown-none` binary as a position-independent executable at
//! address 0, which `dbos run` refuses ("wrong ELF type 3"). A guest package
//! makes this crate a build-dependency and calls [`link_guest`] from its
//! `build.rs`:
//!
//! ```toml
//! [build-dependencies]
//! libdbos-build = { path = "/path/to/dbos/libdbos-build" }
//! ```
//!
//! ```ignore
//! // build.rs (a build script: run by cargo, not a doctest)
//! fn main() {
//!     println!("cargo:rerun-if-changed=build.rs");
//!     libdbos_build::link_guest();
//! }
//! ```
//!
//! Built for the guest target ([`GUEST_TARGET`]), the package's binaries are
//! then linked with the script and `--no-pie`. Built for any other target,
//! nothing is passed to the linker: a program that also runs as a Linux
//! process (on `libdbos::process::ProcessPlatform`) builds for the host as
//! usual. `dbos new NAME` writes a project wired this way.

use std::fmt;
use std::path::{Path, PathBuf};

/// The target guests are built for: soft-float x86-64 without an OS, whose
/// code runs in ring 0 even where KVM emulates it instruction by
/// instruction (no SSE or AVX).
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// libdbos's linker script (`libdbos/guest.ld`): segments linked in the
/// image window at `IMAGE_BASE + physical address`, the entry section
/// first, and the ABI version note kept in a `PT_NOTE` segment.
pub const LINKER_SCRIPT: &str = include_str!("../../libdbos/guest.ld");

/// The file name [`link_guest`] gives the linker script in `OUT_DIR`.
pub const LINKER_SCRIPT_NAME: &str = "guest.ld";

/// Why [`try_link_guest`] could not set up the link.
#[derive(Debug)]
pub enum Error {
    /// A variable cargo sets for build scripts is missing: the function was
    /// not called from a build script.
    NotInBuildScript(&'static str),
    /// The linker script could not be written.
    WriteScript(PathBuf, std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInBuildScript(var) => write!(
                f,
                "libdbos_build::link_guest must be called from a build script (build.rs): \
                 cargo did not set {var}"
            ),
            Error::WriteScript(path, e) => {
                write!(
                    f,
                    "cannot write the dbos linker script {}: {e}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NotInBuildScript(_) => None,
            Error::WriteScript(_, e) => Some(e),
        }
    }
}

/// Call from a build script: when the package is built for
/// [`GUEST_TARGET`], links its binaries with libdbos's linker script as
/// static, non-PIE executables and returns `true`; for any other target
/// passes nothing and returns `false`. Panics (failing the build with the
/// message) where [`try_link_guest`] returns an error.
pub fn link_guest() -> bool {
    match try_link_guest() {
        Ok(guest) => guest,
        Err(e) => panic!("{e}"),
    }
}

/// As [`link_guest`], returning the error instead of panicking.
pub fn try_link_guest() -> Result<bool, Error> {
    let target = std::env::var("TARGET").map_err(|_| Error::NotInBuildScript("TARGET"))?;
    let out_dir = std::env::var_os("OUT_DIR").ok_or(Error::NotInBuildScript("OUT_DIR"))?;
    let args = link_args(&target, Path::new(&out_dir))?;
    for arg in &args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    Ok(!args.is_empty())
}

/// The linker arguments for a build for `target` whose build script writes
/// to `out_dir`: for [`GUEST_TARGET`], `-T<out_dir>/guest.ld` (written
/// there, unless it already holds the script) and `--no-pie`; none for any
/// other target.
pub fn link_args(target: &str, out_dir: &Path) -> Result<Vec<String>, Error> {
    if target != GUEST_TARGET {
        return Ok(Vec::new());
    }
    let script = out_dir.join(LINKER_SCRIPT_NAME);
    // Rewritten only when it differs, so its time stamp stays put.
    if std::fs::read_to_string(&script).ok().as_deref() != Some(LINKER_SCRIPT) {
        std::fs::write(&script, LINKER_SCRIPT)
            .map_err(|e| Error::WriteScript(script.clone(), e))?;
    }
    Ok(vec![
        format!("-T{}", script.display()),
        "--no-pie".to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_target_gets_the_script_and_no_pie() {
        let dir = std::env::temp_dir().join(format!("libdbos-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = link_args(GUEST_TARGET, &dir).unwrap();
        let script = dir.join(LINKER_SCRIPT_NAME);
        assert_eq!(
            args,
            [format!("-T{}", script.display()), "--no-pie".to_string()]
        );
        assert_eq!(std::fs::read_to_string(&script).unwrap(), LINKER_SCRIPT);
        assert!(LINKER_SCRIPT.contains("ENTRY(_start)"));
        assert!(LINKER_SCRIPT.contains("KEEP(*(.note.dbos))"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_targets_link_as_usual() {
        let nowhere = Path::new("/nonexistent/out");
        assert!(link_args("x86_64-unknown-linux-gnu", nowhere)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unwritable_out_dir_is_named() {
        let e = link_args(GUEST_TARGET, Path::new("/nonexistent/out")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("cannot write the dbos linker script /nonexistent/out/guest.ld: "),
            "{text}"
        );
    }
}
