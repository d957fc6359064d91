//! Registered (io_uring fixed buffers) against plain I/O, as the poller
//! thread pays for it: poller CPU time per I/O (its own thread CPU clock,
//! `pthread_getcpuclockid`) and I/Os per poller core-second, for 4 KiB
//! random reads at queue depth 32 (by default), side by side in
//! alternating rounds:
//!
//! - **guest**: `dbos run --stats --disk FILE iobench -- fixed|plain N`,
//!   the guest's buffers in declared DMA memory (fixed) or in its heap
//!   (plain); the poller's CPU time and its fixed and plain counts come
//!   from `--stats`. The guest's ring 0 is emulated on the development
//!   machines, so the guest submits slowly and the poller's time per I/O
//!   includes its polling between submissions; the ratio is what this
//!   measures (`--guest-spin-us 0` parks the poller whenever it is idle,
//!   so that its CPU time is the I/O's and its wake-ups').
//! - **process**: the same reads through the process-mode queue pair,
//!   with the region registered (`UringConfig::fixed_buffers`) or not.
//!
//! Each round runs fixed then plain, or plain then fixed (alternating),
//! and prints both; the summary gives the medians and the ratio of I/Os
//! per poller core-second, registered over plain (the seed claim: 1.5x).
//!
//! Usage: `cargo build --release -p dbos-hypervisor && cargo run --release
//! -p dbos-benches --bin dma-bench -- --dir DIR --rounds 5 --mode both`
//! (DIR must be on a disk file system with O_DIRECT).

use clap::{Parser, ValueEnum};
use dbos_benches::load::BackgroundLoad;
use dbos_benches::median;
use dbos_benches::nvme::{prepare_file, run_queue_pair, Budget, Pattern, PollerUse, Workload};
use dbos_nvme::host::{BackingFile, UringConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Guest,
    Process,
    Both,
}

#[derive(Parser)]
#[command(about = "Poller CPU per I/O with io_uring fixed buffers against plain ones")]
struct Args {
    /// Directory for the benchmark file (a disk file system with O_DIRECT).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Size of the file read, MiB (filled with data once).
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Rounds (each measures both, in alternating order).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Queue depth.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Reads per guest run.
    #[arg(long, default_value_t = 4000)]
    guest_ios: u64,
    /// The guest disk's `--disk-spin-us` (how long its poller polls
    /// without work before it parks; dbos's default is 200). The emulated
    /// guest submits far slower than hardware would, so with a long spin
    /// the poller's time per I/O is mostly polling; 0 parks it whenever
    /// it is idle (and the guest rings the exiting doorbell).
    #[arg(long, default_value_t = 200)]
    guest_spin_us: u64,
    /// Seconds per process-mode run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Busy threads beside every measurement.
    #[arg(long, default_value_t = 0)]
    background_load: usize,
    /// The `dbos` binary.
    #[arg(long, default_value_os_t = workspace().join("target/release/dbos"))]
    dbos: PathBuf,
    /// The `iobench` guest image.
    #[arg(long, default_value_os_t = workspace().join("target/guest/x86_64-unknown-none/release/iobench"))]
    image: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ is in the workspace")
        .to_path_buf()
}

/// The number after `prefix` in `text` (up to the next space).
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let at = text.find(prefix)? + prefix.len();
    text[at..].split([' ', ';', ',']).next()?.parse().ok()
}

