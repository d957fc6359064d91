//! `dbos`: the command-line front end of the hypervisor.

use clap::{Parser, Subcommand};
use dbos_hypervisor::disk::{CutAt, PowerCutPlan};
use dbos_hypervisor::layout::{MAX_MEMORY, MIN_MEMORY, PAGE};
use dbos_hypervisor::report::{
    STATUS_BAD_EXIT, STATUS_CRASH, STATUS_PANIC, STATUS_POWER_CUT, STATUS_SETUP, STATUS_TIMED_OUT,
    STATUS_USAGE,
};
use dbos_hypervisor::{Vm, VmConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dbos",
    version,
    about = "Run a database in guest ring 0 on top of libdbos, under KVM",
    after_help = exit_statuses()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest image and run it until it exits.
    ///
    /// Guest console lines are printed on stdout, prefixed by the vCPU that
    /// wrote them (`[vcpu0] ...`); how the guest stopped, and VM-exit counts,
    /// go to stderr.
    #[command(after_help = exit_statuses())]
    Run(RunArgs),
}

/// The exit statuses, for `--help`.
fn exit_statuses() -> String {
    format!(
        "Exit status: the guest's own exit status when it exits normally; \
         {STATUS_PANIC} when the guest panics; {STATUS_CRASH} when it crashes (unhandled \
         exception, bad hypercall, triple fault, emulation failure, unknown I/O port); \
         {STATUS_BAD_EXIT} when its exit status does not fit 8 bits; {STATUS_TIMED_OUT} when it \
         is stopped at --time-limit; {STATUS_POWER_CUT} when it is stopped by \
         --power-cut-after or --power-cut-at-write; {STATUS_SETUP} when the VM cannot be set up (no KVM, \
         unreadable or invalid image, memory too small for the image and vCPUs or more than \
         the host can provide, a --file or --disk that cannot be opened or is in use by \
         another process); {STATUS_USAGE} for a \
         usage error. A guest that itself exits with one of these statuses is named on stderr."
    )
}

#[derive(clap::Args)]
struct RunArgs {
    /// The guest: a static ELF64 x86-64 executable linked against libdbos
    /// (for example target/guest/x86_64-unknown-none/release/hello).
    guest: PathBuf,

    /// Number of vCPUs to start, each directly in 64-bit ring 0 (1 to 64).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(dbos_abi::MAX_VCPUS))
    )]
    vcpus: u32,

    /// Guest RAM, in bytes or with a K, M or G suffix (binary units), a
    /// multiple of 4 KiB, at least 4356K (the smallest guest with one vCPU)
    /// and at most the host's RAM plus swap.
    #[arg(long, default_value = "128M", value_parser = parse_memory, value_name = "SIZE")]
    memory: u64,

    /// The KVM device to use.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    kvm_device: PathBuf,

    /// A host file the guest may open by NAME (read-write, created if
    /// missing). Repeatable. The guest can use no other host file.
    #[arg(long = "file", value_name = "NAME=PATH")]
    files: Vec<dbos_hypervisor::files::FileGrant>,

    /// An NVMe disk backed by this file (opened with O_DIRECT), served by a
    /// host poller thread through queue pairs in guest memory. The file is
    /// locked (flock) while the VM runs: a second dbos (or any other user of
    /// the file's lock) is refused.
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,

    /// Create the --disk file with this size (K, M, G suffixes) if it does
    /// not exist. An existing file keeps its size; a different --disk-size is
    /// an error (a disk is never resized silently).
    #[arg(long, value_parser = parse_size, value_name = "SIZE", requires = "disk")]
    disk_size: Option<u64>,

    /// Microseconds the disk poller keeps polling without work before it
    /// parks; while it polls, I/O costs the guest no VM exit. Where ring 0 is
    /// emulated (no VT-x), guests need milliseconds between I/Os.
    #[arg(long, default_value_t = 200, value_name = "US", requires = "disk")]
    disk_spin_us: u64,

    /// Stop the guest after this many seconds (fractions allowed), wherever
    /// it is; exit status 104. A clean stop, not a power failure: the disk
    /// finishes every I/O in flight, so no write is lost or torn (see
    /// --power-cut-after).
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,

    /// Cut the power this long after start (seconds, fractions allowed, or
    /// with an ms or s suffix): the VM stops, and every disk write not
    /// covered by a completed flush or FUA write is kept, lost or torn at
    /// 512-byte boundaries, decided by --seed; the disk file is left
    /// holding that crash image. Exit status 105. The disk then runs on an
    /// in-memory model of itself (the file is read at start and written
    /// back at the end; synchronous I/O, slower than io_uring). Which writes
    /// are in flight at a moment depends on timing: see
    /// --power-cut-at-write for a repeatable cut.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "disk",
        group = "power_cut"
    )]
    power_cut_after: Option<std::time::Duration>,

    /// Cut the power when the N-th disk write command of the run (counted
    /// from 1, FUA or not) reaches the disk, before it completes: the VM
    /// stops, and that write and every other one not covered by a
    /// completed flush or FUA write are kept, lost or torn at 512-byte
    /// boundaries, decided by --seed. Otherwise as --power-cut-after (exit
    /// status 105, the disk on the in-memory model), with which it cannot
    /// be combined; the same guest, disk file, N and seed give the same
    /// crash image. A run that makes fewer than N writes is not cut.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "disk",
        group = "power_cut"
    )]
    power_cut_at_write: Option<u64>,

    /// The seed of the power cut: the same writes in flight and seed give
    /// the same crash image.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "power_cut")]
    seed: u64,

    /// Print how many VM exits the run took on stderr, by kind (each
    /// hypercall, and every other exit reason), with the run time.
    #[arg(long)]
    stats: bool,

    /// Arguments passed to the guest (after `--`).
    #[arg(last = true, value_name = "GUEST ARGS")]
    args: Vec<String>,
}

