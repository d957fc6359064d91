//! Event counters of the process platform: one cache-line-aligned block of
//! atomics per CPU (worker thread), summed on `Counters::sum`, plus the
//! kernel's TLB-shootdown count read from `/proc/interrupts`.
//!
//! Counting is a relaxed `fetch_add` on the calling CPU's block, so it is
//! cheap on the hot path and safe in a signal handler. Threads that are not
//! workers count as CPU 0 (see [`super::cpus`]), hence atomics rather than
//! plain per-thread cells.

use crate::platform::EventCounts;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;
use std::vec::Vec;

pub(crate) use crate::platform::Event;

const EVENTS: usize = Event::COUNT;

#[repr(align(64))]
struct CpuCounters([AtomicU64; EVENTS]);

/// Per-CPU event counts.
pub(crate) struct Counters {
    cpus: Box<[CpuCounters]>,
}

impl Counters {
    pub(crate) fn new(cpus: usize) -> Counters {
        let cpus: Vec<CpuCounters> = (0..cpus.max(1))
            .map(|_| CpuCounters(core::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Counters {
            cpus: cpus.into_boxed_slice(),
        }
    }

    /// Adds `n` events on CPU `cpu` (async-signal-safe).
    #[inline]
    pub(crate) fn add(&self, cpu: usize, event: Event, n: u64) {
        let block = &self.cpus[cpu.min(self.cpus.len() - 1)];
        block.0[event as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over all CPUs, with `shootdowns` from `/proc/interrupts`.
    pub(crate) fn sum(&self) -> EventCounts {
        let total = |e: Event| -> u64 {
            self.cpus
                .iter()
                .map(|c| c.0[e as usize].load(Ordering::Relaxed))
                .sum()
        };
        EventCounts::from_totals(total, 0, None, tlb_shootdowns().unwrap_or(0))
    }
}

/// TLB shootdowns the kernel has performed on all CPUs since boot: the sum
/// of the `TLB:` line of `/proc/interrupts`. Machine-wide (every process's
/// shootdowns count), so a difference of two readings is only meaningful on
/// an otherwise quiet machine. `None` if the line is missing.
pub fn tlb_shootdowns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    parse_tlb_line(&text)
}

/// The sum of the per-CPU counts on the `TLB:` line of `/proc/interrupts`.
fn parse_tlb_line(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("TLB:"))?;
    let mut sum = 0u64;
    for field in line.trim_start()["TLB:".len()..].split_whitespace() {
        match field.parse::<u64>() {
            Ok(n) => sum += n,
            Err(_) => break, // the description ("TLB shootdowns") follows the counts
        }
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tlb_line() {
        let text = "           CPU0       CPU1\n  0:  1  2  IO-APIC 2-edge timer\nTLB:      30703      29052   TLB shootdowns\n";
        assert_eq!(parse_tlb_line(text), Some(59755));
        assert_eq!(parse_tlb_line("NMI: 1 2 Non-maskable\n"), None);
    }

    #[test]
    fn sums_over_cpus() {
        let c = Counters::new(3);
        c.add(0, Event::PteWrite, 2);
        c.add(2, Event::PteWrite, 3);
        c.add(1, Event::IpiSent, 1);
        c.add(7, Event::Fault, 1); // clamps to the last CPU
        let s = c.sum();
        assert_eq!(
            (
                s.pte_writes,
                s.ipis_sent,
                s.faults,
                s.vmm_exits,
                s.kvm_exits
            ),
            (5, 1, 1, 0, None)
        );
    }
}
