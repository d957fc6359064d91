//! `dbos`: the command-line front end of the hypervisor.

use clap::{Parser, Subcommand};
use dbos_hypervisor::disk::{CutAt, PowerCutPlan};
use dbos_hypervisor::layout::{MAX_MEMORY, MIN_IMAGE, MIN_MEMORY, PAGE};
use dbos_hypervisor::report::{
    STATUS_BAD_EXIT, STATUS_CRASH, STATUS_PANIC, STATUS_POWER_CUT, STATUS_SETUP, STATUS_TIMED_OUT,
    STATUS_USAGE,
};
use dbos_hypervisor::{Vm, VmConfig};
use dbos_nvme::host::{ErrorInjection, OpMatch};
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
    /// wrote them (`[vcpu0] ...`); how the guest stopped, and exit counts,
    /// go to stderr.
    #[command(after_help = exit_statuses())]
    Run(Box<RunArgs>),

    /// Create a cargo project for a guest of your own.
    ///
    /// Writes NAME/ (or --path DIR): a Cargo.toml that depends on libdbos
    /// in the dbos checkout this dbos was built in (by absolute path), a
    /// build.rs that links the guest with libdbos's linker script and
    /// --no-pie (through libdbos-build), a .cargo/config.toml that builds
    /// for x86_64-unknown-none, runs the guest under this dbos with `cargo
    /// run` and as a Linux process with `cargo process`, and a src/main.rs
    /// generic over libdbos's Platform that reserves a window, installs a
    /// fault hook that maps frames on fault, touches pages and prints the
    /// platform's counters.
    #[command(after_help = NEW_STATUSES)]
    New(NewArgs),

    /// Run the side-by-side benchmarks and write one report.
    ///
    /// Writes index.md, index.html (the same content), report.json and SVG
    /// plots into --out: every figure next to its baseline and its target,
    /// the machine it ran on, the command behind each table. Outside tools
    /// that are not installed (fio, redis-server) give rows saying so. A
    /// progress line per benchmark goes to stderr, the total time at the
    /// end; the status is non-zero if a section failed.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Tiny sizes and short runs (seconds per section, not minutes): the
    /// complete report, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Run only these sections: storage, snapshots, wal, pools, store, kvstore.
    #[arg(long, num_args = 1.., value_name = "SECTION")]
    only: Vec<String>,
    /// The report directory.
    #[arg(long, default_value = "target/dbos-report", value_name = "DIR")]
    out: PathBuf,
}

/// The exit statuses of `dbos new`, for `--help`.
const NEW_STATUSES: &str = "Exit status: 0 when the project is written; 2 for a usage error \
     (a NAME cargo would refuse); 1 when it cannot be written (the directory exists and is \
     not empty, a file cannot be written, the dbos checkout this dbos was built in has no \
     libdbos any more), leaving nothing it created behind.";

#[derive(clap::Args)]
struct NewArgs {
    /// The project's name, and its binary's: ASCII letters, digits, '-'
    /// and '_', starting with a letter, at most 64 bytes.
    name: String,

