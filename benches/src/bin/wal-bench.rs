//! The WAL's durability side by side on one disk:
//!
//! - the physical limit: a loop of 8 KiB `O_DIRECT|O_DSYNC` `pwrite`s;
//! - the device path without the WAL: 4 KiB FUA writes one at a time
//!   through each device measured;
//! - commit latency and commits per second at 1, 4, 16 and 64 concurrent
//!   committers through the engine (key-value transactions of 2 keys) and
//!   the WAL's group commit, with FUA log writes and with log writes plus
//!   one flush per batch, on each device: the NVMe queue pair with its
//!   poller and io_uring (process mode, `qp`), the direct device, whose
//!   callers make the system calls themselves (`direct`,
//!   `dbos_bufferpool::direct`), and with `--device qp-inline|all` the
//!   queue pair whose host runs in the thread using it (`qp-inline`,
//!   `dbos_nvme::host::inline`, no poller thread); all on an `O_DIRECT`
//!   file;
//! - write amplification: bytes written to the log per committed byte.
//!
//! Then `--rounds` rounds of the raw loop, 1 and then 16 FUA committers on
//! each device (raw, qp 1, direct 1, qp 16, direct 16 with both), printing
//! each round's ratios and their medians: the disk's speed drifts between
//! runs seconds apart, and the targets are ratios (FUA commit latency /
//! raw write <= 1.2x; 16 committers >= 6x the commits/s of 1).
//!
//! `--background-load N` runs N busy threads beside every measurement (the
//! same comparison on a machine whose cores are taken); `--spin` makes the
//! WAL's waits spin instead of yielding the CPU; `--no-sleep` keeps group
//! commit's followers from sleeping (they yield until the batch ends, as
//! before adaptive waits).
//!
//! Usage: `cargo run --release -p dbos-benches --bin wal-bench -- --dir DIR
//! --seconds 2 --rounds 5 --device both --background-load 0` (DIR defaults
//! to the system temp dir, which must support O_DIRECT).
//!
//! `dbos bench --only wal` runs this comparison through the same library
//! code (`dbos_benches`) and writes it into the one report with the others
//! (`target/dbos-report/`).

use clap::Parser;
use dbos_benches::load::BackgroundLoad;
use dbos_benches::median;
use dbos_benches::wal::{device_fua_loop, engine_run, raw_dsync_loop, Dev, Row, TXN_BYTES};
use dbos_bufferpool::CommitMode;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "WAL commits side by side with the raw durable write, on the queue pair \
                   and on the direct device"
)]
struct Args {
    /// Directory for the benchmark files (must support O_DIRECT).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of raw / 1 / 16 FUA committers after the table (0: none).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Busy threads of pure computation to run beside every measurement
    /// (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    background_load: usize,
    /// The WAL's waits spin instead of yielding the CPU.
    #[arg(long)]
    spin: bool,
    /// Group commit's followers never sleep (they spin on, yielding, until
    /// the batch ends: the behaviour before adaptive waits, for an A/B).
    #[arg(long)]
    no_sleep: bool,
    /// The device(s) under the engine.
    #[arg(long, value_enum, default_value_t = DeviceArg::Both)]
    device: DeviceArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    Qp,
    Direct,
    /// The queue pair with its host in the committing threads (no poller
    /// thread).
    #[value(name = "qp-inline")]
    Inline,
    /// qp and direct.
    Both,
    /// qp, direct and qp-inline.
    All,
}

/// The load average (1, 5, 15 minutes), as `uptime` shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("unknown".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

/// "median M, range A-B" of ratios.
fn summary(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    format!("median {:.2}x, range {lo:.2}-{hi:.2}x", median(v))
}

