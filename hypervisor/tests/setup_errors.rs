//! Configurations and images the hypervisor must refuse with a specific error
//! before anything runs.

mod common;

use dbos_abi::IMAGE_BASE;
use dbos_hypervisor::elf::ElfError;
use dbos_hypervisor::{guest_image, Vm, VmConfig, VmError};

fn hello() -> Vec<u8> {
    std::fs::read(guest_image("hello")).unwrap()
}

fn elf_error(bytes: &[u8]) -> ElfError {
    match Vm::new(
        bytes,
        VmConfig {
            memory: 64 << 20,
            ..VmConfig::default()
        },
    ) {
        Err(VmError::Elf { source, .. }) => source,
        Err(other) => panic!("expected an ELF error, got: {other}"),
        Ok(_) => panic!("the image was accepted"),
    }
}

/// Offset of the last PT_LOAD program header (the data segment).
fn last_load_header(bytes: &[u8]) -> usize {
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(bytes[54..56].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(bytes[56..58].try_into().unwrap()) as usize;
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .rfind(|&off| u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) == 1)
        .unwrap()
}

#[test]
fn not_an_elf_file() {
    assert_eq!(elf_error(b"#!/bin/sh\necho hi\n"), ElfError::NotElf);
    assert_eq!(elf_error(b""), ElfError::NotElf);
}

#[test]
fn truncated_files() {
    let image = hello();
    assert!(matches!(elf_error(&image[..40]), ElfError::Truncated(_)));
    assert!(matches!(elf_error(&image[..100]), ElfError::Truncated(_)));
    // Headers intact, segment contents cut off.
    let cut = &image[..0x2000.min(image.len() - 1)];
    let err = elf_error(cut);
    assert!(
        matches!(err, ElfError::Truncated(ref m) if m.contains("segment")),
        "{err}"
    );
}