    /// The directory to write the project in (default: ./NAME). It must
    /// not exist or be empty.
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
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
         another process, a power-cut model that does not fit in memory) or the power-cut \
         model's contents cannot be written back at the end; {STATUS_USAGE} for a \
         usage error (an option out of its range or malformed). A guest that itself exits with \
         one of these statuses is named on stderr."
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
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(dbos_abi::MAX_VCPUS))
    )]
    vcpus: u32,

    /// Guest RAM, in bytes or with a K, M or G suffix (binary units), a
    /// multiple of 4 KiB, at least 4608K (one vCPU and an image of up to
    /// 256 KiB; a larger image or more vCPUs need more) and at most the
    /// host's RAM plus swap.
    #[arg(
        long,
        default_value = "128M",
        value_parser = parse_memory,
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
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

    /// Create the --disk file with this size (K, M, G suffixes; a non-zero
    /// multiple of 4 KiB) if it does not exist. An existing file keeps its
    /// size; a different --disk-size is an error (a disk is never resized
    /// silently).
    #[arg(
        long,
        value_parser = parse_disk_size,
        value_name = "SIZE",
        requires = "disk",
        allow_hyphen_values = true
    )]
    disk_size: Option<u64>,

    /// Microseconds the disk poller keeps polling without work before it
    /// parks (0 to 60000000); while it polls, I/O costs the guest no VM
    /// exit. Where ring 0 is emulated (no VT-x), guests need milliseconds
    /// between I/Os.
    #[arg(
        long,
        default_value_t = 200,
        value_name = "US",
        requires = "disk",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SPIN_US)
    )]
    disk_spin_us: u64,

    /// Experiment: register all of guest RAM with the disk's io_uring as
    /// fixed buffers, as dbos did before (pins and faults in every byte of
    /// it at start, counted against RLIMIT_MEMLOCK without CAP_IPC_LOCK),
    /// to measure that against the default with --stats.
    #[arg(long, requires = "disk", conflicts_with_all = ["power_cut_after", "power_cut_at_write"])]
    disk_fixed_buffers: bool,

    /// Accept TCP clients on ADDR:PORT for the guest (repeatable, at most 8
    /// times: listener 0, 1, ... in order), served through network queue
    /// pairs in guest memory by a host poller thread. Loopback addresses
    /// only, unless --listen-any is given. Port 0 lets the kernel choose:
    /// each listener's address is printed on stderr as `dbos: listening on
    /// ADDR:PORT (listener N)` before the guest starts.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddr>,

    /// Allow --listen addresses other than loopback ones (clients from
    /// other hosts).
    #[arg(long, requires = "listen")]
    listen_any: bool,

    /// How long the network poller keeps polling without progress before it
    /// parks (seconds, fractions allowed, or with an ms or s suffix; at most
    /// 60 s); while it polls, messages cost the guest no VM exit.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_spin,
        requires = "listen",
        allow_hyphen_values = true
    )]
    net_poll_spin: Option<std::time::Duration>,

    /// Most client connections open at once (1 to 65536); clients beyond
    /// it are accepted and closed at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = dbos_hypervisor::net::DEFAULT_MAX_CONNECTIONS,
        requires = "listen",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=65536)
    )]
    max_connections: u32,

    /// Stop the guest after this many seconds (fractions allowed, or with
    /// an ms or s suffix; finite, at most 1000000000), wherever it is; exit
    /// status 104. A clean stop, not a power failure: the disk finishes
    /// every I/O in flight, so no write is lost or torn (see
    /// --power-cut-after).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = parse_duration,
        allow_hyphen_values = true
    )]
    time_limit: Option<std::time::Duration>,

    /// Cut the power this long after start (seconds, fractions allowed, or
    /// with an ms or s suffix; as --time-limit): the VM stops, and every disk write not
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
        allow_hyphen_values = true,
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
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(1..=u64::MAX),
        requires = "disk",
        group = "power_cut"
    )]
    power_cut_at_write: Option<u64>,

    /// The seed of the power cut (0 to 2^64-1): the same writes in flight
    /// and seed give the same crash image.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "power_cut",
        allow_negative_numbers = true
    )]
    seed: u64,

    /// Fail the N-th disk command of --io-error-kind (counted from 1 over
    /// the run, across queue pairs) with the error status a failing disk
    /// gives (write fault; unrecovered read error for a read): the guest
    /// sees it and the VM goes on. The command is not carried out: a failed
    /// write writes nothing. Stderr says at the end which command was
    /// failed, or that the run made fewer than N. Can be combined with a
    /// power cut (a failed write never reaches the disk, so
    /// --power-cut-at-write does not count it).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(1..=u64::MAX),
        requires = "disk"
    )]
    io_error_at: Option<u64>,

    /// Which commands --io-error-at counts: read, write (with or without
    /// FUA: a FUA write counts as a write) or flush.
    #[arg(
        long,
        value_name = "KIND",
        value_enum,
        default_value_t = IoErrorKind::Write,
        requires = "io_error_at"
    )]
    io_error_kind: IoErrorKind,

    /// Print on stderr how many exits to the VMM the run took, by kind (each
    /// hypercall, and every other exit reason), with the run time; all VM
    /// exits as KVM counted them (those it handled in the kernel included,
    /// from its per-vCPU statistics, or "not available here"); and the set-up
    /// time and this process's peak resident, locked and pinned memory.
    #[arg(long)]
    stats: bool,

    /// Arguments passed to the guest (after `--`).
    #[arg(last = true, value_name = "GUEST ARGS")]
    args: Vec<String>,
}

/// The kinds of command `--io-error-kind` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum IoErrorKind {
    Read,
    Write,
    Flush,
}

/// The longest `--disk-spin-us`: a minute.
const MAX_SPIN_US: u64 = 60_000_000;

