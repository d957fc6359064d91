//! `dbos bench`: runs the side-by-side comparisons and writes one report
//! (`index.md`, `index.html`, `report.json` and SVG plots) with every
//! figure next to its baseline and its target.
//!
//! The data model is [`report`], the writers [`render`] and [`plot`], the
//! machine description [`machine`]; each section is a module that measures
//! through the library code of the `dbos-benches` and `dbos-snapshot`
//! crates (the same code the `*-compare` binaries run) and returns a
//! [`report::Section`].

pub mod kvstore;
pub mod machine;
pub mod plot;
pub mod pools;
pub mod render;
pub mod report;
pub mod snapshots;
pub mod storage;
pub mod store;
pub mod wal;

use report::{Report, Section};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The sections `dbos bench` knows, in the order it runs them, and whether
/// each is built yet.
pub const SECTIONS: [(&str, bool); 6] = [
    ("storage", true),
    ("snapshots", true),
    ("wal", true),
    ("pools", true),
    ("store", true),
    ("kvstore", true),
];

/// What to run and where to write it.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tiny sizes and short runs: the complete structure in little time.
    pub quick: bool,
    /// Sections to run (empty: every built section).
    pub only: Vec<String>,
    /// The report directory.
    pub out: PathBuf,
}

/// What a section gets: the options, where its files go, and a progress
/// line printer.
pub struct Ctx {
    pub quick: bool,
    /// The report directory (plots go here).
    pub out: PathBuf,
    /// Scratch directory for benchmark files (removed at the end).
    pub work: PathBuf,
    start: Instant,
}

impl Ctx {
    /// Prints one progress line on stderr.
    pub fn progress(&self, section: &str, what: &str) {
        eprintln!(
            "[{:>7.1} s] {section}: {what}",
            self.start.elapsed().as_secs_f64()
        );
    }

    /// The `dbos bench` command that reruns `section` alone.
    pub fn command(&self, section: &str) -> String {
        format!(
            "dbos bench{} --only {section}",
            if self.quick { " --quick" } else { "" }
        )
    }
}

/// The sections `only` names, in run order, or why `only` is refused.
pub fn select(only: &[String]) -> Result<Vec<&'static str>, String> {
    for name in only {
        match SECTIONS.iter().find(|s| s.0 == name) {
            None => {
                return Err(format!(
                    "no section {name:?}; the sections are {}",
                    SECTIONS.map(|s| s.0).join(", ")
                ))
            }
            Some((_, false)) => return Err(format!("section {name:?} is not built yet")),
            Some(_) => {}
        }
    }
    Ok(SECTIONS
        .iter()
        .filter(|(name, built)| *built && (only.is_empty() || only.iter().any(|o| o == name)))
        .map(|s| s.0)
        .collect())
}

