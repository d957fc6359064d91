//! Progress of a long phase: an `indicatif` bar on stderr when stdout is a
//! terminal, otherwise a plain line on stderr every 5 seconds (so a log
//! of stdout holds the tables only).

use std::io::IsTerminal;
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How far a phase is: the clients add what they completed.
pub struct Progress {
    done: AtomicU64,
    total: u64,
    stop: AtomicBool,
}

/// Plain lines come this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// A phase of `total` operations.
    pub fn new(total: u64) -> Self {
        Progress {
            done: AtomicU64::new(0),
            total,
            stop: AtomicBool::new(false),
        }
    }

    /// Counts `n` more operations done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Operations done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Ends [`Progress::show`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Shows the progress of phase `name` until [`Progress::stop`].
    pub fn show(&self, name: &str) {
        let start = Instant::now();
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .map(|s| s.progress_chars("#>-"));
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.set_prefix(String::from(name));
            bar
        });
        let mut next_line = start + LINE_EVERY;
        while !self.stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(100));
            let done = self.done().min(self.total);
            match &bar {
                Some(bar) => {
                    bar.set_position(done);
                    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(std::format!("{rate:.0} ops/s"));
                }
                None if Instant::now() >= next_line => {
                    let s = start.elapsed().as_secs_f64();
                    std::eprintln!(
                        "{name}: {:.1}% ({done}/{}) in {s:.0} s, {:.0} ops/s",
                        done as f64 * 100.0 / self.total.max(1) as f64,
                        self.total,
                        done as f64 / s.max(1e-9),
                    );
                    next_line += LINE_EVERY;
                }
                None => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}
