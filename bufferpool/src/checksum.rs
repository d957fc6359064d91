//! CRC32C (Castagnoli), the checksum of log sectors, log records, pages and
//! the control block.
//!
//! The host uses the `crc32c` crate, which picks the SSE 4.2 `crc32`
//! instruction at run time. The guest (`target_os = "none"`) must not: KVM's
//! instruction emulator on the development machines cannot execute `crc32`
//! (see the README, "Performance on hosts without VT-x/AMD-V"), so it uses the table-driven software implementation
//! of the `crc` crate (16 lanes, plain integer code). Both compute the same
//! function; a unit test checks them against each other on the host.

/// The software implementation (used by the guest; the host's reference).
static SOFTWARE: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// An incremental CRC32C: `Crc32c::new().update(a).update(b).finish()` is
/// the CRC32C of `a` followed by `b`.
#[derive(Clone)]
pub struct Crc32c {
    #[cfg(not(target_os = "none"))]
    state: u32,
    #[cfg(target_os = "none")]
    digest: crc::Digest<'static, u32, crc::Table<16>>,
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    /// An empty checksum.
    pub fn new() -> Crc32c {
        Crc32c {
            #[cfg(not(target_os = "none"))]
            state: 0,
            #[cfg(target_os = "none")]
            digest: SOFTWARE.digest(),
        }
    }

    /// Adds `bytes`.
    pub fn update(mut self, bytes: &[u8]) -> Crc32c {
        #[cfg(not(target_os = "none"))]
        {
            self.state = crc32c::crc32c_append(self.state, bytes);
        }
        #[cfg(target_os = "none")]
        self.digest.update(bytes);
        self
    }

    /// The checksum of everything added.
    pub fn finish(self) -> u32 {
        #[cfg(not(target_os = "none"))]
        return self.state;
        #[cfg(target_os = "none")]
        return self.digest.finalize();
    }
}

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    Crc32c::new().update(bytes).finish()
}

/// CRC32C of `bytes` with the software implementation (what the guest uses).
pub fn crc32c_software(bytes: &[u8]) -> u32 {
    SOFTWARE.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_paths_agree() {
        // RFC 3720 (iSCSI) test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: alloc::vec::Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 512, 4096, 5000] {
            assert_eq!(crc32c(&data[..len]), crc32c_software(&data[..len]));
        }
        let split = Crc32c::new()
            .update(&data[..1000])
            .update(&data[1000..])
            .finish();
        assert_eq!(split, crc32c(&data));
    }
}