fn main() {
    let args = Args::parse();
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        eprintln!("--seconds takes a positive number, not {}", args.seconds);
        std::process::exit(2);
    }
    dbos_benches::require_disk_dir(&args.dir);
    let (dir, secs, rounds, spin, no_sleep) = (
        &args.dir,
        args.seconds,
        args.rounds,
        args.spin,
        args.no_sleep,
    );
    let devices = match args.device {
        DeviceArg::Qp => vec![Dev::Qp],
        DeviceArg::Direct => vec![Dev::Direct],
        DeviceArg::Inline => vec![Dev::Inline],
        DeviceArg::Both => vec![Dev::Qp, Dev::Direct],
        DeviceArg::All => vec![Dev::Qp, Dev::Direct, Dev::Inline],
    };
    // Runs until the end of main: beside every measurement.
    let load = BackgroundLoad::start(args.background_load);
    println!(
        "disk: {} ({secs} s per configuration, {rounds} round(s)); device(s): {}; waits {}",
        dir.display(),
        devices
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
        if spin { "spin" } else { "yield the CPU" },
    );
    println!(
        "group commit's followers: {}",
        if no_sleep {
            "never sleep (--no-sleep)"
        } else {
            "sleep once they have waited as long as a batch takes (at most 100 us)"
        }
    );
    println!(
        "background load: {} busy thread(s); load average at the start: {}; {} CPUs",
        load.threads(),
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (n, el, p99) = raw_dsync_loop(dir, secs);
    let raw_lat = el / n as f64 * 1e6;
    println!(
        "raw 8 KiB O_DIRECT|O_DSYNC pwrite loop: {n} writes, {raw_lat:.1} us mean, \
         {p99:.1} us p99, {:.0}/s",
        n as f64 / el
    );
    for &d in &devices {
        let (n, el) = device_fua_loop(dir, d, secs);
        println!(
            "{} 4 KiB FUA write loop (no WAL): {n} writes, {:.1} us mean, {:.0}/s",
            d.name(),
            el / n as f64 * 1e6,
            n as f64 / el
        );
    }
    println!();
    println!(
        "{:<7} {:<11} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9}",
        "device",
        "mode",
        "committers",
        "commits",
        "commits/s",
        "mean us",
        "p99 us",
        "vs raw",
        "x 1-thr",
        "commits/batch",
        "WA"
    );
    for mode in [CommitMode::Fua, CommitMode::WriteFlush] {
        for &d in &devices {
            let mut single = 0.0;
            for committers in [1, 4, 16, 64] {
                let r = engine_run(dir, d, mode, committers, secs, spin, no_sleep);
                if committers == 1 {
                    single = r.rate();
                }
                println!(
                    "{:<7} {:<11} {:>10} {:>9} {:>10.0} {:>10.1} {:>9.1} {:>9.2}x {:>8.2}x \
                     {:>12.1} {:>9.1}",
                    r.device.name(),
                    format!("{:?}", r.mode),
                    r.committers,
                    r.commits,
                    r.rate(),
                    r.mean_latency_us,
                    r.p99_latency_us,
                    r.mean_latency_us / raw_lat,
                    r.rate() / single,
                    r.commits as f64 / r.batches as f64,
                    r.log_bytes as f64 / (r.commits * TXN_BYTES) as f64,
                );
            }
        }
    }
    if rounds > 0 {
        println!();
        // Per device: FUA 1-committer latency / raw, 16 vs 1 committers.
        let mut latency = vec![Vec::new(); devices.len()];
        let mut scaling = vec![Vec::new(); devices.len()];
        // With both devices: direct/qp 1-committer latency, 16-committer rate.
        let (mut direct_latency, mut direct_rate) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (n, el, _) = raw_dsync_loop(dir, secs);
            let raw_us = el / n as f64 * 1e6;
            let run = |d, c| engine_run(dir, d, CommitMode::Fua, c, secs, spin, no_sleep);
            let ones: Vec<Row> = devices.iter().map(|&d| run(d, 1)).collect();
            let sixteens: Vec<Row> = devices.iter().map(|&d| run(d, 16)).collect();
            println!("round {round}: raw write {raw_us:.1} us");
            for (i, (one, sixteen)) in ones.iter().zip(&sixteens).enumerate() {
                latency[i].push(one.mean_latency_us / raw_us);
                scaling[i].push(sixteen.rate() / one.rate());
                println!(
                    "  {:<7} Fua 1 committer {:.1} us = {:.2}x raw, {:.0}/s; \
                     16 committers {:.0}/s = {:.2}x",
                    one.device.name(),
                    one.mean_latency_us,
                    one.mean_latency_us / raw_us,
                    one.rate(),
                    sixteen.rate(),
                    sixteen.rate() / one.rate()
                );
            }
            if let ([qp1, direct1], [qp16, direct16]) = (&ones[..], &sixteens[..]) {
                direct_latency.push(direct1.mean_latency_us / qp1.mean_latency_us);
                direct_rate.push(direct16.rate() / qp16.rate());
                println!(
                    "  direct/qp: 1-committer latency {:.2}x, 16-committer commits/s {:.2}x",
                    direct_latency[round - 1],
                    direct_rate[round - 1]
                );
            }
        }
        println!("over {rounds} round(s):");
        for (i, d) in devices.iter().enumerate() {
            println!(
                "  {:<7} FUA commit latency / raw write: {} (target <= 1.2x); \
                 16 vs 1 committers: {} (target >= 6x)",
                d.name(),
                summary(&latency[i]),
                summary(&scaling[i])
            );
        }
        if !direct_latency.is_empty() {
            println!(
                "  direct/qp: 1-committer latency {}; 16-committer commits/s {}",
                summary(&direct_latency),
                summary(&direct_rate)
            );
        }
    }
    println!();
    println!(
        "vs raw: mean commit latency / mean raw write latency; x 1-thr: commits/s over the \
         same device's 1-committer rate; WA: log bytes written per committed byte \
         ({TXN_BYTES} bytes of values per transaction; its log records take 91 bytes)"
    );
    println!("load average at the end: {}", load_average());
}
