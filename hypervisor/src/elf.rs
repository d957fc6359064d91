//! Loading a static ELF64 guest image.
//!
//! A dbos guest is an `ET_EXEC`, x86-64, little-endian ELF64 file whose
//! loadable segments are linked in the image window (`IMAGE_BASE + p`) and
//! loaded at guest-physical `p` (see `dbos_abi::layout` and `libdbos/guest.ld`).
//! Everything else is rejected here, before any guest memory is touched.

use dbos_abi::{IMAGE_BASE, IMAGE_PHYS_MAX, IMAGE_PHYS_MIN};
use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EM_X86_64, ET_EXEC};
use goblin::elf::program_header::{ProgramHeader, PF_W, PF_X, PT_LOAD, PT_NOTE};
use goblin::elf::Elf;

/// Why an image was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("truncated ELF file: {0}")]
    Truncated(String),
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    #[error("wrong ELF class: a dbos guest must be ELF64, this is ELF32")]
    WrongClass,
    #[error("wrong byte order: a dbos guest must be little-endian")]
    WrongEndianness,
    #[error("wrong machine: a dbos guest must be x86-64 (e_machine 62), this is e_machine {0}")]
    WrongMachine(u16),
    #[error(
        "wrong ELF type {0}{note}: a dbos guest must be a static executable (ET_EXEC), linked with \
         libdbos/guest.ld and --no-pie; in a cargo project, a build.rs that calls \
         libdbos_build::link_guest() (build-dependency libdbos-build, in the dbos checkout) \
         does both when it builds for x86_64-unknown-none, as the projects `dbos new` makes do",
        note = elf_type_note(.0)
    )]
    NotExecutable(u16),
    #[error("no loadable segment")]
    NoSegments,
    #[error(
        "segment {index} at virtual {vaddr:#x} is outside the image window \
         [{IMAGE_BASE:#x}, {:#x}); link the guest with libdbos/guest.ld (in a cargo project: \
         a build.rs that calls libdbos_build::link_guest())",
        IMAGE_BASE + IMAGE_PHYS_MAX
    )]
    SegmentOutsideWindow { index: usize, vaddr: u64 },
    #[error("segment {index} has physical address {paddr:#x} but virtual {vaddr:#x}; a dbos image needs vaddr = {IMAGE_BASE:#x} + paddr")]
    SegmentAddressMismatch {
        index: usize,
        vaddr: u64,
        paddr: u64,
    },
    #[error(
        "segment {index} [{start:#x}, {end:#x}) lies outside guest memory available to the image \
         [{IMAGE_PHYS_MIN:#x}, {limit:#x})"
    )]
    SegmentOutsideMemory {
        index: usize,
        start: u64,
        end: u64,
        limit: u64,
    },
    #[error("segment {index} has a file size {filesz} larger than its memory size {memsz}")]
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segments {0} and {1} overlap")]
    OverlappingSegments(usize, usize),
    #[error("entry point {0:#x} is not inside an executable segment")]
    BadEntry(u64),
    #[error(
        "the image has no dbos ABI version note ({}): link it with libdbos and libdbos/guest.ld \
         (images built before ABI version 2 have none); this dbos provides ABI version {}",
        dbos_abi::note::SECTION,
        dbos_abi::ABI_VERSION
    )]
    NoAbiNote,
    #[error(
        "the image was built for dbos ABI version {image}, but this dbos provides version {vmm}: \
         rebuild the guest against the libdbos of this dbos"
    )]
    AbiVersion { image: u32, vmm: u32 },
}

/// What an ELF type other than `ET_EXEC` most likely is, for the error.
fn elf_type_note(e_type: &u16) -> &'static str {
    match *e_type {
        goblin::elf::header::ET_DYN => " (ET_DYN: a position-independent executable)",
        goblin::elf::header::ET_REL => " (ET_REL: an object file, not linked)",
        _ => "",
    }
}

/// A loadable segment, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub phys: u64,
    /// Bytes in memory (the tail past `data` is zero).
    pub mem_size: u64,
    /// Contents from the file.
    pub data: Vec<u8>,
    pub writable: bool,
    pub executable: bool,
}

impl Segment {
    pub fn phys_end(&self) -> u64 {
        self.phys + self.mem_size
    }
}

/// A validated guest image, ready to be copied into guest memory.
#[derive(Clone, Debug)]
pub struct Image {
    /// Virtual entry point.
    pub entry: u64,
    pub segments: Vec<Segment>,
}

