//! Links the guest binaries with libdbos's linker script (fixed addresses in
//! the image window, see `libdbos::abi`) as static, non-PIE executables,
//! through `libdbos-build`: the helper guest projects outside this
//! repository (`dbos new`) use too.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    libdbos_build::link_guest();
}