/// Parses a guest memory size: a size, a multiple of 4 KiB, at least
/// [`MIN_MEMORY`] (what the smallest image with one vCPU needs).
fn parse_memory(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if !size.is_multiple_of(PAGE) {
        return Err(format!("{size} bytes is not a multiple of 4 KiB"));
    }
    if size > MAX_MEMORY {
        return Err(format!(
            "{size} bytes is more than the {}G dbos can lay out",
            MAX_MEMORY >> 30
        ));
    }
    if size < MIN_MEMORY {
        return Err(format!(
            "{size} bytes is less than the {MIN_MEMORY} bytes ({}K) any guest needs",
            MIN_MEMORY >> 10
        ));
    }
    Ok(size)
}

/// Parses "4096", "64K", "128M", "2G" (binary units).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 64M, 1G, 1048576)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses "1.5", "1.5s", "300ms" into a duration.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|n| std::time::Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 1.5, 2s, 300ms)"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
    }
}

/// Reports a usage error found after parsing, as clap reports its own.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("dbos: error: {message}\n\nFor more information, try 'dbos run --help'.");
    ExitCode::from(STATUS_USAGE)
}

fn run(args: RunArgs) -> ExitCode {
    if let Some(name) = dbos_hypervisor::files::duplicate_name(&args.files) {
        return usage_error(&format!("--file name {name:?} is given more than once"));
    }
    let arg_bytes = dbos_hypervisor::boot::args_size(&args.args);
    if arg_bytes > dbos_abi::MAX_ARGS_BYTES {
        return usage_error(&format!(
            "the guest arguments take {arg_bytes} bytes (each with a NUL), more than the \
             {}-byte limit",
            dbos_abi::MAX_ARGS_BYTES
        ));
    }
    let config = VmConfig {
        vcpus: args.vcpus,
        memory: args.memory,
        args: args.args,
        kvm_device: args.kvm_device,
        files: args.files,
        time_limit: match args.time_limit.map(std::time::Duration::try_from_secs_f64) {
            Some(Ok(limit)) => Some(limit),
            Some(Err(_)) => {
                return usage_error("--time-limit must be a non-negative number of seconds");
            }
            None => None,
        },
        disk: args.disk.map(|path| dbos_hypervisor::disk::DiskConfig {
            poll_spin: std::time::Duration::from_micros(args.disk_spin_us),
            power_cut: args
                .power_cut_after
                .map(CutAt::After)
                .or(args.power_cut_at_write.map(CutAt::Write))
                .map(|at| PowerCutPlan {
                    at,
                    seed: args.seed,
                }),
            ..dbos_hypervisor::disk::DiskConfig::new(path, args.disk_size)
        }),
        echo_console: true,
        capture_console: false,
        ..VmConfig::default()
    };
    let report = match Vm::from_file(&args.guest, config).and_then(Vm::run) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("dbos: error: {e}");
            return ExitCode::from(STATUS_SETUP);
        }
    };
    if !report.exit.is_exit() || args.stats {
        eprintln!("dbos: {}", report.exit);
    }
    if let Some(note) = report.exit.status_collision() {
        eprintln!("dbos: {note}");
    }
    if args.stats {
        eprintln!(
            "dbos: {} VM exits in {:.3} ms: {}",
            report.exits.total,
            report.elapsed.as_secs_f64() * 1e3,
            report.exits
        );
    }
    ExitCode::from(report.exit.process_status())
}

#[cfg(test)]
mod tests {
    use super::{parse_memory, parse_size};

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64M"), Ok(64 << 20));
        assert!(parse_memory("1K")
            .unwrap_err()
            .contains("not a multiple of 4 KiB"));
        assert!(parse_memory("4K").unwrap_err().contains("any guest needs"));
        assert!(parse_memory("1025G").unwrap_err().contains("can lay out"));
        assert!(parse_memory("lots").unwrap_err().contains("is not a size"));
        // The figure `--help` gives.
        assert_eq!(super::MIN_MEMORY, 4356 << 10);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("128m"), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn durations() {
        use super::parse_duration;
        use std::time::Duration;
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