/// One guest run: `dbos run --stats` of iobench; the poller's use from
/// `--stats` (its disk line).
fn guest_run(args: &Args, file: &Path, fixed: bool) -> PollerUse {
    let mode = if fixed { "fixed" } else { "plain" };
    let out = Command::new(&args.dbos)
        .arg("run")
        .arg("--stats")
        .args(["--disk-spin-us", &args.guest_spin_us.to_string()])
        .arg("--disk")
        .arg(file)
        .arg(&args.image)
        .args([
            "--",
            mode,
            &args.guest_ios.to_string(),
            &args.depth.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", args.dbos.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dbos run iobench failed: {}\n{stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("dbos: disk: "))
        .unwrap_or_else(|| panic!("no disk line in {stderr}"));
    let fixed_ios = number_after(line, "dbos: disk: ").expect("fixed count") as u64;
    let plain_ios = number_after(line, "fixed buffers, ").expect("plain count") as u64;
    let ms = number_after(line, "poller thread CPU ").expect("poller CPU");
    PollerUse {
        cpu: Duration::from_secs_f64(ms / 1e3),
        fixed_ios,
        plain_ios,
    }
}

/// One process-mode run for `seconds`.
fn process_run(args: &Args, file: &Path, fixed: bool) -> PollerUse {
    let file = BackingFile::open(file).expect("the benchmark file");
    let w = Workload {
        pattern: Pattern::RandRead,
        block: 4096,
        depth: args.depth,
    };
    let uring = UringConfig {
        fixed_buffers: fixed,
        ..UringConfig::default()
    };
    let budget = Budget::time(Duration::from_secs_f64(args.seconds));
    let s = run_queue_pair(&file, w, budget, Default::default(), uring);
    s.poller.expect("the queue pair reports its poller")
}

fn report(name: &str, use_: &PollerUse) {
    println!(
        "  {name:<11} {:>8} I/Os (fixed {:>8}, plain {:>8}), poller CPU {:>9.3} ms: {:>7.2} us/IO, \
         {:>9.0} IOs per poller core-second",
        use_.ios(),
        use_.fixed_ios,
        use_.plain_ios,
        use_.cpu.as_secs_f64() * 1e3,
        use_.cpu_us_per_io(),
        use_.ios_per_core_second()
    );
}

fn compare(args: &Args, what: &str, run: impl Fn(bool) -> PollerUse) {
    println!("{what}: 4 KiB random reads, queue depth {}", args.depth);
    let (mut fixed, mut plain) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        println!("round {}:", round + 1);
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for registered in order {
            let u = run(registered);
            if registered {
                assert_eq!(u.plain_ios, 0, "a registered run issued plain reads");
                report("registered", &u);
                fixed.push(u);
            } else {
                assert_eq!(u.fixed_ios, 0, "a plain run issued fixed reads");
                report("plain", &u);
                plain.push(u);
            }
        }
    }
    let med =
        |v: &[PollerUse], f: fn(&PollerUse) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (fu, pu) = (
        med(&fixed, PollerUse::cpu_us_per_io),
        med(&plain, PollerUse::cpu_us_per_io),
    );
    let (fr, pr) = (
        med(&fixed, PollerUse::ios_per_core_second),
        med(&plain, PollerUse::ios_per_core_second),
    );
    let ratios: Vec<f64> = fixed
        .iter()
        .zip(&plain)
        .map(|(f, p)| f.ios_per_core_second() / p.ios_per_core_second())
        .collect();
    println!(
        "{what}: median poller CPU per I/O: registered {fu:.2} us, plain {pu:.2} us; I/Os per \
         poller core-second: registered {fr:.0}, plain {pr:.0}; registered/plain {:.2}x \
         (per round: {}; the seed claim is 1.5x)",
        median(&ratios),
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn main() {
    let args = Args::parse();
    if !(args.seconds.is_finite() && args.seconds > 0.0) || args.rounds == 0 || args.depth == 0 {
        eprintln!("--seconds, --rounds and --depth take positive numbers");
        std::process::exit(2);
    }
    dbos_benches::require_disk_dir(&args.dir);
    let guest = matches!(args.mode, Mode::Guest | Mode::Both);
    if guest {
        for (what, path) in [("--dbos", &args.dbos), ("--image", &args.image)] {
            if !path.exists() {
                eprintln!(
                    "{what} {}: not found; build it with `cargo build --release -p \
                     dbos-hypervisor` (which builds the guest images too)",
                    path.display()
                );
                std::process::exit(2);
            }
        }
    }
    let path = args.dir.join("dma-bench.img");
    // Prepared once, then closed: each run opens (and locks) it itself.
    drop(prepare_file(&path, args.file_mib << 20).expect("preparing the benchmark file"));
    let load = BackgroundLoad::start(args.background_load);
    println!(
        "dma-bench: {} MiB file in {}, {} rounds, background load {}, guest poller spin {} us",
        args.file_mib,
        args.dir.display(),
        args.rounds,
        load.threads(),
        args.guest_spin_us
    );
    if guest {
        compare(&args, "guest", |fixed| guest_run(&args, &path, fixed));
    }
    if matches!(args.mode, Mode::Process | Mode::Both) {
        compare(&args, "process", |fixed| process_run(&args, &path, fixed));
    }
    drop(load);
}