/// The largest `--disk-size`: the largest multiple of 4 KiB a file offset
/// (`off_t`) holds.
const MAX_DISK_SIZE: u64 = i64::MAX as u64 & !(PAGE - 1);

/// The longest `--time-limit` and `--power-cut-after`, in seconds (about
/// 31 years).
const MAX_SECONDS: f64 = 1e9;

/// Parses a guest memory size: a size, a multiple of 4 KiB, at least
/// [`MIN_MEMORY`] (one vCPU and an image of up to [`MIN_IMAGE`] bytes).
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
            "{size} bytes is less than the {MIN_MEMORY} bytes ({}K) any guest needs (one \
             vCPU and an image of up to {} KiB)",
            MIN_MEMORY >> 10,
            MIN_IMAGE >> 10
        ));
    }
    Ok(size)
}

/// Parses a disk size: a non-zero multiple of 4 KiB, at most
/// [`MAX_DISK_SIZE`].
fn parse_disk_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size == 0 || !size.is_multiple_of(PAGE) || size > MAX_DISK_SIZE {
        return Err(format!(
            "{size} bytes is not a disk size: a disk is a non-zero multiple of 4 KiB (4096 \
             bytes), at most {MAX_DISK_SIZE} bytes"
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

/// Parses a poll spin: a duration (as [`parse_duration`]) of at most
/// [`MAX_SPIN_US`] microseconds.
fn parse_spin(text: &str) -> Result<std::time::Duration, String> {
    let spin = parse_duration(text)?;
    if spin > std::time::Duration::from_micros(MAX_SPIN_US) {
        return Err(format!("{text:?} is too long: at most 60 s"));
    }
    Ok(spin)
}

/// Parses "1.5", "1.5s", "300ms" into a duration: finite, non-negative, at
/// most [`MAX_SECONDS`].
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1.0)
    };
    let range = format!(
        "give a finite, non-negative number of seconds of at most {MAX_SECONDS}, fractions \
         allowed, optionally with an s or ms suffix (examples: 1.5, 2s, 300ms)"
    );
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: {range}"))?;
    let seconds = n * scale;
    let problem = if n.is_nan() {
        "is not a number"
    } else if n.is_infinite() {
        "is infinite"
    } else if seconds < 0.0 || (seconds == 0.0 && n.is_sign_negative()) {
        "is negative"
    } else if seconds > MAX_SECONDS {
        "is too long"
    } else {
        return std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("{text:?} is not a duration ({e}): {range}"));
    };
    Err(format!("{text:?} {problem}: {range}"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::New(args) => new(args),
        Command::Bench(args) => bench(args),
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    use dbos_hypervisor::bench;
    if let Err(e) = bench::select(&args.only) {
        eprintln!("dbos: error: {e}\n\nFor more information, try 'dbos bench --help'.");
        return ExitCode::from(STATUS_USAGE);
    }
    let command = std::iter::once("dbos".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let opts = bench::Options {
        quick: args.quick,
        only: args.only,
        out: args.out,
    };
    match bench::run(&opts, &command) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbos: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn new(args: NewArgs) -> ExitCode {
    use dbos_hypervisor::new_project::{create, Checkout, GUEST_TARGET};
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&args.name));
    let dbos = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("dbos: error: cannot find the path of this dbos binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checkout = Checkout::built_in(dbos);
    if let Err(e) = create(&args.name, &dir, &checkout) {
        if e.is_usage() {
            eprintln!("dbos: error: {e}\n\nFor more information, try 'dbos new --help'.");
            return ExitCode::from(STATUS_USAGE);
        }
        eprintln!("dbos: error: {e}");
        return ExitCode::FAILURE;
    }
    let name = &args.name;
    println!(
        "Created the guest project `{name}` in {}, on libdbos at {}.\n\
         \n\
         Build it and run it in guest ring 0 (once: rustup target add {GUEST_TARGET}):\n\
         \n    cd {}\n    cargo build --release\n    {} run target/{GUEST_TARGET}/release/{name}\n\
         \n\
         (`cargo run --release` does the same.) Run the same program as a Linux process:\n\
         \n    cargo process",
        dir.display(),
        checkout.libdbos.display(),
        dir.display(),
        checkout.dbos.display(),
    );
    ExitCode::SUCCESS
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
    let net = if args.listen.is_empty() {
        None
    } else {
        if let Err(e) = dbos_hypervisor::net::listen::check_addrs(&args.listen, args.listen_any) {
            return usage_error(&e.to_string());
        }
        Some(dbos_hypervisor::net::NetConfig {
            listen_any: args.listen_any,
            poll_spin: args
                .net_poll_spin
                .unwrap_or(dbos_hypervisor::net::DEFAULT_POLL_SPIN),
            max_connections: args.max_connections,
            ..dbos_hypervisor::net::NetConfig::new(args.listen.clone())
        })
    };
    let config = VmConfig {
        net,
        vcpus: args.vcpus,
        memory: args.memory,
        args: args.args,
        kvm_device: args.kvm_device,
        files: args.files,
        time_limit: args.time_limit,
        disk: args.disk.map(|path| dbos_hypervisor::disk::DiskConfig {
            poll_spin: std::time::Duration::from_micros(args.disk_spin_us),
            fixed_buffers: args.disk_fixed_buffers,
            power_cut: args
                .power_cut_after
                .map(CutAt::After)
                .or(args.power_cut_at_write.map(CutAt::Write))
                .map(|at| PowerCutPlan {
                    at,
                    seed: args.seed,
                }),
            io_error: args.io_error_at.map(|nth| ErrorInjection {
                kind: match args.io_error_kind {
                    IoErrorKind::Read => OpMatch::Read,
                    IoErrorKind::Write => OpMatch::Write,
                    IoErrorKind::Flush => OpMatch::Flush,
                },
                nth,
            }),
            ..dbos_hypervisor::disk::DiskConfig::new(path, args.disk_size)
        }),
        echo_console: true,
        capture_console: false,
        ..VmConfig::default()
    };
    let vm = match Vm::from_file(&args.guest, config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("dbos: error: {e}");
            return ExitCode::from(STATUS_SETUP);
        }
    };
    for (i, addr) in vm.listen_addrs().iter().enumerate() {
        eprintln!("{}", dbos_hypervisor::net::listen::listening_line(*addr, i));
    }
    let report = match vm.run() {
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
    if let Some(io_error) = &report.io_error {
        eprintln!("dbos: {io_error}");
    }
    if args.stats {
        eprintln!(
            "dbos: {} exits to the VMM in {:.3} ms: {}",
            report.vmm_exits.total,
            report.elapsed.as_secs_f64() * 1e3,
            report.vmm_exits
        );
        eprintln!("dbos: all VM exits (KVM): {}", report.kvm);
        eprintln!(
            "dbos: VM set up in {:.3} ms; {}",
            report.setup.as_secs_f64() * 1e3,
            report.memory
        );
        if let Some(disk) = &report.disk {
            eprintln!(
                "dbos: {}",
                dbos_hypervisor::report::disk_io_line(disk, report.disk_cpu)
            );
        }
        if let Some(net) = &report.net {
            eprintln!("dbos: {}", dbos_hypervisor::report::net_line(net));
        }
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
        // The figure `--help` and the README give.
        assert_eq!(super::MIN_MEMORY, 4608 << 10);
        assert_eq!(parse_memory("4608K"), Ok(4608 << 10));
        assert!(parse_memory("4604K")
            .unwrap_err()
            .contains("less than the 4718592 bytes (4608K)"));
    }

    #[test]
    fn disk_sizes() {
        use super::parse_disk_size;
        assert_eq!(parse_disk_size("4096"), Ok(4096));
        assert_eq!(parse_disk_size("8M"), Ok(8 << 20));
        for bad in ["0", "1", "4095", "5000", "4097"] {
            let e = parse_disk_size(bad).unwrap_err();
            assert!(e.contains("non-zero multiple of 4 KiB"), "{bad}: {e}");
        }
        assert!(parse_disk_size("8589934592G").is_err());
        assert!(parse_disk_size("99999999999G").is_err());
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
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("1e9"),
            Ok(Duration::from_secs(1_000_000_000))
        );
        for (bad, why) in [
            ("-1", "is negative"),
            ("-0", "is negative"),
            ("-5ms", "is negative"),
            ("inf", "is infinite"),
            ("-inf", "is infinite"),
            ("infinity", "is infinite"),
            ("NaN", "is not a number"),
            ("1e10", "is too long"),
            ("1e300", "is too long"),
            ("soon", "is not a duration"),
            ("", "is not a duration"),
            ("5m", "is not a duration"),
            ("5h", "is not a duration"),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(
                e.contains("finite, non-negative number of seconds"),
                "{bad}: {e}"
            );
        }
    }
}
