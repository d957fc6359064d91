//! The VM: creating it from a configuration and an image, and running its
//! vCPUs (one host thread each) until the guest stops.

use crate::boot::{self, BootError, BootState};
use crate::console::Console;
use crate::disk::{CutAt, Disk, DiskConfig, DiskError, PowerCutPlan};
use crate::elf::{ElfError, Image};
use crate::files::{FileGrant, FileOpenError, Files};
use crate::kvmstats::{KvmCounts, KvmStats, VcpuStats};
use crate::layout::{Layout, MemoryTooSmall, MAX_MEMORY, PAGE};
use crate::memory::{GuestRam, MemoryError};
use crate::net::{NetConfig, NetError, Network};
use crate::report::{ExitCounts, GuestExit, RunReport};
use crate::shared::Shared;
use crate::vcpu;
use dbos_abi::{IMAGE_PHYS_MAX, MAX_ARGS_BYTES, MAX_VCPUS};
use dbos_nvme::host::InterruptSender;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::ffi::CString;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// How to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Number of vCPUs, 1 to `abi::MAX_VCPUS`.
    pub vcpus: u32,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory: u64,
    /// Arguments handed to the guest.
    pub args: Vec<String>,
    /// The KVM device to open.
    pub kvm_device: PathBuf,
    /// Print guest console lines on stdout.
    pub echo_console: bool,
    /// Keep guest console lines in the [`RunReport`].
    pub capture_console: bool,
    /// Host files the guest may open by name (`--file NAME=PATH`).
    pub files: Vec<FileGrant>,
    /// The NVMe disk, if any (`--disk PATH [--disk-size SIZE]`).
    pub disk: Option<DiskConfig>,
    /// The network, if any (`--listen ADDR:PORT ...`).
    pub net: Option<NetConfig>,
    /// Stop the guest cleanly once it has run this long: the disk finishes
    /// every I/O in flight, nothing is lost or torn (for a power cut, see
    /// [`DiskConfig::power_cut`]).
    pub time_limit: Option<Duration>,
    /// The ABI version written into the boot information. Only for testing
    /// the guest's version check: the default is `abi::ABI_VERSION`.
    pub abi_version: u32,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vcpus: 1,
            memory: DEFAULT_MEMORY,
            args: Vec::new(),
            kvm_device: PathBuf::from("/dev/kvm"),
            echo_console: true,
            capture_console: false,
            files: Vec::new(),
            disk: None,
            net: None,
            time_limit: None,
            abi_version: dbos_abi::ABI_VERSION,
        }
    }
}

