//! The reference vmcache binary as an optional peer of the pools, for
//! `btree-compare` and `dbos bench --only pools`: where its binary is
//! found (`--vmcache PATH` or `$DBOS_VMCACHE`, built by the user; no code or
//! build recipe of it is in this repository), and one run of it as a child
//! process (`RNDREAD=1 DATASIZE PHYSGB VIRTGB THREADS RUNFOR BLOCK`), read
//! from its per-second lines.

use crate::child::dies_with_parent;
use crate::pools::Rate;
use dbos_bufferpool::PAGE_SIZE;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable naming the binary.
pub const ENV: &str = "DBOS_VMCACHE";

/// The binary `explicit` names, else `$DBOS_VMCACHE`, if either is set.
pub fn named(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| std::env::var_os(ENV).map(PathBuf::from))
}

/// Why `bin` cannot be run, if it cannot: missing, not a file, not
/// executable.
pub fn problem(bin: &Path) -> Option<String> {
    match std::fs::metadata(bin) {
        Err(e) => Some(format!("{}: {e}", bin.display())),
        Ok(m) if !m.is_file() => Some(format!("{} is not a file", bin.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Some(format!("{} is not executable", bin.display()))
        }
        Ok(_) => None,
    }
}

/// The reference vmcache binary and the sparse file it runs on (removed
/// when this is dropped).
pub struct Reference {
    bin: PathBuf,
    block: PathBuf,
    physgb: u64,
    virtgb: u64,
}

/// One measured run of the reference.
pub struct RefRun {
    pub rate: Rate,
    pub reads_per_lookup: f64,
    /// Seconds it ran after its load phase before the measured ones.
    pub warm_secs: usize,
}

impl Reference {
    /// The reference `bin` with a pool of `physgb` GiB and a window of
    /// `virtgb` GiB over a sparse file `block` of that size (created here).
    pub fn new(
        bin: PathBuf,
        block: PathBuf,
        physgb: u64,
        virtgb: u64,
    ) -> Result<Reference, String> {
        if let Some(p) = problem(&bin) {
            return Err(format!("the vmcache binary: {p}"));
        }
        let f = std::fs::File::create(&block)
            .map_err(|e| format!("cannot create {}: {e}", block.display()))?;
        // Sparse: nothing is written in memory.
        f.set_len(virtgb << 30)
            .map_err(|e| format!("cannot size {}: {e}", block.display()))?;
        Ok(Reference {
            bin,
            block,
            physgb,
            virtgb,
        })
    }

    /// Lookups/s of one in-memory run of `threads` threads for about
    /// `secs` after its load phase (its first second left out).
    pub fn lookups(&self, keys: u64, threads: usize, secs: f64) -> Result<Rate, String> {
        Ok(self.run(keys, threads, secs, None)?.rate)
    }

    /// One run of `threads` threads over `keys` keys: after its load
    /// phase, vmcache's per-second lines are skipped until it has read
    /// `warm_pages` pages (its pool turned over, as the benchmarks warm
    /// their own pools; `None`: the first second only), then the next
    /// `secs` (rounded up) seconds are measured and the child is stopped.
    /// Lookups per second are the mean of those seconds' `tx` column; per
    /// CPU-second, those lookups over the process's CPU time across them
    /// (read from /proc as the lines arrive); page reads per lookup from
    /// its `rmb` column.
    pub fn run(
        &self,
        keys: u64,
        threads: usize,
        secs: f64,
        warm_pages: Option<u64>,
    ) -> Result<RefRun, String> {
        let measure = secs.ceil().max(1.0) as usize;
        // Out of memory the warm-up's length is not known ahead: a long
        // RUNFOR, and the child is stopped once the seconds are in.
        let runfor = if warm_pages.is_some() {
            3600
        } else {
            measure + 1
        };
        let mut child = dies_with_parent(&mut Command::new(&self.bin))
            .env("RNDREAD", "1")
            .env("DATASIZE", keys.to_string())
            .env("PHYSGB", self.physgb.to_string())
            .env("VIRTGB", self.virtgb.to_string())
            .env("THREADS", threads.to_string())
            .env("RUNFOR", runfor.to_string())
            .env("BLOCK", &self.block)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.bin.display()))?;
        let pid = child.id();
        let mut text = String::new();
        let mut columns = None;
        // Per second: lookups, MiB read, the child's CPU seconds then.
        let mut rows: Vec<(f64, f64, f64)> = Vec::new();
        let mut warm_end = None;
        let mut read_pages = 0.0;
        let stdout = child.stdout.take().expect("stdout is piped");
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            let Some((tx_col, rmb_col)) = columns else {
                if line.starts_with("ts,") {
                    let col = |name| line.split(',').position(|c| c == name);
                    columns = col("tx").zip(col("rmb"));
                }
                continue;
            };
            let cpu = process_cpu(pid);
            let field = |c: usize| line.split(',').nth(c)?.parse::<f64>().ok();
            let Some((tx, rmb)) = field(tx_col).zip(field(rmb_col)) else {
                break;
            };
            rows.push((tx, rmb, cpu));
            match warm_end {
                None => {
                    read_pages += rmb * (1 << 20) as f64 / PAGE_SIZE as f64;
                    // A pool that never fills (the data fits) stops warming
                    // after two minutes.
                    if warm_pages.is_none_or(|p| read_pages >= p as f64) || rows.len() >= 120 {
                        warm_end = Some(rows.len());
                    }
                }
                Some(w) if rows.len() >= w + measure => break,
                Some(_) => {}
            }
        }
        if warm_pages.is_some() {
            let _ = child.kill();
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {}: {e}", self.bin.display()))?;
        match warm_end {
            Some(w) if rows.len() >= w + measure => {
                let m = &rows[w..w + measure];
                let n: f64 = m.iter().map(|r| r.0).sum();
                let read: f64 = m.iter().map(|r| r.1).sum();
                Ok(RefRun {
                    rate: Rate {
                        wall: n / measure as f64,
                        cpu: n / (m[measure - 1].2 - rows[w - 1].2).max(1e-3),
                    },
                    reads_per_lookup: read * (1 << 20) as f64 / PAGE_SIZE as f64 / n.max(1.0),
                    warm_secs: w,
                })
            }
            _ => Err(format!(
                "vmcache {} gave no measurement ({}): stdout {text:?} stderr {:?}",
                self.bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.block);
    }
}
