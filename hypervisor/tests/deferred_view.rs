//! Stale translations forced on purpose: the guest's deferred page-table
//! view (`libdbos::paging::defer_view`, test mode) gives CPU 1 a private copy
//! of a window's tables, so that edits CPU 0 makes stay invisible to CPU 1
//! until CPU 1's view is invalidated, whatever the host's KVM does (this
//! host's resynchronises every vCPU at once: without the view, in mode
//! `shared`, CPU 1 reads the new values immediately and none of these
//! checks could fail). The scenario is `scenarios -- deferred-view MODE`.

mod common;

use common::{config, require_kvm, run};
use dbos_hypervisor::VmConfig;

/// The console of `deferred-view MODE` on 2 vCPUs, after it exits with 0.
fn deferred_view(mode: &str) -> Vec<String> {
    let report = run(
        "scenarios",
        VmConfig {
            vcpus: 2,
            ..config(&["deferred-view", mode])
        },
    );
    assert_eq!(
        report.exit.process_status(),
        0,
        "{}\n{:#?}",
        report.exit,
        report.console
    );
    report.console
}

/// The lines every mode with a view prints first and last: 4 private tables
/// (root, PDPT, PD, page table) taken from the frame allocator and all given
/// back; CPU 0's edits counted as page-table writes of the platform (8), the
/// view's own writes apart (the copy: 3 root entries, 1 PDPT, 1 PD and 4
/// page-table entries).
fn with_view(cases: &[&str], view_writes: u64) -> Vec<String> {
    let mut lines = vec![
        "[vcpu0] cpu 1 defers its view of the window: private tables=4 frames during=-4 (cpu 0 defers: false)".to_string(),
        "[vcpu0] cpu 0 re-points pages 0, 2 and 4, maps 1, unmaps 3: pte_writes=8 local_invalidations=4 ipis=0".to_string(),
    ];
    lines.extend(cases.iter().map(|c| format!("[vcpu0] {c}")));
    lines.push(format!(
        "[vcpu0] view writes at the copy=9 in all={view_writes}"
    ));
    lines
}

#[test]
fn invalidations_repair_a_deferred_view() {
    if !require_kvm() {
        return;
    }
    assert_eq!(
        deferred_view("deferred"),
        with_view(
            &[
                // 1. Stale until invalidate_local, which refreshes one entry.
                "case 1, invalidate_local: before=1 after remap=1 after invalidate=2 (view writes 1)",
                // 2. The IPI of invalidate_all refreshed CPU 1's view: one IPI.
                "case 2, invalidate_all on cpu 0: cpu 1 reads 2 (ipis=1 remote=1 local=1 view writes 1)",
                // 3. Frames back to the baseline exactly.
                "case 3, end of the view: tables freed=4 frames after=+0 private tables alive=0",
                // 4. A new mapping is seen at once (not-present entries are
                // never cached: one fault absorbed by the view, none reaches
                // the hook); a removed one keeps translating to the old frame
                // until CPU 1 invalidates, then faults into the hook.
                "case 4, page mapped by cpu 0: reads 3 (absorbed faults 1); page unmapped by cpu 0: reads 1 then 3 after invalidate (hook faults 1)",
                // 5. A CR3 reload refreshes the whole view (the 5 writes: page
                // 4's entry, and the accessed bits CPU 1's reads set in the
                // copy's entries of pages 0 to 3, which the real ones lack).
                "case 5, flush_local: reads 1 then 2 (view writes 5)",
            ],
            19
        )
    );
}

/// The same scenario with every invalidation of CPU 1's view left out (CPU
/// 1's `invalidate_local` and `flush_local`, CPU 0's `invalidate_all`): every
/// read stays stale, so each check of `invalidations_repair_a_deferred_view`
/// fails without its repair.
#[test]
fn without_invalidation_a_deferred_view_stays_stale() {
    if !require_kvm() {
        return;
    }
    assert_eq!(
        deferred_view("no-repair"),
        with_view(
            &[
                "case 1, invalidate_local: before=1 after remap=1 after invalidate=1 (view writes 0)",
                "case 2, invalidate_all on cpu 0: cpu 1 reads 1 (ipis=0 remote=0 local=0 view writes 0)",
                "case 3, end of the view: tables freed=4 frames after=+0 private tables alive=0",
                "case 4, page mapped by cpu 0: reads 3 (absorbed faults 1); page unmapped by cpu 0: reads 1 then 1 after invalidate (hook faults 0)",
                "case 5, flush_local: reads 1 then 1 (view writes 0)",
            ],
            10
        )
    );
}