/// Why a VM could not be created or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{} does not exist: this host has no KVM (load the kvm module for the CPU, or kvm_pvm)", .path.display())]
    KvmMissing { path: PathBuf },
    #[error("permission denied opening {}: run as root or add the user to the group that owns it (usually 'kvm')", .path.display())]
    KvmPermission { path: PathBuf },
    #[error("cannot open {}: {source}", .path.display())]
    KvmOpen {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version {0} is not supported (12 is required)")]
    KvmApiVersion(i32),
    #[error(
        "{} is not a KVM device: KVM_GET_API_VERSION failed ({source}); \
         pass the KVM device, usually /dev/kvm", .path.display()
    )]
    NotKvm {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KVM call {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot read guest image {}: {source}", .path.display())]
    ImageRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid guest image {}: {source}", .path.display())]
    Elf { path: PathBuf, source: ElfError },
    #[error(
        "cannot use guest image {}: it is {kind}, not a regular file (an ELF executable)",
        .path.display()
    )]
    ImageNotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "guest image {} is {size} bytes, larger than the {limit} bytes an image may have \
         here (the guest memory, at most the {IMAGE_PHYS_MAX}-byte image window)",
        .path.display()
    )]
    ImageTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "guest memory of {requested} bytes is more than this host can provide: \
         {provided} bytes ({what})"
    )]
    MemoryExceedsHost {
        requested: u64,
        provided: u64,
        what: &'static str,
    },
    #[error(transparent)]
    MemoryTooSmall(#[from] MemoryTooSmall),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    File(#[from] FileOpenError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// A created VM, ready to run.
pub struct Vm {
    // Field order is drop order: the vCPUs and the VM go before the memory
    // they have mapped.
    vcpus: Vec<VcpuFd>,
    /// Shared with the disk's poller, which sends completion interrupts
    /// through it (`KVM_SIGNAL_MSI`).
    _vm: Arc<VmFd>,
    _kvm: Kvm,
    ram: Arc<GuestRam>,
    config: VmConfig,
    layout: Layout,
    files: Files,
    disk: Option<Disk>,
    net: Option<Network>,
    kvm_stats: Result<Vec<VcpuStats>, String>,
    started: Instant,
}

impl Vm {
    /// Reads, validates and loads the image at `path`, and creates the VM.
    /// Only a regular file no larger than the guest memory (and the image
    /// window) is read.
    pub fn from_file(path: &Path, config: VmConfig) -> Result<Vm, VmError> {
        let bytes = read_image(path, config.memory.min(IMAGE_PHYS_MAX))?;
        Self::new(&bytes, config).map_err(|e| match e {
            VmError::Elf { source, .. } => VmError::Elf {
                path: path.into(),
                source,
            },
            other => other,
        })
    }

    /// Creates a VM running the guest image `image` (the bytes of an ELF file).
    pub fn new(image: &[u8], config: VmConfig) -> Result<Vm, VmError> {
        check_config(&config)?;
        let started = Instant::now();
        let (image, layout) = plan(image, &config)?;
        let kvm = open_kvm(&config.kvm_device)?;
        let vm = Arc::new(create_vm(&kvm)?);
        if let Err(e) = vm.set_tss_address(0xfffb_d000) {
            log::debug!("KVM_SET_TSS_ADDR failed ({e}); not needed for a long-mode guest");
        }
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let ram = map_ram(&vm, &layout)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let nx = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 20) != 0);
        let boot: BootState = boot::write_boot_state(
            &ram,
            &layout,
            &image,
            &config.args,
            config.vcpus,
            config.abi_version,
            nx,
        )?;
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let stack = layout.stack_top(index);
            vcpu::setup(&fd, index, &cpuid, &boot, image.entry, stack, nx)
                .map_err(kvm_err("vCPU register setup"))?;
            vcpus.push(fd);
        }
        // KVM's per-vCPU statistics, when this KVM offers them: not being
        // able to read them is reported as such, never as zero exits.
        let kvm_stats = vcpus
            .iter()
            .map(|fd| VcpuStats::open(&kvm, fd))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string());
        if let Err(reason) = &kvm_stats {
            log::debug!("KVM's statistics cannot be read: {reason}");
        }
        log::debug!(
            "VM created: {} vCPU(s), {} MiB, image [{:#x}, {:#x}), heap [{:#x}, {:#x})",
            config.vcpus,
            config.memory >> 20,
            layout.image.start,
            layout.image.end,
            layout.heap.start,
            layout.heap.end
        );
        // The network first: its listeners bind before the disk and the
        // files are opened (a failure after them would have to undo them).
        let net = config
            .net
            .as_ref()
            .map(|n| Network::start(n, &ram, Some(interrupt_sender(&vm))))
            .transpose()?;
        let (disk, files) = open_host_files(&config, &ram, interrupt_sender(&vm))?;
        Ok(Vm {
            vcpus,
            _vm: vm,
            _kvm: kvm,
            ram,
            config,
            layout,
            files,
            disk,
            net,
            kvm_stats,
            started,
        })
    }

    /// The planned guest-physical layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The addresses the network listens on (with the ports the kernel
    /// chose for port 0), listener 0 first; empty without `--listen`.
    pub fn listen_addrs(&self) -> &[std::net::SocketAddr] {
        self.net.as_ref().map_or(&[], Network::addrs)
    }

    /// Runs the guest until it stops, and reports how.
    pub fn run(mut self) -> Result<RunReport, VmError> {
        install_kick_handler();
        let setup = self.started.elapsed();
        log::debug!("VM set up in {setup:?}");
        let shared = Arc::new(Shared {
            ram: self.ram.clone(),
            console: Console::new(
                self.config.vcpus,
                self.config.echo_console,
                self.config.capture_console,
            ),
            started: self.started,
            vmm_exits: AtomicU64::new(0),
            stats_calls: AtomicU64::new(0),
            kvm_stats: std::mem::replace(&mut self.kvm_stats, Err(String::new())),
            files: std::mem::take(&mut self.files),
            disk: self.disk.take(),
            net: self.net.take(),
            stopping: AtomicBool::new(false),
            exit: Mutex::new(None),
            stopped: Condvar::new(),
        });
        // A power cut at a disk write is made by the disk's poller thread,
        // which stops the VM before the guest can see the write fail. Weak:
        // the disk belongs to `shared`.
        if let Some(disk) = &shared.disk {
            let weak = Arc::downgrade(&shared);
            disk.on_power_cut(move |_| {
                if let Some(shared) = weak.upgrade() {
                    shared.power_cut_by_disk();
                }
            });
        }
        let threads = spawn_vcpus(&shared, self.vcpus.drain(..));
        let exit = wait_for_stop(&shared, self.config.time_limit);
        let elapsed = shared.started.elapsed();
        let (vmm_exits, vmm_exits_per_vcpu) = stop_vcpus(threads);
        // Read after every vCPU has left KVM_RUN: the final counts.
        let kvm = kvm_stats_of(&shared.kvm_stats);
        shared.console.flush();
        // Before the disk goes: its ring's registrations, if any, still
        // count as pinned.
        let memory = crate::memory::ProcessMemory::read();
        let disk_cpu = shared.disk.as_ref().and_then(Disk::poller_cpu_time);
        let disk = shared.disk.as_ref().map(Disk::stop).transpose()?.flatten();
        // Closes every client connection and stops the poller.
        let net = shared.net.as_ref().and_then(Network::stop);
        let power_cut_model = shared.disk.as_ref().and_then(Disk::power_cut_stats);
        let io_error = shared.disk.as_ref().and_then(Disk::io_error_report);
        Ok(RunReport {
            exit,
            vmm_exits,
            vmm_exits_per_vcpu,
            kvm,
            elapsed,
            setup,
            memory,
            console: shared.console.captured(),
            disk,
            disk_cpu,
            power_cut_model,
            io_error,
            net,
        })
    }
}

