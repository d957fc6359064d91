//! Boot: the entry point every vCPU starts at, per-CPU setup, and the hand-off
//! to the database's `main`.
//!
//! The bootstrap vCPU (index 0) checks the boot information and the ABI
//! version, sets up the heap, the frame allocator, logging, its descriptor
//! tables and per-CPU area, then calls the program's entry point and exits with
//! its status. Other vCPUs wait until that setup is done, set up their own
//! descriptor tables and per-CPU area, and park.

use crate::abi::{self, BootInfo, MemoryKind, MemoryRegion};
use crate::memory::phys_to_virt;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The image's ABI version note (see [`crate::abi::note`]): `dbos run`
/// reads it before it creates the VM. `guest.ld` keeps the section and gives
/// it a `PT_NOTE` segment; `bsp_init` reads it, so it is always linked.
#[used]
#[unsafe(link_section = ".note.dbos")]
static ABI_NOTE: abi::note::AbiNote = abi::note::AbiNote::new(abi::ABI_VERSION);

static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());
static BSP_READY: AtomicBool = AtomicBool::new(false);

unsafe extern "Rust" {
    /// The program's entry point, defined by [`entry!`](crate::entry).
    fn __libdbos_main() -> u8;
}

/// Defines the guest program's entry point: `fn() -> u8`, whose result
/// becomes the hypervisor's exit status.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn __libdbos_main() -> u8 {
            let main: fn() -> u8 = $main;
            main()
        }
    };
}

/// Where every vCPU starts (see [`crate::abi`] for the register contract).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
extern "sysv64" fn _start(boot_info: *mut BootInfo, cpu: u64) -> ! {
    if cpu == 0 {
        bsp_init(boot_info);
        BSP_READY.store(true, Ordering::Release);
        // Wait for the other CPUs' setup, so that `run_on_all` and IPIs
        // reach every CPU from the first instruction of `main`.
        while crate::percpu::online() < self::boot_info().vcpu_count as usize {
            core::hint::spin_loop();
        }
        x86_64::instructions::interrupts::enable();
        // SAFETY: defined by the program through `entry!`; the linker refuses
        // an image without it.
        let status = unsafe { __libdbos_main() };
        crate::hypercall::exit(status)
    } else {
        while !BSP_READY.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        cpu_init(cpu as u32);
        crate::smp::idle()
    }
}

fn bsp_init(boot_info: *mut BootInfo) {
    // SAFETY: the hypervisor passes the direct-map address of the boot
    // information, which lives in the boot-data region for the VM's lifetime.
    let info = unsafe { &*boot_info };
    if info.magic != abi::BOOT_MAGIC {
        crate::hypercall::panic(
            b"dbos boot information is corrupt (bad magic)",
            file!().as_bytes(),
            line!(),
            0,
        );
    }
    // The second line of defence behind the hypervisor's check of the note:
    // the version this image says it was built for against the one the
    // hypervisor provides. Read volatile, so the note stays referenced.
    // SAFETY: a plain read of a field of a static.
    let built_for = unsafe { core::ptr::read_volatile(&ABI_NOTE.version) };
    debug_assert_eq!(built_for, abi::ABI_VERSION);
    if let Err(mismatch) = abi::check_abi_version(info.abi_version) {
        let mut buf = [0u8; 160];
        let mut msg = crate::fmtbuf::FmtBuf::new(&mut buf);
        let _ = core::fmt::Write::write_fmt(&mut msg, format_args!("{mismatch}"));
        crate::hypercall::panic(msg.as_bytes(), file!().as_bytes(), line!(), 0);
    }
    BOOT_INFO.store(boot_info, Ordering::Release);
    let map = memory_map();
    crate::memory::set_phys_end(map.iter().map(MemoryRegion::end).max().unwrap_or(0));
    let Some(heap) = map.iter().find(|r| r.kind() == Some(MemoryKind::Heap)) else {
        crate::hypercall::panic(
            b"dbos boot information has no heap region",
            file!().as_bytes(),
            line!(),
            0,
        );
    };
    crate::heap::init(phys_to_virt(heap.start), heap.len);
    crate::frames::init(map);
    crate::console::init(log::LevelFilter::Info);
    cpu_init(0);
}

/// Per-CPU setup: descriptor tables (with IST stacks), the per-CPU area and
/// the local APIC. Interrupts stay disabled.
fn cpu_init(cpu: u32) {
    crate::gdt::init_this_cpu();
    crate::idt::load();
    crate::percpu::init(cpu);
    crate::apic::init_this_cpu();
}

/// The boot information the hypervisor provided.
pub fn boot_info() -> &'static BootInfo {
    // SAFETY: set once by the bootstrap CPU before `main` runs and never
    // changed; it points at boot data that lives as long as the VM.
    unsafe { &*BOOT_INFO.load(Ordering::Acquire) }
}

/// The guest-physical memory map.
pub fn memory_map() -> &'static [MemoryRegion] {
    let info = boot_info();
    let n = (info.memory_map_len as usize).min(abi::MAX_MEMORY_REGIONS);
    &info.memory_map[..n]
}

/// The guest's command-line arguments (the words after `--` on the `dbos`
/// command line).
#[derive(Clone)]
pub struct Args {
    rest: &'static [u8],
    remaining: u32,
}

impl Iterator for Args {
    type Item = &'static str;
    fn next(&mut self) -> Option<&'static str> {
        if self.remaining == 0 {
            return None;
        }
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (word, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        self.remaining -= 1;
        // The hypervisor only passes arguments that were valid UTF-8 strings.
        core::str::from_utf8(word).ok()
    }
}

/// The guest's command-line arguments.
pub fn args() -> Args {
    let info = boot_info();
    let len = (info.args_len as usize).min(abi::MAX_ARGS_BYTES);
    // SAFETY: the hypervisor wrote `args_len` bytes of arguments at
    // `args_addr` in the boot-data region, which is never reused.
    let rest = unsafe {
        core::slice::from_raw_parts(phys_to_virt(info.args_addr.raw()) as *const u8, len)
    };
    Args {
        rest,
        remaining: info.argc,
    }
}

/// Ends the guest with `status` as the hypervisor's exit status.
pub fn exit(status: u8) -> ! {
    crate::hypercall::exit(status)
}
