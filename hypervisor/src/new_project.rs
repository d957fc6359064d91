//! `dbos new NAME`: writes a cargo project for a guest of one's own.
//!
//! The project builds for `x86_64-unknown-none` by default
//! (`.cargo/config.toml`), links its binary with libdbos's linker script
//! and `--no-pie` through the `libdbos-build` helper (`build.rs`), so that
//! `cargo build --release` makes an image `dbos run` loads, and its
//! `src/main.rs` is one program generic over libdbos's `Platform` that runs
//! in ring 0 and, built for the host (`cargo process`), as a Linux process
//! on `ProcessPlatform`. The templates are in `hypervisor/templates/new/`.
//!
//! libdbos and libdbos-build are path dependencies on the checkout this
//! `dbos` was built in ([`Checkout::built_in`]): the generated
//! `Cargo.toml` names them by absolute path, and says to change both paths
//! if the checkout moves.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The guest target (`libdbos_build::GUEST_TARGET`).
pub const GUEST_TARGET: &str = libdbos_build::GUEST_TARGET;

/// The host target `cargo process` builds for: the one this `dbos` runs
/// on (process mode, like dbos, is x86-64 Linux).
pub const HOST_TARGET: &str = if cfg!(target_env = "musl") {
    "x86_64-unknown-linux-musl"
} else {
    "x86_64-unknown-linux-gnu"
};

/// The longest project name (crates.io's limit).
pub const MAX_NAME: usize = 64;

/// The files of a project: path inside the project, template.
const TEMPLATES: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("../templates/new/Cargo.toml.in")),
    ("build.rs", include_str!("../templates/new/build.rs.in")),
    (
        ".cargo/config.toml",
        include_str!("../templates/new/config.toml.in"),
    ),
    ("src/main.rs", include_str!("../templates/new/main.rs.in")),
    (".gitignore", include_str!("../templates/new/gitignore.in")),
];

/// Names cargo refuses for a package, or that would clash with what the
/// project depends on or builds into.
const RESERVED: [&str; 13] = [
    // Rust's own crates.
    "alloc",
    "core",
    "proc_macro",
    "proc-macro",
    "std",
    "test",
    // Directories of cargo's target directory.
    "build",
    "deps",
    "examples",
    "incremental",
    // The project's own dependencies.
    "libdbos",
    "libdbos-build",
    "libdbos_build",
];

/// Rust keywords (cargo refuses them as package names).
const KEYWORDS: [&str; 51] = [
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "Self", "static", "struct", "super", "trait", "true", "try", "type",
    "typeof", "unsafe", "unsized", "use", "virtual", "where", "while",
];

/// Where the libdbos crates a project depends on live, and the `dbos` that
/// `cargo run` in the project uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The `libdbos` crate.
    pub libdbos: PathBuf,
    /// The `libdbos-build` crate.
    pub libdbos_build: PathBuf,
    /// The `dbos` binary for `.cargo/config.toml`'s runner.
    pub dbos: PathBuf,
}

impl Checkout {
    /// The checkout this `dbos` was built in (its path is recorded at build
    /// time), with `dbos` as the runner.
    pub fn built_in(dbos: PathBuf) -> Checkout {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the hypervisor crate lives in a folder of the checkout");
        Checkout {
            libdbos: root.join("libdbos"),
            libdbos_build: root.join("libdbos-build"),
            dbos,
        }
    }
}

