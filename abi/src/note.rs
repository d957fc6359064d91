//! The ELF note that carries a guest image's ABI version.
//!
//! `libdbos` places one [`AbiNote`] in the section [`SECTION`] of every guest
//! image (`libdbos/guest.ld` keeps it and gives it a `PT_NOTE` segment), so
//! `dbos run` can read the version the image was built for before it creates
//! a VM and refuse an image without the note or with another version.
//!
//! The note has ELF's note layout: `namesz`, `descsz`, `type` (4 bytes each),
//! the name [`NAME`] padded to 4 bytes, and a 4-byte descriptor holding the
//! version, little-endian.

/// Section the note lives in.
pub const SECTION: &str = ".note.dbos";

/// The note's owner name, as it appears in the image (with its NUL).
pub const NAME: &[u8] = b"dbos\0";

/// Note type of the ABI version note.
pub const TYPE_ABI_VERSION: u32 = 1;

/// The note as laid out in the image.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiNote {
    pub namesz: u32,
    pub descsz: u32,
    pub note_type: u32,
    pub name: [u8; 8],
    pub version: u32,
}

impl AbiNote {
    /// The note for `version`.
    pub const fn new(version: u32) -> AbiNote {
        AbiNote {
            namesz: NAME.len() as u32,
            descsz: 4,
            note_type: TYPE_ABI_VERSION,
            name: *b"dbos\0\0\0\0",
            version,
        }
    }
}

/// Decodes the descriptor of a note named `dbos` (name without its NUL, as
/// ELF readers return it) of type [`TYPE_ABI_VERSION`]: the version, or
/// `None` when the note is not an ABI version note or its descriptor is not
/// 4 bytes.
pub fn decode(name: &[u8], note_type: u32, desc: &[u8]) -> Option<u32> {
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    if name != &NAME[..NAME.len() - 1] || note_type != TYPE_ABI_VERSION {
        return None;
    }
    Some(u32::from_le_bytes(desc.try_into().ok()?))
}

/// Walks the notes of a `PT_NOTE` segment and returns the version of the
/// first ABI version note: `None` when there is none (or the segment is
/// malformed before one is found). Every length is checked against `notes`.
pub fn find_abi_version(notes: &[u8]) -> Option<u32> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            notes.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0usize;
    while at < notes.len() {
        let namesz = usize::try_from(word(at)?).ok()?;
        let descsz = usize::try_from(word(at + 4)?).ok()?;
        let note_type = word(at + 8)?;
        let name_at = at.checked_add(12)?;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let end = desc_at.checked_add(pad(descsz)?)?;
        let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if let Some(version) = decode(name, note_type, desc) {
            return Some(version);
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_layout() {
        assert_eq!(core::mem::size_of::<AbiNote>(), 24);
        let n = AbiNote::new(7);
        assert_eq!((n.namesz, n.descsz, n.note_type, n.version), (5, 4, 1, 7));
    }

    fn bytes_of(note: &AbiNote) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&note.namesz.to_le_bytes());
        b[4..8].copy_from_slice(&note.descsz.to_le_bytes());
        b[8..12].copy_from_slice(&note.note_type.to_le_bytes());
        b[12..20].copy_from_slice(&note.name);
        b[20..24].copy_from_slice(&note.version.to_le_bytes());
        b
    }

    #[test]
    fn finds_the_version_among_other_notes() {
        let ours = bytes_of(&AbiNote::new(3));
        assert_eq!(find_abi_version(&ours), Some(3));
        // A GNU build-id note (name "GNU\0", 8-byte descriptor) first.
        let mut two = [0u8; 24 + 24];
        two[0..4].copy_from_slice(&4u32.to_le_bytes());
        two[4..8].copy_from_slice(&8u32.to_le_bytes());
        two[8..12].copy_from_slice(&3u32.to_le_bytes());
        two[12..16].copy_from_slice(b"GNU\0");
        two[24..].copy_from_slice(&ours);
        assert_eq!(find_abi_version(&two), Some(3));
        assert_eq!(find_abi_version(&two[..24]), None);
        // Truncated or absurd lengths end the walk without a panic.
        assert_eq!(find_abi_version(&ours[..23]), None);
        let mut huge = ours;
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_abi_version(&huge), None);
        assert_eq!(find_abi_version(&[]), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(decode(b"dbos", 1, &9u32.to_le_bytes()), Some(9));
        assert_eq!(decode(b"dbos\0", 1, &9u32.to_le_bytes()), Some(9));
        assert_eq!(decode(b"GNU", 1, &9u32.to_le_bytes()), None);
        assert_eq!(decode(b"dbos", 2, &9u32.to_le_bytes()), None);
        assert_eq!(decode(b"dbos", 1, &[1, 2, 3]), None);
    }
}
