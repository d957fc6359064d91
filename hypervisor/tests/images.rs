//! The measured guest images (`target/guest/`: the programs whose events the
//! project reports) carry no test machinery: no conformance suite, no
//! deferred page-table views and their hooks on the `invlpg`, CR3 and
//! page-fault paths, no test knobs. Their symbols are checked for the names
//! of that code; the test build (`target/guest-test/`, feature
//! `conformance`) must have them, so the check can fail.

use dbos_hypervisor::{guest_image, test_guest_image};

/// Names of test-only code in libdbos (feature `conformance`): the deferred
/// view and the hooks it puts on the fault, invalidation and CR3 paths, and
/// the raw console call.
const TEST_ONLY: [&str; 6] = [
    "defer_view",
    "end_deferred_view",
    // The hooks (never inlined, so that they show here).
    "absorb_fault",
    "refresh_page",
    "refresh_all",
    "shared_root",
];

fn contains(image: &[u8], name: &str) -> bool {
    image.windows(name.len()).any(|w| w == name.as_bytes())
}

#[test]
fn measured_images_link_no_test_machinery() {
    for program in ["hello", "kvstore", "kvarray", "tabby", "snappy", "iobench"] {
        let path = guest_image(program);
        let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let found: Vec<&str> = TEST_ONLY
            .iter()
            .copied()
            .filter(|n| contains(&image, n))
            .collect();
        assert!(
            found.is_empty(),
            "{} links test machinery: {found:?}",
            path.display()
        );
    }
    // The same names are there in the test build: the check sees symbols.
    for program in ["tabby", "snappy"] {
        let path = test_guest_image(program);
        let image = std::fs::read(&path).unwrap();
        for name in ["defer_view", "end_deferred_view"] {
            assert!(contains(&image, name), "{}: no {name}", path.display());
        }
    }
    // Every hook is on the paths of every test-build program.
    for program in ["hello", "kvstore", "kvarray", "scenarios"] {
        let image = std::fs::read(test_guest_image(program)).unwrap();
        for name in &TEST_ONLY[2..] {
            assert!(contains(&image, name), "test build of {program}: no {name}");
        }
    }
}
