//! The smallest dbos guest: logs a greeting with its arguments and exits.
//!
//! `dbos run hello -- [STATUS]` exits with STATUS (default 0).
#![no_std]
#![no_main]

libdbos::entry!(main);

fn main() -> u8 {
    let info = libdbos::boot_info();
    libdbos::println!(
        "hello from dbos guest: {} vCPU(s), {} MiB RAM",
        info.vcpu_count,
        info.ram_bytes >> 20
    );
    let status = match libdbos::args().next() {
        Some(word) => match word.parse::<u8>() {
            Ok(status) => status,
            Err(_) => panic!("argument {word:?} is not an exit status (0-255)"),
        },
        None => 0,
    };
    log::info!("exiting with status {status}");
    status
}
