//! The panic handler: formats the message and reports it, with its location,
//! to the host through the panic hypercall, which stops the guest.

use crate::fmtbuf::FmtBuf;
use core::fmt::Write;
use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    let mut buf = [0u8; 1024];
    let mut msg = FmtBuf::new(&mut buf);
    let _ = write!(msg, "{}", info.message());
    let (file, line, column) = info
        .location()
        .map_or(("<unknown>", 0, 0), |l| (l.file(), l.line(), l.column()));
    crate::hypercall::panic(msg.as_bytes(), file.as_bytes(), line, column)
}