/// Runs the selected sections and writes the report into `opts.out`.
pub fn run(opts: &Options, command: &str) -> Result<Report, String> {
    let sections = select(&opts.only)?;
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("creating {}: {e}", opts.out.display()))?;
    let out = opts
        .out
        .canonicalize()
        .map_err(|e| format!("{}: {e}", opts.out.display()))?;
    // One run per report directory: a second would delete the first's
    // benchmark files under it and overwrite its report.
    let lock_path = out.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    if let Err(e) = lock.try_lock() {
        return Err(match e {
            std::fs::TryLockError::WouldBlock => format!(
                "another dbos bench is writing its report into {} (it holds {}); wait for it \
                 to end or give this one another --out",
                out.display(),
                lock_path.display()
            ),
            std::fs::TryLockError::Error(e) => format!("locking {}: {e}", lock_path.display()),
        });
    }
    let work = out.join(".work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let ctx = Ctx {
        quick: opts.quick,
        out: out.clone(),
        work: work.clone(),
        start,
    };
    let started = utc_now();
    let machine = machine::describe(&work);
    let mut done: Vec<Section> = Vec::new();
    for name in sections {
        ctx.progress(name, "starting");
        let t = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match name {
            "storage" => storage::run(&ctx),
            "snapshots" => snapshots::run(&ctx),
            "wal" => wal::run(&ctx),
            "pools" => pools::run(&ctx),
            "store" => store::run(&ctx),
            "kvstore" => kvstore::run(&ctx),
            _ => unreachable!("select returns built sections only"),
        }));
        // A section whose workload failed is reported as failed (and the
        // command fails), the others still are.
        let mut s = ran.unwrap_or_else(|e| {
            let why = panic_message(e.as_ref());
            let mut s = Section::new(name, &format!("{name}: FAILED"), "The section failed.");
            s.failed = Some(why.clone());
            s.notes.push(format!("failed: {why}"));
            s
        });
        s.seconds = t.elapsed().as_secs_f64();
        ctx.progress(name, &format!("done in {:.1} s", s.seconds));
        done.push(s);
    }
    let _ = std::fs::remove_dir_all(&work);
    let mut report = Report {
        command: command.into(),
        quick: opts.quick,
        started,
        machine,
        sections: done,
        total_seconds: 0.0,
    };
    let not_built: Vec<&str> = SECTIONS.iter().filter(|s| !s.1).map(|s| s.0).collect();
    if !not_built.is_empty() && opts.only.is_empty() {
        if let Some(last) = report.sections.last_mut() {
            last.notes.push(format!(
                "Sections not built yet (no figures in this report): {}.",
                not_built.join(", ")
            ));
        }
    }
    report.total_seconds = start.elapsed().as_secs_f64();
    render::write(&report, &out)?;
    let failed: Vec<&str> = report
        .sections
        .iter()
        .filter(|s| s.failed.is_some())
        .map(|s| s.name.as_str())
        .collect();
    eprintln!(
        "dbos bench: report in {} ({} section(s)), total time {:.1} s",
        out.join("index.html").display(),
        report.sections.len(),
        report.total_seconds
    );
    if !failed.is_empty() {
        return Err(format!(
            "section(s) failed: {} (the report says why)",
            failed.join(", ")
        ));
    }
    Ok(report)
}

/// The message of a panic's payload.
pub fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the workload panicked".into())
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs guest image `image` under this same `dbos` (`dbos run` with
/// `run_args` before the image and `guest_args` after `--`) and returns
/// its stdout and stderr, or why it cannot run here (no KVM, the image not
/// built, the run failed).
pub fn run_guest(
    image: &str,
    run_args: &[&str],
    guest_args: &[&str],
) -> Result<(String, String), report::Value> {
    use report::Value;
    if !Path::new("/dev/kvm").exists() {
        return Err(Value::not_available("no /dev/kvm"));
    }
    let image = crate::guest_image(image);
    if !image.exists() {
        return Err(Value::not_available(format!(
            "the guest image {} is not built",
            image.display()
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Value::not_available(format!("the path of this dbos: {e}")))?;
    let out = dbos_benches::child::dies_with_parent(&mut std::process::Command::new(exe))
        .arg("run")
        .args(run_args)
        .arg(&image)
        .arg("--")
        .args(guest_args)
        .output()
        .map_err(|e| Value::not_available(format!("running the guest: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Value::not_available(format!(
            "the guest failed ({}): {}",
            out.status,
            stderr.lines().last().unwrap_or("")
        )));
    }
    Ok((stdout, stderr))
}

/// Whether `tool` runs (`tool --version` succeeds).
pub fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why `dir` cannot hold disk benchmark files, if it cannot.
pub fn disk_problem(dir: &Path) -> Option<String> {
    dbos_benches::disk_dir_problem(dir).map(|p| format!("{}: {p}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_built_sections() {
        assert_eq!(
            select(&[]).unwrap(),
            vec!["storage", "snapshots", "wal", "pools", "store", "kvstore"]
        );
        assert_eq!(select(&["snapshots".into()]).unwrap(), vec!["snapshots"]);
        assert!(select(&["nope".into()]).is_err());
        assert!(select(&["kvstore".into(), "x".into()]).is_err());
    }

    #[test]
    fn the_date_is_rfc3339() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }
}