/// Refuses a configuration no VM can have (before anything is created).
fn check_config(config: &VmConfig) -> Result<(), VmError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmError::Config(format!(
            "{} vCPUs requested, 1 to {MAX_VCPUS} are supported",
            config.vcpus
        )));
    }
    if !config.memory.is_multiple_of(PAGE) || config.memory > MAX_MEMORY {
        return Err(VmError::Config(format!(
            "memory size {} is not a multiple of 4 KiB of at most {MAX_MEMORY} bytes",
            config.memory
        )));
    }
    if let Some(name) = crate::files::duplicate_name(&config.files) {
        return Err(VmError::Config(format!(
            "file name {name:?} is granted more than once"
        )));
    }
    let arg_bytes = boot::args_size(&config.args);
    if arg_bytes > MAX_ARGS_BYTES {
        return Err(VmError::Config(format!(
            "the guest arguments take {arg_bytes} bytes, more than the \
             {MAX_ARGS_BYTES}-byte limit"
        )));
    }
    check_host_memory(config.memory, &crate::memory::HostMemory::read())
}

/// Parses the image and plans guest memory around it. First the image on
/// its own, then against this VM's memory: a memory size that could never
/// hold the image is "memory too small", an image linked beyond a memory
/// that could hold it is an image error.
fn plan(image: &[u8], config: &VmConfig) -> Result<(Image, Layout), VmError> {
    let elf_err = |source| VmError::Elf {
        path: PathBuf::new(),
        source,
    };
    let image = Image::parse(image).map_err(elf_err)?;
    let required = Layout::minimum_memory(&image, config.vcpus);
    if config.memory < required {
        return Err(MemoryTooSmall {
            requested: config.memory,
            required,
            vcpus: config.vcpus,
        }
        .into());
    }
    let image = image
        .within(config.memory.min(dbos_abi::LOW_RAM_END))
        .map_err(elf_err)?;
    let layout = Layout::plan(config.memory, &image, config.vcpus)?;
    Ok((image, layout))
}

