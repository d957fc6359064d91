//! Which VMM service serves which hypercall: [`Services`] reads a call's
//! argument block as the call's own type ([`dbos_abi::Args`], one table in
//! `dbos-abi` ties every call to its block) and hands the decoded request
//! to the one service method for it (console, control, clock, host files,
//! disk, network: one module each). The services see [`Request`] and their block,
//! never a call number to match again, and do not know this module.

use crate::clock::Clock;
use crate::console::Console;
use crate::control::Control;
use crate::disk::DiskService;
use crate::files::Files;
use crate::hypercall::{HypercallError, Outcome, Request};
use crate::memory::GuestRam;
use crate::net::NetService;
use dbos_abi::{Args, GuestPhysAddr, Hypercall};

/// Every service of one VM.
pub struct Services<'a> {
    pub ram: &'a GuestRam,
    pub console: &'a Console,
    pub control: Control<'a>,
    pub clock: Clock,
    pub files: &'a Files,
    pub disk: DiskService<'a>,
    pub net: NetService<'a>,
}

impl Services<'_> {
    /// Serves `call` from `vcpu` with its argument block at `block`.
    pub fn handle(
        &self,
        vcpu: u32,
        call: Hypercall,
        block: GuestPhysAddr,
    ) -> Result<Outcome, HypercallError> {
        let req = Request::new(vcpu, call, block, self.ram);
        match Args::read(call, &mut &req)? {
            Args::Console(a) => self.console.serve(&req, a),
            Args::Exit(a) => Ok(self.control.exit(a)),
            Args::Panic(a) => self.control.panic(&req, a),
            Args::Fault(a) => self.control.fault(&req, a),
            Args::Stats(a) => self.control.stats(&req, a),
            Args::Clock(a) => self.clock.serve(&req, a),
            Args::FileOpen(a) => self.files.open_call(&req, a),
            Args::FileRead(a) => self.files.read_call(&req, a),
            Args::FileWrite(a) => self.files.write_call(&req, a),
            Args::FileFlush(a) => self.files.flush_call(&req, a),
            Args::FileSize(a) => self.files.size_call(&req, a),
            Args::NvmeInfo(a) => self.disk.info(&req, a),
            Args::NvmeCreateQueue(a) => self.disk.create_queue(&req, a),
            Args::NvmeDoorbell(_) => Ok(self.disk.doorbell()),
            Args::DmaDeclare(a) => self.disk.declare_region(&req, a),
            Args::DmaRelease(a) => self.disk.release_region(&req, a),
            Args::DmaStats(a) => self.disk.dma_stats(&req, a),
            Args::NvmeDestroyQueue(a) => self.disk.destroy_queue(&req, a),
            Args::NetInfo(a) => self.net.info(&req, a),
            Args::NetCreateQueue(a) => self.net.create_queue(&req, a),
            Args::NetDoorbell(_) => Ok(self.net.doorbell()),
            Args::NetDestroyQueue(a) => self.net.destroy_queue(&req, a),
            Args::NetStats(a) => self.net.stats(&req, a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::HypercallError;
    use crate::layout::Range;
    use dbos_abi::{
        ClockArgs, ConsoleArgs, FileIoArgs, FileOpenArgs, GuestBuf, PanicArgs, MAX_FILE_IO,
    };
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    static EXITS: AtomicU64 = AtomicU64::new(0);
    static STATS: AtomicU64 = AtomicU64::new(0);
    static KVM: Result<Vec<crate::kvmstats::VcpuStats>, String> = Err(String::new());

    fn services<'a>(ram: &'a GuestRam, console: &'a Console) -> Services<'a> {
        static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
        Services {
            ram,
            console,
            control: Control {
                vmm_exits: &EXITS,
                stats_calls: &STATS,
                kvm_stats: &KVM,
            },
            clock: Clock::new(Instant::now()),
            files: FILES.get_or_init(Files::default),
            disk: DiskService { disk: None },
            net: NetService { net: None },
        }
    }

    /// 64 KiB of RAM at 0 and 64 KiB at 5 GiB (above the 32-bit range).
    const HIGH: u64 = 5 << 30;

    fn setup() -> (GuestRam, Console) {
        (
            GuestRam::new(&[
                Range {
                    start: 0,
                    end: 0x10000,
                },
                Range {
                    start: HIGH,
                    end: HIGH + 0x10000,
                },
            ])
            .unwrap(),
            Console::new(1, false, true),
        )
    }

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr(a)
    }

    fn text(addr: u64, len: u64) -> GuestBuf {
        GuestBuf {
            addr: gpa(addr),
            len,
        }
    }

    #[test]
    fn console_and_clock_anywhere_in_ram() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        ram.write(HIGH + 0x2000, b"hi there\n").unwrap();
        ram.write_pod(
            HIGH + 0x1000,
            &ConsoleArgs {
                text: text(HIGH + 0x2000, 9),
            },
        )
        .unwrap();
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(HIGH + 0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(console.captured(), vec!["[vcpu0] hi there"]);

        ram.write_pod(0x1100, &ClockArgs::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        services.handle(0, Hypercall::Clock, gpa(0x1100)).unwrap();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let clock: ClockArgs = ram.read_pod(0x1100).unwrap();
        assert!(clock.nanos >= 2_000_000);
        assert!((before..=after).contains(&clock.unix_nanos));
    }

    #[test]
    fn hostile_arguments_are_rejected() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(0xfff8)),
            Err(HypercallError::BadArgs {
                call: Hypercall::Console,
                addr: gpa(0xfff8)
            })
        );
        // Between the two RAM ranges, and past the end of the high one.
        for addr in [0x1_0000, HIGH + 0xfffc, u64::MAX - 4] {
            assert_eq!(
                services.handle(0, Hypercall::Exit, gpa(addr)),
                Err(HypercallError::BadArgs {
                    call: Hypercall::Exit,
                    addr: gpa(addr)
                })
            );
        }
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: text(1 << 40, 16),
            },
        )
        .unwrap();
        assert_eq!(
            services.handle(0, Hypercall::Console, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::Console,
                what: "text",
                addr: gpa(1 << 40),
                len: 16
            })
        );
        ram.write_pod(
            0x1000,
            &ConsoleArgs {
                text: text(0x2000, u64::MAX),
            },
        )
        .unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::Console, gpa(0x1000)),
            Err(HypercallError::TooLong { .. })
        ));
        ram.write_pod(
            0x1000,
            &PanicArgs {
                message: text(0xff00, 0x200),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::Panic, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                what: "message",
                ..
            })
        ));
        assert!(console.captured().is_empty());
    }

    #[test]
    fn file_calls_check_buffers_and_handles() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        // No file is authorised: any name is ENOENT.
        ram.write(0x2000, b"data").unwrap();
        ram.write_pod(
            0x1000,
            &FileOpenArgs {
                name: text(0x2000, 4),
                status: 0,
            },
        )
        .unwrap();
        services
            .handle(0, Hypercall::FileOpen, gpa(0x1000))
            .unwrap();
        assert_eq!(
            ram.read_pod::<FileOpenArgs>(0x1000).unwrap().status,
            -i64::from(libc::ENOENT)
        );
        // A read into a buffer outside guest memory stops the guest.
        let io = FileIoArgs {
            handle: 1,
            offset: 0,
            buf: text(0xff00, 0x1000),
            status: 0,
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            services.handle(0, Hypercall::FileRead, gpa(0x1000)),
            Err(HypercallError::BadBuffer {
                call: Hypercall::FileRead,
                what: "data",
                addr: gpa(0xff00),
                len: 0x1000
            })
        );
        let io = FileIoArgs {
            buf: text(0, MAX_FILE_IO + 1),
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert!(matches!(
            services.handle(0, Hypercall::FileWrite, gpa(0x1000)),
            Err(HypercallError::TooLong {
                call: Hypercall::FileWrite,
                ..
            })
        ));
        // A valid buffer with an unknown handle is an error status, not a stop.
        let io = FileIoArgs {
            buf: text(0x3000, 16),
            ..io
        };
        ram.write_pod(0x1000, &io).unwrap();
        assert_eq!(
            services.handle(0, Hypercall::FileRead, gpa(0x1000)),
            Ok(Outcome::Continue)
        );
        assert_eq!(
            ram.read_pod::<FileIoArgs>(0x1000).unwrap().status,
            -i64::from(libc::EBADF)
        );
    }

    #[test]
    fn disk_calls_without_a_disk() {
        let (ram, console) = setup();
        let services = services(&ram, &console);
        ram.write_pod(
            HIGH,
            &dbos_abi::NvmeQueueArgs {
                queue: dbos_abi::QueueLayout::new(8).unwrap().config(0x4000),
                status: 0,
            },
        )
        .unwrap();
        services
            .handle(0, Hypercall::NvmeCreateQueue, gpa(HIGH))
            .unwrap();
        assert_eq!(
            ram.read_pod::<dbos_abi::NvmeQueueArgs>(HIGH)
                .unwrap()
                .status,
            -i64::from(libc::ENODEV)
        );
        // DMA regions: refused without a disk, and the counters are zero.
        ram.write_pod(
            HIGH,
            &dbos_abi::DmaRegionArgs {
                region: text(0x4000, 0x1000),
                status: 0,
            },
        )
        .unwrap();
        for call in [Hypercall::DmaDeclare, Hypercall::DmaRelease] {
            services.handle(0, call, gpa(HIGH)).unwrap();
            assert_eq!(
                ram.read_pod::<dbos_abi::DmaRegionArgs>(HIGH)
                    .unwrap()
                    .status,
                -i64::from(libc::ENODEV)
            );
        }
        ram.write_pod(
            HIGH,
            &dbos_abi::DmaStatsArgs {
                fixed_ios: 7,
                plain_ios: 7,
                regions: 7,
                bytes: 7,
            },
        )
        .unwrap();
        services.handle(0, Hypercall::DmaStats, gpa(HIGH)).unwrap();
        assert_eq!(
            ram.read_pod::<dbos_abi::DmaStatsArgs>(HIGH).unwrap(),
            dbos_abi::DmaStatsArgs::default()
        );
        // The doorbell reads no block: any address continues.
        assert_eq!(
            services.handle(0, Hypercall::NvmeDoorbell, gpa(u64::MAX)),
            Ok(Outcome::Continue)
        );
    }
}
