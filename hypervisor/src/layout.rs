//! Where everything goes in guest-physical memory, decided before the VM is
//! created (see `dbos_abi::layout` for the contract with the guest).

use crate::elf::Image;
use dbos_abi::{
    MemoryKind, MemoryRegion, BOOT_REGION, BOOT_STACK_SIZE, HEAP_PER_VCPU, HIGH_RAM_START,
    LOW_RAM_END, MAX_MEMORY_REGIONS,
};

/// A 4 KiB page, the unit of the layout.
pub const PAGE: u64 = dbos_abi::PAGE_SIZE;

/// Smallest and largest heap share the layout gives the guest program; in
/// between it is one eighth of RAM. The heap region is this share plus
/// [`HEAP_PER_VCPU`] bytes per vCPU, which the guest library takes at boot.
pub const MIN_HEAP: u64 = 2 << 20;
pub const MAX_HEAP: u64 = 256 << 20;

/// The image size [`MIN_MEMORY`] leaves room for (`hello` takes 56 KiB).
pub const MIN_IMAGE: u64 = 256 << 10;

/// The least guest memory `dbos run --memory` accepts (4608K): boot data,
/// an image of up to [`MIN_IMAGE`] bytes, one vCPU's boot stack and heap,
/// and the smallest heap share. A larger image or more vCPUs need more,
/// which [`Layout::minimum_memory`] tells.
pub const MIN_MEMORY: u64 = BOOT_REGION.1 + MIN_IMAGE + BOOT_STACK_SIZE + HEAP_PER_VCPU + MIN_HEAP;

/// The most guest memory dbos lays out: 1 TiB. (The boot page tables, in
/// the 2 MiB boot region, could not map a much larger direct map anyway.)
pub const MAX_MEMORY: u64 = 1 << 40;

/// A guest-physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The planned guest-physical layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// RAM as guest-physical ranges (one below the 32-bit hole, maybe one above).
    pub ram: Vec<Range>,
    pub boot: Range,
    pub image: Range,
    pub stacks: Range,
    pub heap: Range,
    pub usable: Vec<Range>,
}

/// The requested memory cannot hold the image, boot stacks and heap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "guest memory too small for {vcpus} vCPU(s) (need {required} bytes, {requested} requested): \
     boot data, the image, per vCPU a {BOOT_STACK_SIZE}-byte boot stack and {HEAP_PER_VCPU} \
     bytes of heap, and a {MIN_HEAP}-byte heap for the program"
)]
pub struct MemoryTooSmall {
    pub requested: u64,
    pub required: u64,
    pub vcpus: u32,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Layout {
    /// Plans the layout for `memory` bytes of RAM (a multiple of 4 KiB), the
    /// given image and `vcpus` vCPUs.
    pub fn plan(memory: u64, image: &Image, vcpus: u32) -> Result<Layout, MemoryTooSmall> {
        let low_end = memory.min(LOW_RAM_END);
        let mut ram = vec![Range {
            start: 0,
            end: low_end,
        }];
        if memory > LOW_RAM_END {
            ram.push(Range {
                start: HIGH_RAM_START,
                end: HIGH_RAM_START + (memory - LOW_RAM_END),
            });
        }
        let image_start = image
            .segments
            .iter()
            .map(|s| s.phys)
            .min()
            .unwrap_or(BOOT_REGION.1);
        let image = Range {
            start: image_start & !(PAGE - 1),
            end: align_up(image.phys_end(), PAGE),
        };
        let stacks = Range {
            start: image.end,
            end: image.end + u64::from(vcpus) * BOOT_STACK_SIZE,
        };
        // The program's share is an eighth of RAM within [MIN_HEAP, MAX_HEAP],
        // less if that is what fits below the hole (but never below MIN_HEAP),
        // so that the least memory that fits is exactly `required` below.
        let per_vcpu = u64::from(vcpus) * HEAP_PER_VCPU;
        let room = low_end.saturating_sub(stacks.end + per_vcpu) & !(PAGE - 1);
        let share = align_up((memory / 8).clamp(MIN_HEAP, MAX_HEAP), PAGE).min(room);
        let heap = Range {
            start: stacks.end,
            end: stacks.end + share.max(MIN_HEAP) + per_vcpu,
        };
        if share < MIN_HEAP || heap.end > low_end {
            // Boot data, image, stacks and heap all live below the hole.
            return Err(MemoryTooSmall {
                requested: memory,
                required: stacks.end + MIN_HEAP + u64::from(vcpus) * HEAP_PER_VCPU,
                vcpus,
            });
        }
        let mut usable = Vec::new();
        if heap.end < low_end {
            usable.push(Range {
                start: heap.end,
                end: low_end,
            });
        }
        usable.extend(ram.iter().skip(1).copied());
        Ok(Layout {
            ram,
            boot: Range {
                start: BOOT_REGION.0,
                end: BOOT_REGION.1,
            },
            image,
            stacks,
            heap,
            usable,
        })
    }

    /// The least memory any layout of `image` with `vcpus` vCPUs needs, were
    /// the image packed at the lowest load address.
    pub fn minimum_memory(image: &Image, vcpus: u32) -> u64 {
        BOOT_REGION.1
            + image.packed_size()
            + u64::from(vcpus) * (BOOT_STACK_SIZE + HEAP_PER_VCPU)
            + MIN_HEAP
    }

    /// Total RAM bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(Range::len).sum()
    }