#[test]
fn wrong_machine_and_class() {
    let mut image = hello();
    image[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    assert_eq!(elf_error(&image), ElfError::WrongMachine(3));
    let mut image = hello();
    image[4] = 1; // ELFCLASS32
    assert_eq!(elf_error(&image), ElfError::WrongClass);
    let mut image = hello();
    image[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    assert_eq!(elf_error(&image), ElfError::NotExecutable(3));
}

#[test]
fn segment_outside_guest_memory() {
    let mut image = hello();
    let ph = last_load_header(&image);
    let phys: u64 = 0x1000_0000; // 256 MiB, beyond the 64 MiB guest
    image[ph + 16..ph + 24].copy_from_slice(&(IMAGE_BASE + phys).to_le_bytes());
    image[ph + 24..ph + 32].copy_from_slice(&phys.to_le_bytes());
    match elf_error(&image) {
        ElfError::SegmentOutsideMemory { start, limit, .. } => {
            assert_eq!(start, phys);
            assert_eq!(limit, 64 << 20);
        }
        other => panic!("unexpected: {other}"),
    }
    // Linked outside the image window entirely.
    let mut image = hello();
    image[ph + 16..ph + 24].copy_from_slice(&0x40_0000u64.to_le_bytes());
    assert!(matches!(
        elf_error(&image),
        ElfError::SegmentOutsideWindow {
            vaddr: 0x40_0000,
            ..
        }
    ));
}

#[test]
fn memory_too_small() {
    let err = Vm::new(
        &hello(),
        VmConfig {
            memory: 3 << 20,
            ..VmConfig::default()
        },
    )
    .err()
    .unwrap();
    let VmError::MemoryTooSmall(e) = &err else {
        panic!("unexpected: {err}")
    };
    assert_eq!(e.requested, 3 << 20);
    assert!(
        err.to_string().starts_with("guest memory too small"),
        "{err}"
    );
}

#[test]
fn bad_vcpu_count_and_memory_size() {
    let err = Vm::new(
        &hello(),
        VmConfig {
            vcpus: 0,
            ..VmConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, VmError::Config(_)), "{err}");
    let err = Vm::new(
        &hello(),
        VmConfig {
            vcpus: 65,
            ..VmConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, VmError::Config(_)), "{err}");
    let err = Vm::new(
        &hello(),
        VmConfig {
            memory: (64 << 20) + 1,
            ..VmConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, VmError::Config(_)), "{err}");
}

#[test]
fn missing_kvm_device() {
    let cfg = VmConfig {
        kvm_device: "/nonexistent/kvm".into(),
        memory: 64 << 20,
        ..VmConfig::default()
    };
    let err = Vm::new(&hello(), cfg).err().unwrap();
    assert!(matches!(err, VmError::KvmMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/kvm does not exist"),
        "{err}"
    );
}

#[test]
fn missing_image_file() {
    let err = Vm::from_file("/nonexistent/guest.elf".as_ref(), VmConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, VmError::ImageRead { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/guest.elf"), "{err}");
}

/// Offset of the ABI version note (`dbos_abi::note::AbiNote`) in an image.
fn abi_note(bytes: &[u8]) -> usize {
    let note = dbos_abi::note::AbiNote::new(dbos_abi::ABI_VERSION);
    let mut head = Vec::new();
    for word in [note.namesz, note.descsz, note.note_type] {
        head.extend_from_slice(&word.to_le_bytes());
    }
    head.extend_from_slice(&note.name);
    let found: Vec<usize> = (0..bytes.len() - head.len())
        .filter(|&i| bytes[i..].starts_with(&head))
        .collect();
    assert_eq!(found.len(), 1, "exactly one ABI note in the image");
    found[0]
}

/// Creating a VM for `bytes` with a KVM device that does not exist: an image
/// error here proves the image was refused before any VM was created.
fn refused_before_vm(bytes: &[u8]) -> ElfError {
    match Vm::new(
        bytes,
        VmConfig {
            memory: 64 << 20,
            kvm_device: "/nonexistent/kvm".into(),
            ..VmConfig::default()
        },
    ) {
        Err(VmError::Elf { source, .. }) => source,
        Err(other) => panic!("expected an ELF error before VM creation, got: {other}"),
        Ok(_) => panic!("the image was accepted"),
    }
}

#[test]
fn image_for_another_abi_version_is_refused() {
    let mut image = hello();
    let at = abi_note(&image) + 20;
    assert_eq!(
        u32::from_le_bytes(image[at..at + 4].try_into().unwrap()),
        dbos_abi::ABI_VERSION
    );
    image[at..at + 4].copy_from_slice(&(dbos_abi::ABI_VERSION + 1).to_le_bytes());
    let err = refused_before_vm(&image);
    assert_eq!(
        err,
        ElfError::AbiVersion {
            image: dbos_abi::ABI_VERSION + 1,
            vmm: dbos_abi::ABI_VERSION
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the image was built for dbos ABI version {}, but this dbos provides version {}: \
             rebuild the guest against the libdbos of this dbos",
            dbos_abi::ABI_VERSION + 1,
            dbos_abi::ABI_VERSION
        )
    );
}

#[test]
fn image_without_abi_note_is_refused() {
    // The note renamed: a note, but not ours.
    let mut renamed = hello();
    let at = abi_note(&renamed) + 12;
    renamed[at] = b'x';
    // The note segment turned into PT_NULL: no note at all.
    let mut no_segment = hello();
    let phoff = u64::from_le_bytes(no_segment[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(no_segment[54..56].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(no_segment[56..58].try_into().unwrap()) as usize;
    let notes: Vec<usize> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&off| u32::from_le_bytes(no_segment[off..off + 4].try_into().unwrap()) == 4)
        .collect();
    assert_eq!(notes.len(), 1, "one PT_NOTE segment");
    no_segment[notes[0]..notes[0] + 4].copy_from_slice(&0u32.to_le_bytes());
    for image in [renamed, no_segment] {
        let err = refused_before_vm(&image);
        assert_eq!(err, ElfError::NoAbiNote);
        let msg = err.to_string();
        assert!(
            msg.contains("no dbos ABI version note (.note.dbos)"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("provides ABI version {}", dbos_abi::ABI_VERSION)),
            "{msg}"
        );
    }
    // The unmodified image passes the check and reaches VM creation.
    assert!(matches!(
        Vm::new(
            &hello(),
            VmConfig {
                memory: 64 << 20,
                kvm_device: "/nonexistent/kvm".into(),
                ..VmConfig::default()
            }
        ),
        Err(VmError::KvmMissing { .. })
    ));
}
