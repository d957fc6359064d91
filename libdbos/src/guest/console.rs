//! Console output and the `log` backend, both through the console hypercall.
//!
//! A log record becomes one line and one hypercall (one VM exit); the host
//! prints it prefixed by the vCPU index. Lines longer than [`LINE_MAX`] bytes
//! are cut and end in `...`.

use crate::fmtbuf::FmtBuf;
use core::fmt::{self, Write};
use log::{LevelFilter, Log, Metadata, Record};

/// Longest line a log record or `println!` produces in one hypercall.
pub const LINE_MAX: usize = 512;

/// Formats `args` plus a newline into one console write.
pub fn write_line(args: fmt::Arguments<'_>) {
    let mut buf = [0u8; LINE_MAX];
    let mut line = FmtBuf::new(&mut buf[..LINE_MAX - 4]);
    let _ = line.write_fmt(args);
    let mut len = line.as_bytes().len();
    if line.truncated() {
        buf[len..len + 3].copy_from_slice(b"...");
        len += 3;
    }
    buf[len] = b'\n';
    crate::hypercall::console_write(&buf[..=len]);
}

/// Prints a line on the host console through one hypercall.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::write_line(format_args!($($arg)*)) };
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            write_line(format_args!(
                "{:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger with the given maximum level.
pub(crate) fn init(level: LevelFilter) {
    // A second call (there is none in libdbos) would fail harmlessly.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