    /// End of the highest RAM range.
    pub fn ram_end(&self) -> u64 {
        self.ram.last().map_or(0, |r| r.end)
    }

    /// The memory map handed to the guest, sorted by address.
    pub fn memory_map(&self) -> Vec<MemoryRegion> {
        let mut map = vec![
            region(self.boot, MemoryKind::BootData),
            region(self.image, MemoryKind::Image),
            region(self.stacks, MemoryKind::BootStacks),
            region(self.heap, MemoryKind::Heap),
        ];
        map.extend(self.usable.iter().map(|r| region(*r, MemoryKind::Usable)));
        map.retain(|r| r.len > 0);
        map.sort_by_key(|r| r.start);
        debug_assert!(map.len() <= MAX_MEMORY_REGIONS);
        map
    }

    /// Top of vCPU `cpu`'s boot stack (guest-physical, exclusive).
    pub fn stack_top(&self, cpu: u32) -> u64 {
        self.stacks.start + (u64::from(cpu) + 1) * BOOT_STACK_SIZE
    }
}

fn region(r: Range, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion {
        start: r.start,
        len: r.len(),
        kind: kind as u32,
        _reserved: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::Segment;

    fn image(start: u64, size: u64) -> Image {
        Image {
            entry: dbos_abi::IMAGE_BASE + start,
            segments: vec![Segment {
                phys: start,
                mem_size: size,
                data: vec![],
                writable: false,
                executable: true,
            }],
        }
    }

    #[test]
    fn small_vm_layout() {
        let l = Layout::plan(64 << 20, &image(0x20_0000, 0x1_2345), 2).unwrap();
        assert_eq!(
            l.ram,
            vec![Range {
                start: 0,
                end: 64 << 20
            }]
        );
        assert_eq!(
            l.image,
            Range {
                start: 0x20_0000,
                end: 0x21_3000
            }
        );
        assert_eq!(
            l.stacks,
            Range {
                start: 0x21_3000,
                end: 0x23_3000
            }
        );
        assert_eq!(
            l.heap,
            Range {
                start: 0x23_3000,
                end: 0x23_3000 + (8 << 20) + 2 * HEAP_PER_VCPU
            }
        );
        assert_eq!(
            l.usable,
            vec![Range {
                start: l.heap.end,
                end: 64 << 20
            }]
        );
        assert_eq!(l.stack_top(1), 0x23_3000);
        let map = l.memory_map();
        assert_eq!(map.len(), 5);
        assert!(map.windows(2).all(|w| w[0].end() <= w[1].start));
    }

    #[test]
    fn memory_above_the_hole() {
        let l = Layout::plan(4 << 30, &image(0x20_0000, 0x1000), 1).unwrap();
        assert_eq!(
            l.ram[1],
            Range {
                start: HIGH_RAM_START,
                end: HIGH_RAM_START + (1 << 30)
            }
        );
        assert_eq!(l.ram_bytes(), 4 << 30);
        assert_eq!(l.heap.len(), MAX_HEAP + HEAP_PER_VCPU);
        assert_eq!(l.usable.len(), 2);
    }

    #[test]
    fn too_small() {
        let err = Layout::plan(3 << 20, &image(0x20_0000, 0x10_0000), 1).unwrap_err();
        assert_eq!(err.requested, 3 << 20);
        assert_eq!(
            err.required,
            0x30_0000 + BOOT_STACK_SIZE + MIN_HEAP + HEAP_PER_VCPU
        );
    }

    #[test]
    fn the_heap_grows_with_the_vcpus() {
        // 32 MiB: a 4 MiB share for the program, whatever the vCPU count.
        for vcpus in [1, 16, 64] {
            let l = Layout::plan(32 << 20, &image(0x20_0000, 0x1000), vcpus).unwrap();
            assert_eq!(
                l.heap.len(),
                (4 << 20) + u64::from(vcpus) * HEAP_PER_VCPU,
                "{vcpus} vCPUs"
            );
        }
        let err = Layout::plan(16 << 20, &image(0x20_0000, 0x1000), 64).unwrap_err();
        assert_eq!(err.vcpus, 64);
        assert!(
            err.to_string()
                .starts_with("guest memory too small for 64 vCPU(s) (need "),
            "{err}"
        );
        assert_eq!(
            MIN_MEMORY,
            Layout::minimum_memory(&image(0x20_0000, MIN_IMAGE), 1)
        );
        // The memory the error asks for is enough.
        let l = Layout::plan(err.required, &image(0x20_0000, 0x1000), 64).unwrap();
        assert_eq!(l.heap.end, err.required);
        assert_eq!(l.heap.len(), MIN_HEAP + 64 * HEAP_PER_VCPU);
        assert!(Layout::plan(err.required - PAGE, &image(0x20_0000, 0x1000), 64).is_err());
    }
}
