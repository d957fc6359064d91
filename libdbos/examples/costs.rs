//! Measures the events each privileged operation costs on the process
//! platform and prints them as a markdown table (the process section of
//! `libdbos/docs/costs.md`).
//!
//! ```text
//! cargo run -p libdbos --release --example costs                 # print
//! cargo run -p libdbos --release --example costs -- --update libdbos/docs/costs.md
//! cargo run -p libdbos --release --example costs -- --iterations 200
//! ```
//!
//! With `--update FILE`, the text between `<!-- process:begin -->` and
//! `<!-- process:end -->` in FILE is replaced. The counting itself is
//! `libdbos::conformance::costs`, which the guest runs too.

use libdbos::conformance::costs;
use libdbos::process::{Config, ProcessPlatform};
use std::process::ExitCode;

const BEGIN: &str = "<!-- process:begin -->";
const END: &str = "<!-- process:end -->";

fn main() -> ExitCode {
    let mut iterations = 1000u64;
    let mut update = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--iterations", Some(n)) if n.parse::<u64>().is_ok() => {
                iterations = n.parse().unwrap_or(1000)
            }
            ("--update", Some(path)) => update = Some(path),
            _ => {
                eprintln!("usage: costs [--iterations N] [--update FILE]");
                return ExitCode::from(2);
            }
        }
    }
    let config = Config {
        frames: 8192,
        cpus: 2,
        ..Config::default()
    };
    let platform = match ProcessPlatform::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("costs: cannot create the process platform: {e}");
            return ExitCode::FAILURE;
        }
    };
    let measured = match costs::measure(platform, iterations) {
        Ok(c) => c,
        Err(f) => {
            eprintln!("costs: {f}");
            return ExitCode::FAILURE;
        }
    };
    let mut table = String::new();
    if costs::write_markdown(&mut table, &measured).is_err() {
        eprintln!("costs: formatting failed");
        return ExitCode::FAILURE;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let section = format!(
        "{BEGIN}\nProcess (`ProcessPlatform`): {} CPUs (worker threads, pinned when the machine has as many cores), \
         {iterations} runs of each operation, Linux {}. Events per operation, produced by \
         `cargo run -p libdbos --release --example costs -- --update libdbos/docs/costs.md`.\n\n{table}{END}",
        config.cpus,
        kernel.trim(),
    );
    match update {
        None => println!("{section}"),
        Some(path) => {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("costs: {path}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
                eprintln!("costs: {path} has no {BEGIN} ... {END} section");
                return ExitCode::FAILURE;
            };
            let updated = format!("{}{section}{}", &text[..start], &text[end + END.len()..]);
            if let Err(e) = std::fs::write(&path, updated) {
                eprintln!("costs: {path}: {e}");
                return ExitCode::FAILURE;
            }
            println!("updated {path}:\n{section}");
        }
    }
    ExitCode::SUCCESS
}