impl Image {
    /// Checks that every segment ends below guest-physical `phys_limit`.
    pub fn within(self, phys_limit: u64) -> Result<Image, ElfError> {
        let limit = phys_limit.min(IMAGE_PHYS_MAX);
        if let Some((index, s)) = self
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| s.phys_end() > limit)
        {
            return Err(ElfError::SegmentOutsideMemory {
                index,
                start: s.phys,
                end: s.phys_end(),
                limit,
            });
        }
        Ok(self)
    }

    /// Bytes of memory the segments occupy, page-rounded.
    pub fn packed_size(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.mem_size.div_ceil(4096) * 4096)
            .sum()
    }

    /// Guest-physical end of the highest segment (exclusive).
    pub fn phys_end(&self) -> u64 {
        self.segments
            .iter()
            .map(Segment::phys_end)
            .max()
            .unwrap_or(IMAGE_PHYS_MIN)
    }

    /// Parses and validates `bytes` as a dbos guest image. Segments must lie in
    /// `[IMAGE_PHYS_MIN, IMAGE_PHYS_MAX)`; [`Image::within`] then checks them
    /// against a VM's memory.
    pub fn parse(bytes: &[u8]) -> Result<Image, ElfError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if bytes.len() < 64 {
            return Err(ElfError::Truncated(format!(
                "{} bytes is shorter than an ELF64 header (64 bytes)",
                bytes.len()
            )));
        }
        match bytes[4] {
            2 => {}
            1 => return Err(ElfError::WrongClass),
            c => return Err(ElfError::Malformed(format!("unknown ELF class {c}"))),
        }
        if bytes[5] != 1 {
            return Err(ElfError::WrongEndianness);
        }
        let elf = Elf::parse_header(bytes).map_err(|e| ElfError::Malformed(e.to_string()))?;
        if elf.e_machine != EM_X86_64 {
            return Err(ElfError::WrongMachine(elf.e_machine));
        }
        if elf.e_type != ET_EXEC {
            return Err(ElfError::NotExecutable(elf.e_type));
        }
        let ph_end = elf
            .e_phoff
            .saturating_add(u64::from(elf.e_phnum) * u64::from(elf.e_phentsize));
        if ph_end > bytes.len() as u64 {
            return Err(ElfError::Truncated(format!(
                "program headers end at byte {ph_end}, the file has {}",
                bytes.len()
            )));
        }
        let ctx = Ctx::new(Container::Big, Endian::Little);
        let headers =
            ProgramHeader::parse(bytes, elf.e_phoff as usize, usize::from(elf.e_phnum), ctx)
                .map_err(|e| ElfError::Malformed(format!("program headers: {e}")))?;

        let mut segments = Vec::new();
        for (index, ph) in headers.iter().enumerate() {
            if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
                continue;
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(ElfError::FileSizeExceedsMemSize {
                    index,
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                });
            }
            if ph.p_vaddr < IMAGE_BASE {
                return Err(ElfError::SegmentOutsideWindow {
                    index,
                    vaddr: ph.p_vaddr,
                });
            }
            if ph.p_vaddr - IMAGE_BASE != ph.p_paddr {
                return Err(ElfError::SegmentAddressMismatch {
                    index,
                    vaddr: ph.p_vaddr,
                    paddr: ph.p_paddr,
                });
            }
            let start = ph.p_paddr;
            let end = start.saturating_add(ph.p_memsz);
            let limit = IMAGE_PHYS_MAX;
            if start < IMAGE_PHYS_MIN || end > limit {
                return Err(ElfError::SegmentOutsideMemory {
                    index,
                    start,
                    end,
                    limit,
                });
            }
            let file_end = ph.p_offset.saturating_add(ph.p_filesz);
            if file_end > bytes.len() as u64 {
                return Err(ElfError::Truncated(format!(
                    "segment {index} needs file bytes up to {file_end}, the file has {}",
                    bytes.len()
                )));
            }
            segments.push(Segment {
                phys: start,
                mem_size: ph.p_memsz,
                data: bytes[ph.p_offset as usize..file_end as usize].to_vec(),
                writable: ph.p_flags & PF_W != 0,
                executable: ph.p_flags & PF_X != 0,
            });
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        let mut order: Vec<usize> = (0..segments.len()).collect();
        order.sort_by_key(|&i| segments[i].phys);
        for pair in order.windows(2) {
            let (a, b) = (&segments[pair[0]], &segments[pair[1]]);
            if a.phys_end() > b.phys {
                return Err(ElfError::OverlappingSegments(pair[0], pair[1]));
            }
        }
        let entry = elf.e_entry;
        let entry_ok = segments.iter().any(|s| {
            s.executable && (IMAGE_BASE + s.phys..IMAGE_BASE + s.phys_end()).contains(&entry)
        });
        if !entry_ok {
            return Err(ElfError::BadEntry(entry));
        }
        check_abi_note(bytes, &headers)?;
        Ok(Image { entry, segments })
    }
}

/// Finds the ABI version note in the image's `PT_NOTE` segments and checks
/// it against this VMM's [`dbos_abi::ABI_VERSION`].
fn check_abi_note(bytes: &[u8], headers: &[ProgramHeader]) -> Result<(), ElfError> {
    let mut version = None;
    for (index, ph) in headers.iter().enumerate() {
        if ph.p_type != PT_NOTE {
            continue;
        }
        let notes = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| {
                ElfError::Truncated(format!(
                    "note segment {index} needs file bytes up to {}, the file has {}",
                    ph.p_offset.saturating_add(ph.p_filesz),
                    bytes.len()
                ))
            })?;
        version = version.or(dbos_abi::note::find_abi_version(notes));
    }
    let version = version.ok_or(ElfError::NoAbiNote)?;
    if version != dbos_abi::ABI_VERSION {
        return Err(ElfError::AbiVersion {
            image: version,
            vmm: dbos_abi::ABI_VERSION,
        });
    }
    Ok(())
}
