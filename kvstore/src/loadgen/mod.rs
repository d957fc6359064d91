//! `dbos-kv bench`: a load generator that speaks RESP2 over TCP, so the
//! project's server (`dbos-kv serve`) and Redis can be measured the same
//! way. Host only.
//!
//! It drives YCSB's core workloads with the in-process driver's pieces
//! ([`crate::workload`]: [`Spec`], the key choosers, [`key_bytes`], the
//! checked value format, [`Acked`]), one thread and connection per
//! client, and prints a table per phase (per kind of operation: count,
//! ops/s, latency percentiles, errors, wrong and missing values).
//!
//! - [`client`]: the RESP2 client (request encoder, reply parser,
//!   connection).
//! - [`run`]: the load and run phases, their clients and threads.
//! - [`report`]: the statistics of a phase and its table.
//! - [`acks`]: the acknowledgement file (`--acks`) for crash checks.
//! - [`verify`]: `--verify`, the check of a server against that file.
//! - [`progress`]: the progress bar or lines.
//!
//! Exit status ([`Outcome::code`]): 0 if every reply was as expected, 1
//! if there were error replies or wrong or missing values (or the
//! verification found any), 3 if the server went away (connection
//! refused, reset or closed, no reply within `--timeout`), 4 if the bench
//! could not go on (a command the server does not know, a malformed
//! reply, the acknowledgement file). Bad options exit 2 (as clap's
//! usage errors do).
//!
//! [`Spec`]: crate::workload::Spec
//! [`key_bytes`]: crate::workload::key_bytes
//! [`Acked`]: crate::workload::Acked

pub mod acks;
pub mod client;
pub mod progress;
pub mod report;
pub mod run;
pub mod verify;

use std::path::PathBuf;
use std::string::String;
use std::time::Duration;

use crate::workload::Spec;

/// Which phases to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `SET` every record (version 1).
    Load,
    /// The workload's operations on records loaded before.
    Run,
    /// Load, then run.
    Both,
}

/// Everything `dbos-kv bench` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// The workload; `threads` is the number of clients.
    pub spec: Spec,
    /// `--distribution latest`: YCSB's skewed-latest chooser for any
    /// workload (workload D uses it whatever the distribution).
    pub latest: bool,
    pub phase: Phase,
    /// Requests sent before reading replies, at least 1.
    pub pipeline: usize,
    /// The acknowledgement file: written by a load or run, read by
    /// `verify`.
    pub acks: Option<PathBuf>,
    /// Check the server against `acks` instead of running phases.
    pub verify: bool,
    /// Bounds connecting and every read and write.
    pub timeout: Duration,
    /// Print each phase as one line of JSON ([`report::json`]) instead of
    /// the description and the tables, for tools (`dbos bench`).
    pub json: bool,
}

/// How a bench ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every reply was as expected.
    Passed,
    /// Error replies, wrong or missing values (already printed).
    Problems,
    /// The server went away.
    Lost(String),
    /// The bench could not go on.
    Failed(String),
}

impl Outcome {
    /// The exit status.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Problems => 1,
            Outcome::Lost(_) => 3,
            Outcome::Failed(_) => 4,
        }
    }
}

/// Runs `dbos-kv bench` as `opts` says; prints the tables, and the reason
/// on stderr if it stopped early. Returns the exit status.
pub fn bench(opts: &Options) -> u8 {
    let mut opts = opts.clone();
    opts.pipeline = opts.pipeline.max(1);
    if let Err(e) = opts.spec.validate() {
        std::eprintln!("dbos-kv bench: {e}");
        return 2;
    }
    let outcome = if opts.verify {
        verify::verify(&opts)
    } else {
        run::phases(&opts)
    };
    match &outcome {
        Outcome::Passed => {}
        Outcome::Problems => {
            std::eprintln!("dbos-kv bench: error replies, wrong or missing values (see above)")
        }
        Outcome::Lost(e) => std::eprintln!(
            "dbos-kv bench: lost the server: {e} (stopped; acknowledged writes are in the acks \
             file, if one was given)"
        ),
        Outcome::Failed(e) => std::eprintln!("dbos-kv bench: {e}"),
    }
    outcome.code()
}

impl core::str::FromStr for Phase {
    type Err = String;

    /// `load`, `run` or `both`.
    fn from_str(s: &str) -> Result<Phase, String> {
        match s {
            "load" => Ok(Phase::Load),
            "run" => Ok(Phase::Run),
            "both" => Ok(Phase::Both),
            _ => Err(std::format!("unknown phase '{s}' (valid: load, run, both)")),
        }
    }
}

/// `--distribution`: `uniform` or `zipfian` (a [`Distribution`]), or
/// `latest` (true; the distribution is then unused).
///
/// [`Distribution`]: crate::workload::Distribution
pub fn parse_distribution(s: &str) -> Result<(crate::workload::Distribution, bool), String> {
    if s.eq_ignore_ascii_case("latest") {
        return Ok((crate::workload::Distribution::Zipfian, true));
    }
    s.parse()
        .map(|d| (d, false))
        .map_err(|_| std::format!("unknown distribution '{s}' (valid: uniform, zipfian, latest)"))
}
