//! Runs libdbos's conformance suite, or the cost measurement, on the guest
//! platform: the same code the process implementation is tested with.
//!
//! `dbos run --vcpus 2 platform -- conformance` prints one line per check and
//! exits 0 when all pass; `dbos run --vcpus 2 platform -- costs N` prints the
//! markdown table of events per operation over N repetitions.
#![no_std]
#![no_main]

use libdbos::conformance::{self, costs};
use libdbos::fmtbuf::FmtBuf;
use libdbos::println;

libdbos::entry!(main);

fn main() -> u8 {
    let mut args = libdbos::args();
    match args.next() {
        Some("conformance") => {
            let result = conformance::run_all(libdbos::platform(), |name, result| match result {
                Ok(()) => println!("ok   {name}"),
                Err(f) => println!("FAIL {f}"),
            });
            match result {
                Ok(passed) => {
                    println!("{passed} passed, 0 failed");
                    0
                }
                Err(_) => 1,
            }
        }
        Some("costs") => {
            let n = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
            match costs::measure(libdbos::platform(), n) {
                Ok(table) => {
                    let mut buf = [0u8; 8192];
                    let mut out = FmtBuf::new(&mut buf);
                    let _ = costs::write_markdown(&mut out, &table);
                    for line in out.as_str().lines() {
                        println!("{line}");
                    }
                    0
                }
                Err(f) => {
                    println!("FAIL {f}");
                    1
                }
            }
        }
        other => panic!("usage: platform -- conformance | costs N (got {other:?})"),
    }
}
