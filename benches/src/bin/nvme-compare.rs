//! Side-by-side storage comparison on one file: `pread`/`pwrite`, io_uring
//! used directly, the dbos queue pair + poller (process mode), the queue
//! pair with its host run by the driver thread (`qp-inline`, no poller
//! thread), and fio if installed, for random 4 KiB reads and sequential
//! 4 KiB / 64 KiB writes at queue depth 1 and 32. Prints IOPS and latency
//! and the ratios the targets are about, for each kind of queue pair:
//!
//! - queue pair IOPS >= 90% of fio's at QD32 for 4 KiB random reads;
//! - queue pair mean latency <= 1.2x `pread`'s at QD1.
//!
//! The disk of a virtual machine moves by 10-30% between runs seconds apart,
//! so with `--rounds N` every workload runs N rounds, each round running
//! every method once in a rotated order; the report gives each method's
//! median round and the ratios of those medians, and for the QD32 target
//! also the median of the per-round ratios (each from two runs that were
//! seconds apart).
//!
//! `dbos bench --only storage` runs this comparison through the same library
//! code (`dbos_benches`) and writes it into the one report with the others
//! (`target/dbos-report/`).

use clap::Parser;
use dbos_benches::load::BackgroundLoad;
use dbos_benches::nvme::{
    prepare_file, run_fio, run_inline_queue_pair, run_pread, run_queue_pair, run_uring_submitting,
    Budget, Pattern, Summary, Workload,
};
use dbos_benches::{median_by, poller_config, require_direct_io};
use dbos_nvme::host::UringConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Storage I/O side by side: pread/pwrite, io_uring, the dbos queue pair (poller thread or inline), fio"
)]
struct Args {
    /// The benchmark file (created and filled if missing or of another size).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("nvme-bench.img"))]
    file: PathBuf,
    /// Size of the benchmark file in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Seconds per run (one method, one workload, one round).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds per workload; each method runs once per round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only workloads whose name contains this, e.g. "randread 4k qd32".
    #[arg(long)]
    only: Option<String>,
    /// Methods to run (default: all; fio only if installed).
    #[arg(long, value_enum, value_delimiter = ',')]
    methods: Vec<Method>,
    /// The poller's spin before parking, in microseconds.
    #[arg(long)]
    spin_us: Option<u64>,
    /// How long the poller polls with I/O in flight and nothing completing
    /// before it blocks until an I/O completes, in microseconds; `never`
    /// keeps polling (yielding the CPU between turns).
    #[arg(long, value_name = "US|never")]
    block_in_flight_us: Option<String>,
    /// Spins before sleeping stay at their minimum (the poller's 20 us with
    /// operations in flight, a waiter's 20 us) instead of adapting to the
    /// waits: the behaviour before adaptive spins, for an A/B.
    #[arg(long)]
    fixed_spin: bool,
    /// Set up the poller's io_uring without COOP_TASKRUN.
    #[arg(long)]
    no_coop_taskrun: bool,
    /// Set up the poller's io_uring without SINGLE_ISSUER|DEFER_TASKRUN.
    #[arg(long)]
    no_defer_taskrun: bool,
    /// Operations per io_uring submission in the poller (0: no limit).
    #[arg(long)]
    submit_batch: Option<u32>,
    /// Busy threads of pure computation to run beside every method, for
    /// the same comparison on a shared machine (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    background_load: usize,
    /// The io_uring method hands its refills to the kernel this many
    /// entries per io_uring_enter (0, the default: the whole refill in one
    /// enter, which plugs the block layer for more than 2).
    #[arg(long, default_value_t = 0)]
    uring_submit_every: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    Pread,
    #[value(name = "io_uring")]
    Uring,
    #[value(name = "qp")]
    QueuePair,
    /// The queue pair with its host run by the driver thread (no poller
    /// thread).
    #[value(name = "qp-inline")]
    InlineQueuePair,
    Fio,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pread => "pread",
            Method::Uring => "io_uring",
            Method::QueuePair => "queue pair",
            Method::InlineQueuePair => "qp inline",
            Method::Fio => "fio",
        }
    }
}