/// Allocates guest RAM for `layout` and maps it into `vm`.
fn map_ram(vm: &VmFd, layout: &Layout) -> Result<Arc<GuestRam>, VmError> {
    let ram = Arc::new(GuestRam::new(&layout.ram)?);
    for (slot, region) in ram.host_regions().iter().enumerate() {
        let spec = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the host range is a live mapping owned by `ram`, which
        // the `Vm` keeps alive until after the VM fd is closed (field
        // order), and guest ranges do not overlap.
        unsafe { vm.set_user_memory_region(spec) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(ram)
}

/// Starts the disk and opens the granted files, last, so that no earlier
/// failure leaves files they created behind; if the files fail, a disk
/// file this setup created goes too.
fn open_host_files(
    config: &VmConfig,
    ram: &Arc<GuestRam>,
    interrupts: InterruptSender,
) -> Result<(Option<Disk>, Files), VmError> {
    let disk = config
        .disk
        .as_ref()
        .map(|d| Disk::start(d, ram, Some(interrupts)))
        .transpose()?;
    match Files::open(&config.files) {
        Ok(files) => Ok((disk, files)),
        Err(e) => {
            if let Some(disk) = disk {
                disk.discard();
            }
            Err(e.into())
        }
    }
}

/// Sends fixed interrupt `vector` to vCPU `cpu` (its x2APIC id) as an MSI
/// (`KVM_SIGNAL_MSI`), from any thread: how the disk's poller wakes a
/// guest CPU that sleeps until a completion arrives.
fn interrupt_sender(vm: &Arc<VmFd>) -> InterruptSender {
    let vm = vm.clone();
    Arc::new(move |cpu: u32, vector: u8| {
        let msi = kvm_bindings::kvm_msi {
            // Destination in bits 19:12 of the address (physical mode,
            // fixed delivery), the vector in the data.
            address_lo: 0xfee0_0000 | ((cpu & 0xff) << 12),
            data: u32::from(vector),
            ..Default::default()
        };
        if let Err(e) = vm.signal_msi(msi) {
            log::warn!("sending completion interrupt {vector} to vCPU {cpu} failed: {e}");
        }
    })
}

/// Starts one thread per vCPU; a thread that cannot start stops the guest.
fn spawn_vcpus(
    shared: &Arc<Shared>,
    vcpus: impl Iterator<Item = VcpuFd>,
) -> Vec<std::thread::JoinHandle<ExitCounts>> {
    let mut threads = Vec::new();
    for (index, fd) in vcpus.enumerate() {
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu::run(index as u32, fd, &thread_shared));
        match handle {
            Ok(h) => threads.push(h),
            Err(e) => {
                shared.stop_with(GuestExit::Crashed {
                    vcpu: index as u32,
                    reason: VmError::Thread(e).to_string(),
                    regs: None,
                });
                break;
            }
        }
    }
    threads
}

/// Waits until the guest stops, or until the time limit or a power cut at
/// a moment (whichever comes first; the cut cuts the disk's power first)
/// stops it; returns how it stopped.
fn wait_for_stop(shared: &Shared, time_limit: Option<Duration>) -> GuestExit {
    let cut_after = match shared.disk.as_ref().and_then(Disk::power_cut_plan) {
        Some(PowerCutPlan {
            at: CutAt::After(after),
            ..
        }) => Some(after),
        _ => None,
    };
    let deadline = match (time_limit, cut_after) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut slot = shared.exit.lock().unwrap_or_else(|p| p.into_inner());
    while slot.is_none() {
        match deadline {
            None => slot = shared.stopped.wait(slot).unwrap_or_else(|p| p.into_inner()),
            Some(limit) => {
                let left = limit.saturating_sub(shared.started.elapsed());
                if left.is_zero() {
                    // Recorded like any other stop (a power cut, if it is
                    // this moment's or has happened at a write); the vCPUs
                    // are kicked out of KVM_RUN afterwards.
                    if cut_after == Some(limit) {
                        shared.disk.as_ref().and_then(Disk::cut_power);
                    }
                    shared.record(&mut slot, GuestExit::TimedOut { limit });
                    break;
                }
                slot = shared
                    .stopped
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
    slot.clone().expect("loop ends only with an exit recorded")
}

/// Gets every vCPU thread out of its loop and joins it; returns the exits,
/// in all and per vCPU. Other vCPUs may sit in KVM_RUN (in a guest `hlt`,
/// say): they are interrupted with a signal until every thread has left
/// its loop; repeating the kick covers a signal that lands just before
/// KVM_RUN starts.
fn stop_vcpus(threads: Vec<std::thread::JoinHandle<ExitCounts>>) -> (ExitCounts, Vec<ExitCounts>) {
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread is still running (not joined), so its
            // pthread handle is valid; the signal's handler does nothing.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut exits = ExitCounts::default();
    let mut exits_per_vcpu = Vec::new();
    for t in threads {
        let counts = t.join().unwrap_or_default();
        exits.add(&counts);
        exits_per_vcpu.push(counts);
    }
    (exits, exits_per_vcpu)
}

/// KVM's counters of every vCPU now, summed, or why they are not there.
fn kvm_stats_of(stats: &Result<Vec<VcpuStats>, String>) -> KvmStats {
    let read = stats.as_ref().map_err(Clone::clone).and_then(|vcpus| {
        vcpus
            .iter()
            .map(|s| s.read().map_err(|e| e.to_string()))
            .collect::<Result<Vec<KvmCounts>, String>>()
    });
    match read {
        Ok(per_vcpu) => {
            let mut total = KvmCounts::default();
            for c in &per_vcpu {
                total.add(c);
            }
            KvmStats::Available { total, per_vcpu }
        }
        Err(reason) => KvmStats::Unavailable { reason },
    }
}

/// All VM exits KVM has counted on every vCPU so far, if it can say.
pub(crate) fn kvm_exits_now(stats: &Result<Vec<VcpuStats>, String>) -> Option<u64> {
    let vcpus = stats.as_ref().ok()?;
    vcpus
        .iter()
        .map(|s| s.read().ok().map(|c| c.exits))
        .sum::<Option<u64>>()
}

/// `KVM_CREATE_VM`, retried while it reports EINTR: it is interruptible, and
/// here it was seen to fail that way while a previous VM of the process was
/// still being torn down.
fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let mut tries = 0;
    loop {
        match kvm.create_vm() {
            Err(e) if e.errno() == libc::EINTR && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map_err(kvm_err("KVM_CREATE_VM")),
        }
    }
}

fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::Config(format!(
            "KVM device path {} contains a NUL byte",
            path.display()
        ))
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|source| match source.errno() {
        libc::ENOENT => VmError::KvmMissing { path: path.into() },
        libc::EACCES | libc::EPERM => VmError::KvmPermission { path: path.into() },
        _ => VmError::KvmOpen {
            path: path.into(),
            source,
        },
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        // The ioctl failed: the device opened, but it is not KVM.
        return Err(VmError::NotKvm {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    if version != 12 {
        return Err(VmError::KvmApiVersion(version));
    }
    Ok(kvm)
}

/// Reads the guest image at `path`: a regular file of at most `limit` bytes.
/// Anything else (a directory, a FIFO, a device such as /dev/zero) is refused
/// before a byte is read; the read itself is bounded too, in case the file
/// grows meanwhile. A FIFO is opened without blocking for a writer.
fn read_image(path: &Path, limit: u64) -> Result<Vec<u8>, VmError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io_err = |source| VmError::ImageRead {
        path: path.into(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let kind = meta.file_type();
    let not_a_file = |kind| VmError::ImageNotAFile {
        path: path.into(),
        kind,
    };
    if kind.is_dir() {
        return Err(not_a_file("a directory"));
    } else if kind.is_fifo() {
        return Err(not_a_file("a FIFO"));
    } else if kind.is_char_device() {
        return Err(not_a_file("a character device"));
    } else if kind.is_block_device() {
        return Err(not_a_file("a block device"));
    } else if kind.is_socket() {
        return Err(not_a_file("a socket"));
    } else if !kind.is_file() {
        return Err(not_a_file("an unknown kind of file"));
    }
    let too_large = |size| VmError::ImageTooLarge {
        path: path.into(),
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Refuses guest memory larger than the host could ever back.
fn check_host_memory(requested: u64, host: &crate::memory::HostMemory) -> Result<(), VmError> {
    match host.provides() {
        Some(provided) if requested > provided => Err(VmError::MemoryExceedsHost {
            requested,
            provided,
            what: "its RAM plus swap, MemTotal + SwapTotal in /proc/meminfo",
        }),
        _ => Ok(()),
    }
}

/// The signal used to interrupt a vCPU thread's `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for
        // a real-time signal this process uses for nothing else; no SA_RESTART,
        // so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = kick_handler as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}
