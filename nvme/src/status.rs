//! NVMe completion status codes.
//!
//! The 15-bit status field of a completion entry holds a status code (SC,
//! bits 7:0), a status code type (SCT, bits 10:8), the command retry delay
//! (bits 12:11), "more" (bit 13) and "do not retry" (DNR, bit 14). [`Status`]
//! is that raw field; [`NvmeError`] names the codes this crate produces.

/// Status code type: generic command status.
pub const SCT_GENERIC: u8 = 0;
/// Status code type: media and data integrity errors.
pub const SCT_MEDIA: u8 = 2;

/// An error status, as named by the NVMe base and NVM command set specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NvmeError {
    /// Generic 0x01: the opcode is not read, write or flush.
    #[error("invalid command opcode")]
    InvalidOpcode,
    /// Generic 0x02: a field is invalid (data pointer misaligned or outside
    /// memory, transfer too large, fused or unsupported descriptor types).
    #[error("invalid field in command")]
    InvalidField,
    /// Generic 0x03: the command id is already in use by an outstanding command.
    #[error("command id conflict")]
    CommandIdConflict,
    /// Generic 0x04: the transfer moved fewer bytes than requested.
    #[error("data transfer error")]
    DataTransferError,
    /// Generic 0x06: the host failed for a reason outside the command.
    #[error("internal error")]
    InternalError,
    /// Generic 0x0B: the namespace id is not 1.
    #[error("invalid namespace or format")]
    InvalidNamespace,
    /// NVM generic 0x80: the LBA range is not inside the namespace.
    #[error("LBA out of range")]
    LbaOutOfRange,
    /// NVM generic 0x81: the backing store ran out of space (ENOSPC).
    #[error("capacity exceeded")]
    CapacityExceeded,
    /// Media 0x80: a write or flush failed (EIO).
    #[error("write fault")]
    WriteFault,
    /// Media 0x81: a read failed (EIO).
    #[error("unrecovered read error")]
    UnrecoveredReadError,
    /// Any other status.
    #[error("NVMe status type {sct:#x} code {sc:#x}")]
    Other { sct: u8, sc: u8 },
}

impl NvmeError {
    /// Status code type and status code.
    pub const fn codes(self) -> (u8, u8) {
        match self {
            NvmeError::InvalidOpcode => (SCT_GENERIC, 0x01),
            NvmeError::InvalidField => (SCT_GENERIC, 0x02),
            NvmeError::CommandIdConflict => (SCT_GENERIC, 0x03),
            NvmeError::DataTransferError => (SCT_GENERIC, 0x04),
            NvmeError::InternalError => (SCT_GENERIC, 0x06),
            NvmeError::InvalidNamespace => (SCT_GENERIC, 0x0b),
            NvmeError::LbaOutOfRange => (SCT_GENERIC, 0x80),
            NvmeError::CapacityExceeded => (SCT_GENERIC, 0x81),
            NvmeError::WriteFault => (SCT_MEDIA, 0x80),
            NvmeError::UnrecoveredReadError => (SCT_MEDIA, 0x81),
            NvmeError::Other { sct, sc } => (sct, sc),
        }
    }

    /// Names a (type, code) pair; `None` for success (0, 0).
    pub const fn from_codes(sct: u8, sc: u8) -> Option<NvmeError> {
        Some(match (sct, sc) {
            (SCT_GENERIC, 0x00) => return None,
            (SCT_GENERIC, 0x01) => NvmeError::InvalidOpcode,
            (SCT_GENERIC, 0x02) => NvmeError::InvalidField,
            (SCT_GENERIC, 0x03) => NvmeError::CommandIdConflict,
            (SCT_GENERIC, 0x04) => NvmeError::DataTransferError,
            (SCT_GENERIC, 0x06) => NvmeError::InternalError,
            (SCT_GENERIC, 0x0b) => NvmeError::InvalidNamespace,
            (SCT_GENERIC, 0x80) => NvmeError::LbaOutOfRange,
            (SCT_GENERIC, 0x81) => NvmeError::CapacityExceeded,
            (SCT_MEDIA, 0x80) => NvmeError::WriteFault,
            (SCT_MEDIA, 0x81) => NvmeError::UnrecoveredReadError,
            (sct, sc) => NvmeError::Other { sct, sc },
        })
    }
}

bitflags::bitflags! {
    /// The single-bit fields of a status field (the status code, its type
    /// and the retry delay are multi-bit fields, read with [`Status::sc`]
    /// and [`Status::sct`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct StatusFlags: u16 {
        /// More: the controller has more status in its error log.
        const MORE = 1 << 13;
        /// Do not retry: the command would fail again.
        const DNR = 1 << 14;
    }
}

/// The raw 15-bit status field of a completion entry (phase bit excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// The status for an error, with "do not retry" set: errors are final
    /// (a durability error is never retried silently).
    pub const fn from_error(err: NvmeError) -> Status {
        let (sct, sc) = err.codes();
        Status(sc as u16 | ((sct as u16 & 0x7) << 8) | StatusFlags::DNR.bits())
    }

    /// Status code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status code type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// The "more" and "do not retry" bits.
    pub const fn flags(self) -> StatusFlags {
        StatusFlags::from_bits_truncate(self.0)
    }

    /// Whether this is a successful completion.
    pub const fn is_success(self) -> bool {
        self.sc() == 0 && self.sct() == 0
    }

    /// The error this status names, `None` on success.
    pub const fn error(self) -> Option<NvmeError> {
        NvmeError::from_codes(self.sct(), self.sc())
    }

    /// `Ok(())` on success, the named error otherwise.
    pub const fn result(self) -> Result<(), NvmeError> {
        match self.error() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl From<NvmeError> for Status {
    fn from(err: NvmeError) -> Status {
        Status::from_error(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let all = [
            NvmeError::InvalidOpcode,
            NvmeError::InvalidField,
            NvmeError::CommandIdConflict,
            NvmeError::DataTransferError,
            NvmeError::InternalError,
            NvmeError::InvalidNamespace,
            NvmeError::LbaOutOfRange,
            NvmeError::CapacityExceeded,
            NvmeError::WriteFault,
            NvmeError::UnrecoveredReadError,
            NvmeError::Other { sct: 1, sc: 0x0c },
        ];
        for e in all {
            let s = Status::from_error(e);
            assert_eq!(s.error(), Some(e));
            assert_eq!(s.result(), Err(e));
            assert!(!s.is_success());
            assert_eq!(s.flags(), StatusFlags::DNR);
        }
        assert_eq!(Status::SUCCESS.result(), Ok(()));
        assert_eq!(Status::SUCCESS.flags(), StatusFlags::empty());
        assert_eq!(StatusFlags::DNR.bits(), 0x4000);
        assert_eq!(Status(0x6281).flags(), StatusFlags::MORE | StatusFlags::DNR);
        assert_eq!(
            Status(0x6281).error(),
            Some(NvmeError::UnrecoveredReadError)
        );
        assert_eq!(Status::from_error(NvmeError::LbaOutOfRange).0, 0x4080);
        assert_eq!(Status::from_error(NvmeError::WriteFault).0, 0x4280);
        assert_eq!(
            Status::from_error(NvmeError::UnrecoveredReadError).0,
            0x4281
        );
        assert_eq!(Status::from_error(NvmeError::CapacityExceeded).0, 0x4081);
        assert_eq!(Status::from_error(NvmeError::InvalidField).0, 0x4002);
    }
}
