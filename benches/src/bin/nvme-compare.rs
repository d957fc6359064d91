//! Side-by-side storage comparison on one file: `pread`/`pwrite`, io_uring
//! used directly, the dbos queue pair + poller (process mode), and fio if
//! installed, for random 4 KiB reads and sequential 4 KiB / 64 KiB writes
//! at queue depth 1 and 32. Prints IOPS and latency and the ratios the
//! targets are about:
//!
//! - queue pair IOPS >= 90% of fio's at QD32 for 4 KiB random reads;
//! - queue pair mean latency <= 1.2x `pread`'s at QD1.
//!
//! Usage: `nvme-compare [--file PATH] [--size-mib N] [--seconds S] [--only NAME]
//! [--spin-us N] [--no-coop-taskrun]` (the last two tune the poller)
//! (default file: `nvme-bench.img` in the system temp dir, 1024 MiB, 3 s per run).

use dbos_benches::nvme::{
    prepare_file, run_fio, run_pread, run_queue_pair, run_uring, Budget, Summary, Workload,
};
use dbos_nvme::host::{BackingFile, PollerConfig, UringConfig};
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    file: PathBuf,
    size_mib: u64,
    seconds: f64,
    only: Option<String>,
    poller: PollerConfig,
    uring: UringConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        file: std::env::temp_dir().join("nvme-bench.img"),
        size_mib: 1024,
        seconds: 3.0,
        only: None,
        poller: PollerConfig::default(),
        uring: UringConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--file" => args.file = PathBuf::from(val()?),
            "--size-mib" => {
                args.size_mib = val()?.parse().map_err(|e| format!("--size-mib: {e}"))?
            }
            "--seconds" => args.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--only" => args.only = Some(val()?),
            "--spin-us" => {
                let us: u64 = val()?.parse().map_err(|e| format!("--spin-us: {e}"))?;
                args.poller.spin = Duration::from_micros(us);
            }
            "--no-coop-taskrun" => args.uring.coop_taskrun = false,
            "-h" | "--help" => {
                return Err(
                    "usage: nvme-compare [--file PATH] [--size-mib N] [--seconds S] [--only NAME] [--spin-us N] [--no-coop-taskrun]"
                        .into(),
                )
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(args)
}

fn row(method: &str, s: &Summary) {
    let bells = s.doorbells.map_or("-".to_string(), |d| {
        format!("{:.4}", d as f64 / s.ops.max(1) as f64)
    });
    println!(
        "  {method:<12} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10} {:>12}",
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = args
        .file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if !BackingFile::direct_io_supported(&dir) {
        eprintln!(
            "{} does not support O_DIRECT (tmpfs?); pass --file on a disk file system",
            dir.display()
        );
        std::process::exit(1);
    }
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
        "file {} ({} MiB, O_DIRECT), {:.1} s per run, fio {}",
        args.file.display(),
        args.size_mib,
        args.seconds,
        if have_fio {
            "installed"
        } else {
            "not installed"
        }
    );
    println!(
        "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "method", "IOPS", "mean us", "p50 us", "p99 us", "ops", "doorbells/IO"
    );
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
        let wall0 = std::time::Instant::now();
        let pread = run_pread(&file, w, budget);
        row("pread", &pread);
        let uring = run_uring(&file, w, budget);
        row("io_uring", &uring);
        let qp = run_queue_pair(&file, w, budget, args.poller, args.uring);
        row("queue pair", &qp);
        let fio = if have_fio {
            run_fio(&args.file, w, time)
        } else {
            None
        };
        if let Some(f) = &fio {
            row("fio", f);
        }
        let (total1, ours1) = cpu_seconds();
        let other = ((total1 - total0) - (ours1 - ours0)).max(0.0);
        println!(
            "  other processes used {:.2} of {} CPUs during these runs",
            other / wall0.elapsed().as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        print!("  ratios: qp/io_uring IOPS {:.2}", qp.iops / uring.iops);
        if let Some(f) = &fio {
            print!(", qp/fio IOPS {:.2}", qp.iops / f.iops);
        }
        println!(", qp/pread mean latency {:.2}", qp.mean_us / pread.mean_us);
        if w.depth == 32 && w.block == 4096 && w.pattern == dbos_benches::nvme::Pattern::RandRead {
            if let Some(f) = &fio {
                let r = qp.iops / f.iops;
                verdicts.push(format!(
                    "QD32 4k randread: queue pair {:.0} IOPS = {:.0}% of fio's {:.0} (target >= 90%): {}",
                    qp.iops,
                    r * 100.0,
                    f.iops,
                    if r >= 0.9 { "met" } else { "NOT met" }
                ));
            }
        }
        if w.depth == 1 {
            let r = qp.mean_us / pread.mean_us;
            verdicts.push(format!(
                "QD1 {}: queue pair mean {:.1} us = {:.2}x pread's {:.1} us (target <= 1.2x): {}",
                w.name(),
                qp.mean_us,
                r,
                pread.mean_us,
                if r <= 1.2 { "met" } else { "NOT met" }
            ));
        }
    }
    println!("targets:");
    for v in verdicts {
        println!("  {v}");
    }
}