/// Why a project was not written.
#[derive(Debug)]
pub enum NewError {
    /// NAME is not a name cargo accepts for a package (a usage error).
    BadName { name: String, why: String },
    /// The project's directory exists and is not empty, or is not a
    /// directory.
    Exists { dir: PathBuf, what: &'static str },
    /// A crate the project depends on is not where this `dbos` was built.
    MissingCrate { name: &'static str, path: PathBuf },
    /// A path to go into the project's files is not UTF-8.
    NotUtf8(PathBuf),
    /// Creating a directory or writing a file failed.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl NewError {
    /// Whether this is a usage error (exit status 2) rather than a failure
    /// to write the project (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, NewError::BadName { .. })
    }
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewError::BadName { name, why } => {
                write!(f, "{name:?} is not a valid project name: {why}")
            }
            NewError::Exists { dir, what } => write!(
                f,
                "{} {what}; dbos new writes a project only into a new or empty directory \
                 (choose another NAME or --path)",
                dir.display()
            ),
            NewError::MissingCrate { name, path } => write!(
                f,
                "{name} is not at {} any more (this dbos was built in that checkout): build \
                 dbos again in your dbos checkout (cargo build --release --bin dbos) and run \
                 that one",
                path.display()
            ),
            NewError::NotUtf8(path) => write!(
                f,
                "the path {} is not UTF-8, so it cannot be written into the project's \
                 Cargo.toml and .cargo/config.toml",
                path.display()
            ),
            NewError::Io { path, error } => write!(f, "cannot write {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for NewError {}

/// Checks that `name` is a package name cargo accepts and that does not
/// clash with the project's dependencies: 1 to [`MAX_NAME`] ASCII letters,
/// digits, `-` and `_`, starting with a letter, not a Rust keyword or a
/// name cargo reserves.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let bad = |why: String| {
        Err(NewError::BadName {
            name: name.to_string(),
            why,
        })
    };
    let Some(first) = name.chars().next() else {
        return bad("it is empty".into());
    };
    if name.len() > MAX_NAME {
        return bad(format!("it has {} bytes, more than {MAX_NAME}", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(format!(
            "it contains {c:?}; a name is made of ASCII letters, digits, '-' and '_'"
        ));
    }
    if !first.is_ascii_alphabetic() {
        return bad(format!("it starts with {first:?}, not a letter"));
    }
    if KEYWORDS.contains(&name) {
        return bad("it is a Rust keyword".into());
    }
    if RESERVED.contains(&name) {
        return bad(
            "it is reserved (a crate of Rust's, a directory of cargo's, or a crate the \
             project depends on)"
                .into(),
        );
    }
    Ok(())
}

/// `text` as a TOML basic string, quotes included.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path` as a TOML string, if it is UTF-8.
fn toml_path(path: &Path) -> Result<String, NewError> {
    path.to_str()
        .map(toml_string)
        .ok_or_else(|| NewError::NotUtf8(path.to_path_buf()))
}

/// The files of project `name` depending on `checkout`: (path inside the
/// project, contents). `name` must pass [`check_name`].
pub fn render(name: &str, checkout: &Checkout) -> Result<Vec<(&'static str, String)>, NewError> {
    let libdbos = toml_path(&checkout.libdbos)?;
    let libdbos_build = toml_path(&checkout.libdbos_build)?;
    let dbos = toml_path(&checkout.dbos)?;
    Ok(TEMPLATES
        .iter()
        .map(|(path, template)| {
            let text = template
                .replace("@NAME@", name)
                .replace("@LIBDBOS@", &libdbos)
                .replace("@LIBDBOS_BUILD@", &libdbos_build)
                .replace("@DBOS@", &dbos)
                .replace("@GUEST_TARGET@", GUEST_TARGET)
                .replace("@HOST_TARGET@", HOST_TARGET);
            (*path, text)
        })
        .collect())
}

/// What [`create`] made, to take back if a later step fails.
struct Made {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Made {
    /// Removes what was made, newest first (best effort: this runs on an
    /// error path).
    fn undo(&self) {
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Creates `dir` and the parents it lacks, recording each.
    fn dir(&mut self, dir: &Path) -> Result<(), NewError> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d.to_path_buf());
            at = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d).map_err(|error| NewError::Io {
                path: d.clone(),
                error,
            })?;
            self.dirs.push(d);
        }
        Ok(())
    }

    /// Writes a new file (never replacing one).
    fn file(&mut self, path: &Path, text: &str) -> Result<(), NewError> {
        let io = |error| NewError::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        self.files.push(path.to_path_buf());
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// Writes project `name` into `dir` (created if missing, refused unless
/// empty). On failure nothing it created is left behind.
pub fn create(name: &str, dir: &Path, checkout: &Checkout) -> Result<(), NewError> {
    check_name(name)?;
    for (crate_name, path) in [
        ("libdbos", &checkout.libdbos),
        ("libdbos-build", &checkout.libdbos_build),
    ] {
        if !path.join("Cargo.toml").is_file() {
            return Err(NewError::MissingCrate {
                name: crate_name,
                path: path.clone(),
            });
        }
    }
    let files = render(name, checkout)?;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(dir).map_err(|error| NewError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
            if entries.next().is_some() {
                return Err(NewError::Exists {
                    dir: dir.to_path_buf(),
                    what: "already exists and is not empty",
                });
            }
        }
        Ok(_) => {
            return Err(NewError::Exists {
                dir: dir.to_path_buf(),
                what: "already exists and is not a directory",
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(NewError::Io {
                path: dir.to_path_buf(),
                error,
            })
        }
    }
    let mut made = Made {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    let result = (|| {
        made.dir(dir)?;
        for (path, text) in &files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                made.dir(parent)?;
            }
            made.file(&path, text)?;
        }
        Ok(())
    })();
    if result.is_err() {
        made.undo();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> Checkout {
        Checkout {
            libdbos: "/src/dbos/libdbos".into(),
            libdbos_build: "/src/dbos/libdbos-build".into(),
            dbos: "/src/dbos/target/release/dbos".into(),
        }
    }

    #[test]
    fn names() {
        for good in ["a", "my-guest", "my_guest2", "Guest", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "it is empty"),
            ("2fast", "starts with '2', not a letter"),
            ("-x", "starts with '-'"),
            ("_x", "starts with '_'"),
            ("a b", "contains ' '"),
            ("a/b", "contains '/'"),
            ("ünï", "contains 'ü'"),
            ("fn", "Rust keyword"),
            ("self", "Rust keyword"),
            ("std", "reserved"),
            ("build", "reserved"),
            ("libdbos", "reserved"),
            ("libdbos-build", "reserved"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.is_usage());
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e = check_name(&"x".repeat(65)).unwrap_err().to_string();
        assert!(e.contains("65 bytes, more than 64"), "{e}");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/a/b"), "\"/a/b\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn render_fills_every_placeholder() {
        let files = render("my-guest", &checkout()).unwrap();
        let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            paths,
            [
                "Cargo.toml",
                "build.rs",
                ".cargo/config.toml",
                "src/main.rs",
                ".gitignore"
            ]
        );
        for (path, text) in &files {
            assert!(!text.contains('@'), "{path} keeps a placeholder:\n{text}");
        }
        let text = |p: &str| &files.iter().find(|(q, _)| *q == p).unwrap().1;
        assert!(text("Cargo.toml").contains("name = \"my-guest\""));
        assert!(text("Cargo.toml").contains("libdbos = { path = \"/src/dbos/libdbos\" }"));
        assert!(
            text("Cargo.toml").contains("libdbos-build = { path = \"/src/dbos/libdbos-build\" }")
        );
        assert!(text(".cargo/config.toml").contains("target = \"x86_64-unknown-none\""));
        assert!(text(".cargo/config.toml")
            .contains("runner = [\"/src/dbos/target/release/dbos\", \"run\"]"));
        assert!(text("build.rs").contains("libdbos_build::link_guest()"));
    }
}
