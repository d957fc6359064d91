//! The guest's macros, on every other target.
//!
//! [`entry!`](crate::entry) names a guest's entry point, which only exists
//! in a guest image: built for another target, it stops the build with an
//! error that names that target and the guest target, instead of leaving
//! `cannot find entry in libdbos` and the errors that follow it.
//! [`println!`](crate::println) prints on standard output, so code that
//! prints through it runs in a guest and in a process alike.

// `__libdbos_target!()`: the target this crate is built for (build.rs).
include!(concat!(env!("OUT_DIR"), "/target.rs"));

/// Defines a guest program's entry point; guest builds only.
///
/// A dbos guest is built for `x86_64-unknown-none`. Built for any other
/// target, this macro fails the build with an error naming the target and
/// the fix: `cargo build --target x86_64-unknown-none` (`rustup target add
/// x86_64-unknown-none` installs it), or `[build] target =
/// "x86_64-unknown-none"` in the project's `.cargo/config.toml`, as `dbos
/// new` writes it. A program that also runs as a Linux process keeps its
/// `entry!` under `#[cfg(target_os = "none")]` and creates a
/// [`ProcessPlatform`](crate::process::ProcessPlatform) in its host `main`.
#[macro_export]
macro_rules! entry {
    ($($ignored:tt)*) => {
        ::core::compile_error!(::core::concat!(
            "libdbos::entry! defines a dbos guest's entry point, and a guest is built for the \
             x86_64-unknown-none target, but this build is for ",
            $crate::__libdbos_target!(),
            ". Build the guest with `cargo build --target x86_64-unknown-none` (once: \
             `rustup target add x86_64-unknown-none`), or put `[build] target = \
             \"x86_64-unknown-none\"` in the project's .cargo/config.toml (as `dbos new` does), \
             with a build.rs that calls `libdbos_build::link_guest()`. To run the same program \
             as a Linux process, leave `entry!` to `#[cfg(target_os = \"none\")]` and run it on \
             `libdbos::process::ProcessPlatform`."
        ));
    };
}

/// Prints a line on standard output (in a guest: on the host console,
/// through one hypercall), so that code printing through it runs in both.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::host_macros::std_println!($($arg)*) };
}

/// `std::println!`, for [`println!`](crate::println) in crates that do not
/// link `std` themselves.
pub use std::println as std_println;
