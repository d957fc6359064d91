//! `dbos-kv bench --verify --acks FILE`: reads every record the file
//! names from the server and checks it against what the file says (see
//! [`super::acks`]): an acknowledged record must be present, hold its own
//! record number and a well-formed value, in the acknowledged version or
//! a newer one; a newer one must have been written (in flight when the
//! server died, or overlapping another write of the record), which the
//! file's `written` lines bound when it is complete. A record written but
//! never acknowledged may be absent; if present it is checked the same
//! way.

use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Instant;
use std::vec::Vec;

use super::acks::AckSummary;
use super::client::{ClientError, Connection, Reply};
use super::progress::Progress;
use super::{Options, Outcome};
use crate::workload::{check_value, key_bytes, KEY_LEN};

/// One record to check: its acknowledged version (0: none) and the
/// newest version written, if known.
#[derive(Clone, Copy, Debug)]
struct Expect {
    record: u64,
    acked: u64,
    written: Option<u64>,
}

/// What the checks found.
#[derive(Default)]
struct Found {
    checked: u64,
    missing: u64,
    wrong: u64,
    errors: u64,
    newer: u64,
    /// The first few problems, one line each.
    first: Vec<String>,
}

/// Problem lines kept.
const KEPT: usize = 8;

impl Found {
    fn problem(&mut self, line: String) {
        if self.first.len() < KEPT {
            self.first.push(line);
        }
    }

    fn merge(&mut self, o: Found) {
        self.checked += o.checked;
        self.missing += o.missing;
        self.wrong += o.wrong;
        self.errors += o.errors;
        self.newer += o.newer;
        for l in o.first {
            self.problem(l);
        }
    }

    fn check(&mut self, e: Expect, value_size: usize, reply: &Reply) {
        self.checked += 1;
        let what = match e.written {
            Some(w) => format!("acknowledged at version {}, written up to {w}", e.acked),
            None => format!("acknowledged at version {}", e.acked),
        };
        match reply {
            Reply::Bulk(v) => match check_value(v, value_size) {
                Ok((r, version))
                    if r == e.record
                        && version >= e.acked
                        && e.written.is_none_or(|w| version <= w) =>
                {
                    if version > e.acked {
                        self.newer += 1;
                    }
                }
                Ok((r, version)) => {
                    self.wrong += 1;
                    self.problem(format!(
                        "record {}: {what}; holds record {r} version {version}",
                        e.record
                    ));
                }
                Err(err) => {
                    self.wrong += 1;
                    self.problem(format!("record {}: {what}; holds {err}", e.record));
                }
            },
            Reply::Nil if e.acked == 0 => {}
            Reply::Nil => {
                self.missing += 1;
                self.problem(format!("record {}: {what}; missing", e.record));
            }
            Reply::Error(err) => {
                self.errors += 1;
                self.problem(format!(
                    "record {}: GET: error reply: {}",
                    e.record,
                    String::from_utf8_lossy(err)
                ));
            }
            r => {
                self.errors += 1;
                self.problem(format!(
                    "record {}: GET: unexpected reply: {}",
                    e.record,
                    r.describe()
                ));
            }
        }
    }
}

/// Checks `records` on one connection, `depth` `GET`s per round.
fn check_share(
    opts: &Options,
    records: &[Expect],
    value_size: usize,
    progress: &Progress,
    stopping: &AtomicBool,
) -> (Found, Option<ClientError>) {
    let mut found = Found::default();
    let mut conn = match Connection::connect(&opts.host, opts.port, opts.timeout) {
        Ok(c) => c,
        Err(e) => return (found, Some(e)),
    };
    let mut key = Vec::with_capacity(KEY_LEN);
    for round in records.chunks(opts.pipeline) {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        for e in round {
            key_bytes(e.record, opts.spec.ordered_keys, &mut key);
            conn.queue(&[b"GET", &key]);
        }
        if let Err(err) = conn.flush() {
            return (found, Some(err));
        }
        for &e in round {
            match conn.read_reply() {
                Ok(reply) => found.check(e, value_size, &reply),
                Err(err) => return (found, Some(err)),
            }
        }
        progress.add(round.len() as u64);
    }
    (found, None)
}

/// Verifies the server against the acknowledgement file `opts.acks`.
pub fn verify(opts: &Options) -> Outcome {
    let Some(path) = &opts.acks else {
        return Outcome::Failed("--verify needs --acks FILE".into());
    };
    let summary = match AckSummary::read(path) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let value_size = summary.value_size.unwrap_or(opts.spec.value_size);
    std::println!(
        "verify: {}: {summary}; {value_size}-byte values; {} at {}:{}",
        path.display(),
        if opts.spec.threads == 1 {
            String::from("1 client")
        } else {
            format!("{} clients", opts.spec.threads)
        },
        opts.host,
        opts.port
    );
    let mut expect: Vec<Expect> = summary
        .acked
        .iter()
        .map(|(&record, &acked)| Expect {
            record,
            acked,
            written: None,
        })
        .collect();
    for &record in summary.written.keys() {
        if !summary.acked.contains_key(&record) {
            expect.push(Expect {
                record,
                acked: 0,
                written: None,
            });
        }
    }
    if summary.complete {
        for e in &mut expect {
            e.written = summary.written.get(&e.record).copied();
        }
    }
    let clients = opts.spec.threads.max(1);
    let per = expect.len().div_ceil(clients).max(1);
    let progress = Progress::new(expect.len() as u64);
    let stopping = AtomicBool::new(false);
    let lost: Mutex<Option<ClientError>> = Mutex::new(None);
    let start = Instant::now();
    let (found, ns) = thread::scope(|s| {
        let shower = s.spawn(|| progress.show("verify"));
        let workers: Vec<_> = expect
            .chunks(per)
            .map(|share| {
                let (progress, stopping, lost) = (&progress, &stopping, &lost);
                s.spawn(move || {
                    let (found, err) = check_share(opts, share, value_size, progress, stopping);
                    if let Some(e) = err {
                        stopping.store(true, Ordering::Relaxed);
                        if let Ok(mut l) = lost.lock() {
                            l.get_or_insert(e);
                        }
                    }
                    found
                })
            })
            .collect();
        let mut all = Found::default();
        for w in workers {
            if let Ok(f) = w.join() {
                all.merge(f);
            }
        }
        let ns = start.elapsed().as_nanos() as u64;
        progress.stop();
        let _ = shower.join();
        (all, ns)
    });
    std::println!(
        "verify: {} records checked ({} acknowledged) in {:.3} s: {} missing, {} wrong, {} \
         errors; {} hold a version newer than acknowledged",
        found.checked,
        summary.acked.len(),
        ns as f64 / 1e9,
        found.missing,
        found.wrong,
        found.errors,
        found.newer
    );
    for line in &found.first {
        std::println!("  {line}");
    }
    if let Some(e) = lost.into_inner().ok().flatten() {
        return if e.lost() {
            Outcome::Lost(e.to_string())
        } else {
            Outcome::Failed(e.to_string())
        };
    }
    if found.missing + found.wrong + found.errors > 0 {
        Outcome::Problems
    } else {
        std::println!("verify: PASSED");
        Outcome::Passed
    }
}
