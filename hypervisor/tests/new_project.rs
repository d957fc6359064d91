//! `dbos new` as a user runs it: the project it writes builds with cargo
//! for x86_64-unknown-none and runs under `dbos run` (and through `cargo
//! run`, its runner), the same program runs as a Linux process (`cargo
//! process`), a guest built for the host stops at `entry!` with an error
//! naming the target, and bad names and occupied directories are refused.
//!
//! The projects are built offline (their crates are the workspace's, there
//! after `cargo fetch`) into one target directory kept under the
//! workspace's target directory, so only the first run compiles libdbos
//! and its dependencies (about 15 s here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `dbos ARGS` in `dir`: (status, stdout, stderr).
fn dbos_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().expect("dbos exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The target directory the generated projects share (kept between runs).
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-project-target")
}

/// Runs `cargo --offline ARGS` in project `dir` as a user would there: none
/// of this test's cargo settings (flags, wrappers, target directory) leak
/// in, and the target directory is the shared one.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("--offline").args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = key == "CARGO_HOME" || key == "CARGO_NET_OFFLINE";
        if !keep
            && (key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTFLAGS")
                || key == "RUSTDOCFLAGS")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", shared_target_dir());
    cmd.output().unwrap()
}

/// `cargo ARGS` in `dir`, which must succeed: its stdout.
#[track_caller]
fn cargo_ok(dir: &Path, args: &[&str]) -> String {
    let out = cargo(dir, args);
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the generated program prints for `pages` pages on `cpus` CPUs in
/// the guest, each line prefixed by `[vcpu0] `.
fn guest_output(name: &str, pages: u64, cpus: u32) -> String {
    // Three page tables are created under the window's first page.
    format!(
        "[vcpu0] {name} on the guest platform, {cpus} CPU(s)\n\
         [vcpu0] reserved 2048 KiB at 0x100000000000, fault hook installed\n\
         [vcpu0] touched {pages} pages, 0 words wrong\n\
         [vcpu0] counters: faults={pages} pte_writes={} local_invalidations=0 \
         remote_invalidations=0 ipis_sent=0 vmm_exits=0\n\
         [vcpu0] released the window: {pages} pages were mapped, {pages} frames freed\n",
        pages + 3
    )
}

#[test]
fn the_project_builds_and_runs_in_the_guest_and_as_a_process() {
    let scratch = common::scratch();
    let dir = scratch.path().join("my-guest");
    let dir_arg = dir.to_str().unwrap();
    let (code, stdout, stderr) = dbos_in(scratch.path(), &["new", "my-guest", "--path", dir_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert_eq!(
        stdout,
        format!(
            "Created the guest project `my-guest` in {dir_arg}, on libdbos at {}.\n\
             \n\
             Build it and run it in guest ring 0 (once: rustup target add x86_64-unknown-none):\n\
             \n    cd {dir_arg}\n    cargo build --release\n    {} run \
             target/x86_64-unknown-none/release/my-guest\n\
             \n\
             (`cargo run --release` does the same.) Run the same program as a Linux process:\n\
             \n    cargo process\n",
            checkout.join("libdbos").display(),
            env!("CARGO_BIN_EXE_dbos"),
        )
    );
    for file in [
        "Cargo.toml",
        "build.rs",
        ".cargo/config.toml",
        "src/main.rs",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }

    // The guest image: a static executable `dbos run` accepts, built
    // without a warning.
    let out = cargo(&dir, &["build", "--release"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let image = shared_target_dir().join("x86_64-unknown-none/release/my-guest");
    assert!(image.is_file(), "{} was not built", image.display());

    // The same program as a Linux process.
    let stdout = cargo_ok(&dir, &["process", "-q", "--", "8"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], "my-guest on the process platform, 1 CPU(s)");
    assert!(
        lines[1].starts_with("reserved 2048 KiB at 0x")
            && lines[1].ends_with(", fault hook installed"),
        "{stdout}"
    );
    assert_eq!(
        lines[2..],
        [
            "touched 8 pages, 0 words wrong",
            // One mmap per page mapped; the kernel keeps TLBs coherent.
            "counters: faults=8 pte_writes=8 local_invalidations=0 remote_invalidations=0 \
             ipis_sent=0 vmm_exits=0",
            "released the window: 8 pages were mapped, 8 frames freed",
        ]
    );
    let out = cargo(&dir, &["process", "-q", "--", "513"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "usage: my-guest [PAGES] (1 to 512 pages, default 16); got [\"513\"]\n"
    );

    // A guest without the cfg, built for the host: one error, at entry!,
    // that names the host target and the guest target.
    let wrong = scratch.path().join("wrong-target");
    let (code, _, stderr) = dbos_in(
        scratch.path(),
        &["new", "wrong-target", "--path", wrong.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(
        wrong.join("src/main.rs"),
        "#![no_std]\n#![no_main]\nlibdbos::entry!(main);\n\
         fn main() -> u8 {\n    libdbos::println!(\"{}\", libdbos::boot_info().vcpu_count);\n    0\n}\n",
    )
    .unwrap();
    let host = dbos_hypervisor::new_project::HOST_TARGET;
    let out = cargo(&wrong, &["build", "--release", "--target", host]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: libdbos::entry! defines a dbos guest's entry point, and a guest is built \
             for the x86_64-unknown-none target, but this build is for {host}. Build the guest \
             with `cargo build --target x86_64-unknown-none`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "could not compile `wrong-target` (bin \"wrong-target\") due to 1 previous error"
        ),
        "{stderr}"
    );

    if !common::require_kvm() {
        return;
    }
    let (code, stdout, stderr) = dbos_in(&dir, &["run", image.to_str().unwrap(), "--", "8"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, guest_output("my-guest", 8, 1));
    // `cargo run` boots it through the runner in .cargo/config.toml: dbos
    // options, then guest arguments after a second `--`.
    let stdout = cargo_ok(
        &dir,
        &["run", "--release", "-q", "--", "--vcpus", "2", "--", "3"],
    );
    assert_eq!(stdout, guest_output("my-guest", 3, 2));
}

#[test]
fn bad_names_are_usage_errors() {
    let scratch = common::scratch();
    for (name, why) in [
        ("2fast", "it starts with '2', not a letter"),
        ("my guest", "it contains ' '"),
        ("fn", "it is a Rust keyword"),
        ("libdbos", "it is reserved"),
        ("", "it is empty"),
    ] {
        let (code, stdout, stderr) = dbos_in(scratch.path(), &["new", name]);
        assert_eq!(code, 2, "{name:?}: {stderr}");
        assert_eq!(stdout, "");
        assert!(
            stderr.starts_with(&format!(
                "dbos: error: {name:?} is not a valid project name: {why}"
            )),
            "{name:?}: {stderr}"
        );
        assert!(
            stderr.ends_with("For more information, try 'dbos new --help'.\n"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn occupied_places_are_refused_and_left_alone() {
    let scratch = common::scratch();
    let taken = scratch.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let (code, stdout, stderr) = dbos_in(scratch.path(), &["new", "taken"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "dbos: error: taken already exists and is not empty; dbos new writes a project only \
         into a new or empty directory (choose another NAME or --path)\n"
    );
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).unwrap(),
        "mine"
    );

    let file = scratch.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, stderr) = dbos_in(scratch.path(), &["new", "guest", "--path", "a-file"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("dbos: error: a-file already exists and is not a directory;"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    let (code, _, stderr) = dbos_in(scratch.path(), &["new", "guest", "--path", "a-file/sub"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "dbos: error: cannot write a-file/sub: Not a directory (os error 20)\n"
    );

    // An empty directory is used, and a missing parent is created.
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, stderr) = dbos_in(scratch.path(), &["new", "guest", "--path", "empty"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(empty.join("src/main.rs").is_file());
    let (code, _, stderr) = dbos_in(scratch.path(), &["new", "deep", "--path", "a/b/deep"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(scratch.path().join("a/b/deep/Cargo.toml").is_file());
}
