//! `dbos`: the command-line front end of the hypervisor.

use clap::{Parser, Subcommand};
use dbos_hypervisor::report::{STATUS_BAD_EXIT, STATUS_CRASH, STATUS_PANIC, STATUS_TIMED_OUT};
use dbos_hypervisor::{Vm, VmConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the VM could not be set up (bad arguments, no KVM,
/// unreadable or invalid image, memory too small).
const STATUS_SETUP: u8 = 1;

#[derive(Parser)]
#[command(
    name = "dbos",
    version,
    about = "Run a database in guest ring 0 on top of libdbos, under KVM",
    after_help = format!(
        "Exit status: the guest's own exit status when it exits normally; \
         {STATUS_PANIC} when the guest panics; {STATUS_CRASH} when it crashes (unhandled \
         exception, bad hypercall, triple fault, emulation failure); {STATUS_BAD_EXIT} when \
         its exit status does not fit 8 bits; {STATUS_TIMED_OUT} when it is stopped at \
         --time-limit; {STATUS_SETUP} when the VM cannot be set up; 2 for a usage error."
    )
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
    /// wrote them ("[vcpu0] ..."); how the guest stopped, and VM-exit counts,
    /// go to stderr.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The guest: a static ELF64 x86-64 executable linked against libdbos
    /// (for example target/guest/x86_64-unknown-none/release/hello).
    guest: PathBuf,

    /// Number of vCPUs to start, each directly in 64-bit ring 0 (1 to 64).
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u32,

    /// Guest RAM, in bytes or with a K, M or G suffix (binary units), a
    /// multiple of 4 KiB.
    #[arg(long, default_value = "128M", value_parser = parse_size, value_name = "SIZE")]
    memory: u64,

    /// The KVM device to use.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    kvm_device: PathBuf,

    /// A host file the guest may open by NAME (read-write, created if
    /// missing). Repeatable. The guest can use no other host file.
    #[arg(long = "file", value_name = "NAME=PATH")]
    files: Vec<dbos_hypervisor::files::FileGrant>,

    /// An NVMe disk backed by this file (opened with O_DIRECT), served by a
    /// host poller thread through queue pairs in guest memory.
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
    /// it is, like a power failure; exit status 104.
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,

    /// Print how many VM exits the run took, by kind, on stderr.
    #[arg(long)]
    stats: bool,

    /// Arguments passed to the guest (after `--`).
    #[arg(last = true, value_name = "GUEST ARGS")]
    args: Vec<String>,
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = VmConfig {
        vcpus: args.vcpus,
        memory: args.memory,
        args: args.args,
        kvm_device: args.kvm_device,
        files: args.files,
        time_limit: match args.time_limit.map(std::time::Duration::try_from_secs_f64) {
            Some(Ok(limit)) => Some(limit),
            Some(Err(_)) => {
                eprintln!("dbos: error: --time-limit must be a non-negative number of seconds");
                return ExitCode::from(2);
            }
            None => None,
        },
        disk: args.disk.map(|path| dbos_hypervisor::disk::DiskConfig {
            poll_spin: std::time::Duration::from_micros(args.disk_spin_us),
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
    if args.stats {
        eprintln!(
            "dbos: {} VM exits in {:.3} ms ({} console, {} clock, {} exit hypercalls)",
            report.exits.total,
            report.elapsed.as_secs_f64() * 1e3,
            report.exits.hypercall(dbos_abi::Hypercall::Console),
            report.exits.hypercall(dbos_abi::Hypercall::Clock),
            report.exits.hypercall(dbos_abi::Hypercall::Exit),
        );
    }
    ExitCode::from(report.exit.process_status())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
}
