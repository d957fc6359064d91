//! What the vCPU threads and the thread that runs the VM share: guest RAM,
//! the services' state (disk and network included), the exit counters, and how the guest stopped (the
//! first report wins; a power cut armed on the disk is settled with it).

use crate::console::Console;
use crate::disk::{Disk, PowerCutPlan};
use crate::files::Files;
use crate::kvmstats::VcpuStats;
use crate::memory::GuestRam;
use crate::report::GuestExit;
use dbos_nvme::host::powercut::CutReport;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// State shared by the vCPU threads and the thread that runs the VM.
pub(crate) struct Shared {
    pub ram: Arc<GuestRam>,
    pub console: Console,
    pub started: Instant,
    /// Exits to the VMM (returns from `KVM_RUN`) of all vCPUs, and the
    /// `Stats` hypercalls among them.
    pub vmm_exits: AtomicU64,
    pub stats_calls: AtomicU64,
    /// KVM's own statistics of every vCPU (all VM exits, those handled in
    /// the kernel included), or why they cannot be read.
    pub kvm_stats: Result<Vec<VcpuStats>, String>,
    pub files: Files,
    pub disk: Option<Disk>,
    /// The network, when the VM listens (`--listen`).
    pub net: Option<crate::net::Network>,
    /// Set once the guest has stopped; vCPU loops return when they see it.
    pub stopping: AtomicBool,
    pub exit: Mutex<Option<GuestExit>>,
    pub stopped: Condvar,
}

impl Shared {
    /// Records how the guest stopped; the first report wins.
    pub fn stop_with(&self, exit: GuestExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        self.record(&mut slot, exit);
    }

    /// Records that the disk cut its own power (`--power-cut-at-write`),
    /// unless the guest stopped first.
    pub fn power_cut_by_disk(&self) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            if let Some((plan, cut)) = self.disk.as_ref().and_then(Disk::settle_power_cut) {
                self.record(&mut slot, power_cut_exit(plan, cut));
            }
        }
    }

    /// Records `exit` in `slot` (the locked exit) if nothing is recorded,
    /// and tells the vCPUs and the VM thread. A power cut armed on the disk
    /// is settled under the same lock: if the power has been cut, that is
    /// how the guest stopped (the guest's own exit, if any, came after the
    /// machine was off); otherwise the cut is called off.
    pub fn record(&self, slot: &mut Option<GuestExit>, exit: GuestExit) {
        if slot.is_none() {
            let exit = match self.disk.as_ref().and_then(Disk::settle_power_cut) {
                Some((plan, cut)) => power_cut_exit(plan, cut),
                None => exit,
            };
            log::debug!("guest stopped: {exit}");
            *slot = Some(exit);
        }
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_all();
    }
}

fn power_cut_exit(plan: PowerCutPlan, cut: CutReport) -> GuestExit {
    GuestExit::PowerCut {
        at: plan.at,
        seed: plan.seed,
        cut,
    }
}