fn row(label: &str, s: &Summary) {
    let bells = s.doorbells.map_or("-".to_string(), |d| {
        format!("{:.4}", d as f64 / s.ops.max(1) as f64)
    });
    println!(
        "  {label:<16} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10} {:>12}",
        s.iops, s.mean_us, s.p50_us, s.p99_us, s.ops, bells
    );
}

/// CPU time (seconds) used so far by the whole machine, and by this
/// process and its waited-for children (fio), from /proc/stat and getrusage.
fn cpu_seconds() -> (f64, f64) {
    let ticks = 100.0; // USER_HZ
    let total = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            // user nice system idle iowait irq softirq steal
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?) / ticks)
        })
        .unwrap_or(0.0);
    let usage = |who| {
        // SAFETY: rusage is plain data; all zeroes is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we own.
        unsafe { libc::getrusage(who, &mut ru) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    };
    (
        total,
        usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN),
    )
}

fn main() {
    let args = Args::parse();
    let mut poller = poller_config(args.spin_us);
    poller.adaptive_spin = !args.fixed_spin;
    match args.block_in_flight_us.as_deref() {
        None => {}
        Some("never") => poller.block_in_flight_after = None,
        Some(us) => match us.parse() {
            Ok(us) => poller.block_in_flight_after = Some(Duration::from_micros(us)),
            Err(_) => {
                eprintln!("--block-in-flight-us takes microseconds or `never`, not {us:?}");
                std::process::exit(2);
            }
        },
    }
    let mut uring = UringConfig {
        coop_taskrun: !args.no_coop_taskrun,
        defer_taskrun: !args.no_defer_taskrun,
        ..UringConfig::default()
    };
    if let Some(n) = args.submit_batch {
        uring.submit_batch = n;
    }
    require_direct_io(&args.file);
    let rounds = args.rounds.max(1);
    let bytes = args.size_mib << 20;
    eprintln!(
        "preparing {} ({} MiB)...",
        args.file.display(),
        args.size_mib
    );
    let file = prepare_file(&args.file, bytes).unwrap_or_else(|e| {
        eprintln!("cannot prepare {}: {e}", args.file.display());
        std::process::exit(1);
    });
    let time = Duration::from_secs_f64(args.seconds);
    let budget = Budget::time(time);
    let have_fio = std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    println!(
        "file {} ({} MiB, O_DIRECT), {:.1} s per run, {rounds} round(s), fio {}",
        args.file.display(),
        args.size_mib,
        args.seconds,
        if have_fio {
            "installed"
        } else {
            "not installed"
        }
    );
    // Started after the file is prepared, stopped at the end (drop).
    let load = BackgroundLoad::start(args.background_load);
    println!("background load: {} busy thread(s)", load.threads());
    println!(
        "queue pair spins before sleeping: {}",
        if args.fixed_spin {
            "fixed at their minimum (--fixed-spin)"
        } else {
            "adapted to the waits (20-200 us)"
        }
    );
    println!(
        "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "method", "IOPS", "mean us", "p50 us", "p99 us", "ops", "doorbells/IO"
    );
    let requested = if args.methods.is_empty() {
        vec![
            Method::Pread,
            Method::Uring,
            Method::QueuePair,
            Method::InlineQueuePair,
            Method::Fio,
        ]
    } else {
        args.methods.clone()
    };
    let mut methods: Vec<Method> = Vec::new();
    for m in requested {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    if !have_fio {
        methods.retain(|&m| m != Method::Fio);
    }
    let mut verdicts = Vec::new();
    for w in Workload::all() {
        if args
            .only
            .as_ref()
            .is_some_and(|o| !w.name().contains(o.as_str()))
        {
            continue;
        }
        println!("{}", w.name());
        let (total0, ours0) = cpu_seconds();
        let load0 = load.cpu_seconds();
        let wall0 = Instant::now();
        // runs[m][round]
        let mut runs: Vec<Vec<Summary>> = vec![Vec::new(); methods.len()];
        for round in 0..rounds {
            for k in 0..methods.len() {
                let mi = (k + round) % methods.len();
                let s = match methods[mi] {
                    Method::Pread => run_pread(&file, w, budget),
                    Method::Uring => {
                        run_uring_submitting(&file, w, budget, args.uring_submit_every)
                    }
                    Method::QueuePair => run_queue_pair(&file, w, budget, poller, uring),
                    Method::InlineQueuePair => {
                        run_inline_queue_pair(&file, w, budget, poller, uring)
                    }
                    Method::Fio => run_fio(&args.file, w, time).unwrap_or_else(|e| {
                        eprintln!("{e}");
                        std::process::exit(1);
                    }),
                };
                if rounds > 1 {
                    row(&format!("{} r{}", methods[mi].name(), round + 1), &s);
                }
                runs[mi].push(s);
            }
        }
        // Each method's run with the median IOPS.
        let med: Vec<Summary> = runs.iter().map(|r| median_by(r, |s| s.iops)).collect();
        if rounds > 1 {
            println!("  median round of each method:");
        }
        for (m, s) in methods.iter().zip(&med) {
            row(m.name(), s);
        }
        let (total1, ours1) = cpu_seconds();
        let busy = load.cpu_seconds() - load0;
        let other = ((total1 - total0) - (ours1 - ours0) - busy).max(0.0);
        let wall = wall0.elapsed().as_secs_f64();
        println!(
            "  other processes used {:.2} of {} CPUs during these runs (the background load \
             {:.2})",
            other / wall,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            busy / wall
        );
        let at = |m: Method| methods.iter().position(|&x| x == m);
        for kind in [Method::QueuePair, Method::InlineQueuePair] {
            let Some(q) = at(kind) else {
                continue;
            };
            let name = kind.name();
            let qp = &med[q];
            let fio = at(Method::Fio).map(|i| (&med[i], &runs[i]));
            let mut ratios = Vec::new();
            if let Some(u) = at(Method::Uring) {
                ratios.push(format!("{name}/io_uring IOPS {:.2}", qp.iops / med[u].iops));
            }
            if let Some((f, _)) = fio {
                ratios.push(format!("{name}/fio IOPS {:.2}", qp.iops / f.iops));
            }
            let pread = at(Method::Pread).map(|p| &med[p]);
            if let Some(p) = pread {
                ratios.push(format!(
                    "{name}/pread mean latency {:.2}",
                    qp.mean_us / p.mean_us
                ));
            }
            if !ratios.is_empty() {
                println!("  ratios: {}", ratios.join(", "));
            }
            if w.depth == 32 && w.block == 4096 && w.pattern == Pattern::RandRead {
                if let Some((f, fio_runs)) = fio {
                    let r = qp.iops / f.iops;
                    let per_round: Vec<f64> = runs[q]
                        .iter()
                        .zip(fio_runs)
                        .map(|(q, f)| q.iops / f.iops)
                        .collect();
                    let list = per_round
                        .iter()
                        .map(|x| format!("{:.0}%", x * 100.0))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let round_median = median_by(&per_round, |&x| x);
                    verdicts.push(format!(
                        "QD32 4k randread: {name} {:.0} IOPS = {:.0}% of fio's {:.0} \
                         (medians of {rounds} round(s); per round: {list}; median per-round \
                         ratio {:.0}%; target >= 90%): {}",
                        qp.iops,
                        r * 100.0,
                        f.iops,
                        round_median * 100.0,
                        if r >= 0.9 { "met" } else { "NOT met" }
                    ));
                }
            }
            if let (1, Some(pread)) = (w.depth, pread) {
                let r = qp.mean_us / pread.mean_us;
                verdicts.push(format!(
                    "QD1 {}: {name} mean {:.1} us = {:.2}x pread's {:.1} us (target <= 1.2x): {}",
                    w.name(),
                    qp.mean_us,
                    r,
                    pread.mean_us,
                    if r <= 1.2 { "met" } else { "NOT met" }
                ));
            }
        }
    }
    println!("targets:");
    for v in verdicts {
        println!("  {v}");
    }
}
