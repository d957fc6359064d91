//! The Tabby buffer pool in the guest (`examples/src/bin/tabby.rs`): the
//! B+tree with a writer and a reader on two vCPUs at once over the NVMe
//! disk, and the side-by-side event report of Tabby's eviction (no IPI, no
//! remote invalidation, no entry written) against the classic
//! `invalidate_all` per evicted page.

mod common;

use common::{config, require_kvm, run, scratch};
use dbos_hypervisor::disk::DiskConfig;
use dbos_hypervisor::VmConfig;
use std::time::Duration;

/// The number after `key ` in `line` (up to the next space, `;` or `,`).
fn field(line: &str, key: &str) -> String {
    let Some(at) = line.find(&format!("{key} ")) else {
        panic!("no {key:?} in {line:?}");
    };
    line[at + key.len() + 1..]
        .split([' ', ';', ','])
        .next()
        .unwrap()
        .to_string()
}

/// The number before ` key` in `line`.
fn before(line: &str, key: &str) -> String {
    let Some(at) = line.find(&format!(" {key}")) else {
        panic!("no {key:?} in {line:?}");
    };
    line[..at].rsplit(' ').next().unwrap().to_string()
}

/// The console line starting with `prefix` (without the vCPU tag).
fn line<'a>(console: &'a [String], prefix: &str) -> &'a str {
    console
        .iter()
        .filter_map(|l| l.strip_prefix("[vcpu0] "))
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {console:#?}"))
}

#[test]
fn tabby_guest_btree_and_eviction_events() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("tabby.img");
    let report = run(
        "tabby",
        VmConfig {
            vcpus: 2,
            disk: Some(DiskConfig {
                poll_spin: Duration::from_millis(200),
                ..DiskConfig::new(&path, Some(1 << 20))
            }),
            ..config(&["all"])
        },
    );
    let c = &report.console;
    assert_eq!(report.exit.process_status(), 0, "{}\n{c:#?}", report.exit);
    assert_eq!(
        c.last().map(String::as_str),
        Some("[vcpu0] tabby: ok"),
        "{c:#?}"
    );

    // (a) Writer and reader at once; the tree equals the model.
    let model = line(c, "model: ");
    let keys = model
        .strip_prefix("model: ")
        .and_then(|l| l.split(' ').next())
        .unwrap();
    assert_eq!(
        model,
        format!("model: {keys} keys, 0 wrong, tree check {keys}"),
        "{c:#?}"
    );
    assert!(keys.parse::<u64>().unwrap() > 0);
    assert_eq!(field(line(c, "reader: "), "bad"), "0");
    let pool = line(c, "model pool: ");
    assert!(
        field(pool, "evictions").parse::<u64>().unwrap() > 0,
        "{pool}"
    );

    // (b) Events. Tabby's eviction, alone: nothing at all per page.
    let tabby = line(c, "tabby eviction: ");
    assert!(
        field(tabby, "evicted").parse::<u64>().unwrap() > 0,
        "{tabby}"
    );
    for key in ["ipis", "remote", "local", "pte"] {
        assert_eq!(field(tabby, key), "0.00", "{key}: {tabby}");
    }
    // During the lookups on both vCPUs (inline evictions and loads): no IPI
    // and no remote invalidation at all; one entry written and one local
    // invalidation per page read, nothing else (no stale translation needed
    // repair on this host: the repairs' residue is 0).
    let lookups = line(c, "tabby lookups: evicted");
    assert!(field(lookups, "evicted").parse::<u64>().unwrap() > 0);
    assert_eq!(field(lookups, "ipis"), "0.00", "{lookups}");
    assert_eq!(field(lookups, "remote"), "0.00", "{lookups}");
    let totals = lookups.split("totals:").nth(1).unwrap();
    let summary = line(c, "tabby lookups: 10 lookups");
    assert_eq!(before(summary, "bad"), "0", "every lookup found its value");
    let page_reads = before(summary, "page reads");
    assert_eq!(field(totals, "pte"), page_reads, "{lookups}");
    assert_eq!(field(totals, "local"), page_reads, "{lookups}");
    assert_eq!(
        line(c, "tabby repairs: "),
        "tabby repairs: 0; other events: local 0 pte 0; per repair: local n/a pte n/a"
    );

    // The classic way, same pool, same run: one IPI and one remote
    // invalidation per evicted page (2 vCPUs), plus the entry write.
    let classic = line(c, "invalidate_all eviction: ");
    assert!(field(classic, "evicted").parse::<u64>().unwrap() > 0);
    assert_eq!(field(classic, "ipis"), "1.00", "{classic}");
    assert_eq!(field(classic, "remote"), "1.00", "{classic}");
    assert_eq!(field(classic, "local"), "2.00", "{classic}");
    assert_eq!(field(classic, "pte"), "1.00", "{classic}");
    let lookups = line(c, "invalidate_all lookups: evicted");
    assert_eq!(field(lookups, "ipis"), "1.00", "{lookups}");
    assert_eq!(field(lookups, "remote"), "1.00", "{lookups}");
    assert_eq!(
        before(line(c, "invalidate_all lookups: 10 lookups"), "bad"),
        "0"
    );
}
