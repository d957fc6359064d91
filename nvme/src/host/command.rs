//! Validating one submission entry and turning it into file operations.
//!
//! Everything in an entry is untrusted. A command becomes operations only if
//! its opcode is read, write or flush, its namespace is 1, its LBA range is
//! inside the namespace, its transfer is at most
//! [`MAX_TRANSFER_BLOCKS`] blocks, and every byte of its data (and of its
//! PRP list) lies in the served memory at 4 KiB aligned addresses. Anything
//! else yields an error status and no operation at all.

use super::backend::{IoKind, IoOp};
use super::memory::{DmaMemory, HostBuf};
use crate::queue::{Opcode, Sqe, PSDT_PRP, PSDT_SGL, SGL_DATA_BLOCK};
use crate::status::NvmeError;
use crate::types::{
    DmaAddr, BLOCK_SHIFT, BLOCK_SIZE, MAX_TRANSFER_BLOCKS, NSID, NSID_ALL, PAGE_SIZE,
};
use std::vec::Vec;

/// Maps a device range of whole pages, or fails with "invalid field".
fn map(mem: &DmaMemory, addr: u64, len: u64, bufs: &mut Vec<HostBuf>) -> Result<(), NvmeError> {
    if mem.map_range(DmaAddr(addr), len as u32, bufs) {
        Ok(())
    } else {
        Err(NvmeError::InvalidField)
    }
}

/// Collects the data pages of a PRP data pointer into `bufs`, merging
/// consecutive pages.
fn prp_pages(
    sqe: &Sqe,
    pages: u64,
    mem: &DmaMemory,
    bufs: &mut Vec<HostBuf>,
) -> Result<(), NvmeError> {
    let [prp1, prp2] = sqe.dptr;
    let mut run = (prp1, PAGE_SIZE);
    let mut add = |page: u64, bufs: &mut Vec<HostBuf>| -> Result<(), NvmeError> {
        if !page.is_multiple_of(PAGE_SIZE) {
            return Err(NvmeError::InvalidField);
        }
        if run.0.checked_add(run.1) == Some(page) {
            run.1 += PAGE_SIZE;
        } else {
            map(mem, run.0, run.1, bufs)?;
            run = (page, PAGE_SIZE);
        }
        Ok(())
    };
    if prp1 % PAGE_SIZE != 0 {
        return Err(NvmeError::InvalidField);
    }
    match pages {
        1 => {}
        2 => add(prp2, bufs)?,
        _ => {
            // PRP2 points to a list of the remaining pages, which must fit in
            // the rest of the list's page (no chained lists).
            let entries = pages - 1;
            if prp2 % 8 != 0 || prp2 % PAGE_SIZE + entries * 8 > PAGE_SIZE {
                return Err(NvmeError::InvalidField);
            }
            let list = mem
                .host_ptr(DmaAddr(prp2), entries * 8)
                .ok_or(NvmeError::InvalidField)? as *const u64;
            for i in 0..entries as usize {
                // SAFETY: the list range was checked to lie in served memory
                // and is 8-byte aligned; read once, volatile, because the
                // guest may change it under us.
                let page = unsafe { core::ptr::read_volatile(list.add(i)) };
                add(page, bufs)?;
            }
        }
    }
    map(mem, run.0, run.1, bufs)
}

/// Validates `sqe` against the memory and a namespace of `capacity_blocks`
/// blocks and fills `ops` with the operations it needs (`bufs` is scratch).
/// On error `ops` holds nothing that should be issued.
pub(crate) fn decode(
    sqe: &Sqe,
    mem: &DmaMemory,
    capacity_blocks: u64,
    bufs: &mut Vec<HostBuf>,
    ops: &mut Vec<IoOp>,
) -> Result<IoKind, NvmeError> {
    ops.clear();
    bufs.clear();
    let opcode = Opcode::from_raw(sqe.opcode_raw()).ok_or(NvmeError::InvalidOpcode)?;
    if sqe.fuse() != 0 {
        return Err(NvmeError::InvalidField);
    }
    let kind = match opcode {
        Opcode::Flush => {
            if sqe.nsid != NSID && sqe.nsid != NSID_ALL {
                return Err(NvmeError::InvalidNamespace);
            }
            let buf = HostBuf {
                ptr: core::ptr::null_mut(),
                len: 0,
                fixed: None,
            };
            ops.push(IoOp {
                kind: IoKind::Flush,
                offset: 0,
                buf,
            });
            return Ok(IoKind::Flush);
        }
        Opcode::Read => IoKind::Read,
        Opcode::Write => IoKind::Write { fua: sqe.fua() },
    };
    if sqe.nsid != NSID {
        return Err(NvmeError::InvalidNamespace);
    }
    let blocks = sqe.blocks() as u64;
    if blocks > MAX_TRANSFER_BLOCKS as u64 {
        return Err(NvmeError::InvalidField);
    }
    let slba = sqe.slba().0;
    if slba
        .checked_add(blocks)
        .is_none_or(|end| end > capacity_blocks)
    {
        return Err(NvmeError::LbaOutOfRange);
    }
    let len = blocks * BLOCK_SIZE;
    match sqe.psdt() {
        PSDT_PRP => prp_pages(sqe, len / PAGE_SIZE, mem, bufs)?,
        PSDT_SGL => {
            let (addr, sgl_len, id) = sqe.sgl();
            if id != SGL_DATA_BLOCK || sgl_len as u64 != len || !addr.is_page_aligned() {
                return Err(NvmeError::InvalidField);
            }
            map(mem, addr.0, len, bufs)?;
        }
        _ => return Err(NvmeError::InvalidField),
    }
    let mut offset = slba << BLOCK_SHIFT;
    for buf in bufs.iter() {
        ops.push(IoOp {
            kind,
            offset,
            buf: *buf,
        });
        offset += buf.len as u64;
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Opcode;
    use crate::types::{CommandId, Lba};
    use crate::DataPtr;
    use crate::{host::memory::DmaRegion, Command};

    /// A memory map for decoding tests: device [0x10000, 0x30000) at host 0x7f00_0001_0000
    /// (never dereferenced except for the PRP list, which lives in `list`).
    struct Fixture {
        mem: DmaMemory,
        list: std::boxed::Box<Page>,
        list_addr: u64,
    }

    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    fn fixture() -> Fixture {
        let mut list = std::boxed::Box::new(Page([0; 512]));
        let list_addr = 0x50000;
        let regions = [
            DmaRegion {
                addr: 0x10000,
                host: 0x7f00_0001_0000 as *mut u8,
                len: 0x20000,
            },
            DmaRegion {
                addr: list_addr,
                host: list.0.as_mut_ptr().cast(),
                len: 4096,
            },
        ];
        // SAFETY: only the list region is ever dereferenced, and it lives in
        // the fixture alongside the memory.
        let mem = unsafe { DmaMemory::new(&regions) }.unwrap();
        Fixture {
            mem,
            list,
            list_addr,
        }
    }

    fn run(f: &Fixture, sqe: &Sqe) -> Result<std::vec::Vec<IoOp>, NvmeError> {
        let (mut bufs, mut ops) = (std::vec::Vec::new(), std::vec::Vec::new());
        decode(sqe, &f.mem, 1000, &mut bufs, &mut ops).map(|_| ops)
    }

    fn host(addr: u64) -> *mut u8 {
        (0x7f00_0001_0000 + addr - 0x10000) as *mut u8
    }

    #[test]
    fn decodes_valid_commands() {
        let f = fixture();
        let sqe = Command::write_fua(Lba(7), 2, DataPtr::Contiguous(DmaAddr(0x12000)))
            .to_sqe(CommandId(1));
        assert_eq!(
            run(&f, &sqe),
            Ok(std::vec![IoOp {
                kind: IoKind::Write { fua: true },
                offset: 7 * 4096,
                buf: HostBuf {
                    ptr: host(0x12000),
                    len: 8192,
                    fixed: None
                }
            }])
        );
        let sqe = Command::flush().to_sqe(CommandId(2));
        assert_eq!(run(&f, &sqe).unwrap()[0].kind, IoKind::Flush);
        // PRP1 + PRP2, not contiguous: two operations at consecutive offsets.
        let sqe = Command::read(
            Lba(10),
            2,
            DataPtr::Prp {
                prp1: DmaAddr(0x20000),
                prp2: DmaAddr(0x11000),
            },
        )
        .to_sqe(CommandId(3));
        assert_eq!(
            run(&f, &sqe),
            Ok(std::vec![
                IoOp {
                    kind: IoKind::Read,
                    offset: 40960,
                    buf: HostBuf {
                        ptr: host(0x20000),
                        len: 4096,
                        fixed: None
                    }
                },
                IoOp {
                    kind: IoKind::Read,
                    offset: 45056,
                    buf: HostBuf {
                        ptr: host(0x11000),
                        len: 4096,
                        fixed: None
                    }
                },
            ])
        );
    }

    #[test]
    fn decodes_prp_lists_merging_runs() {
        let mut f = fixture();
        // Pages: 0x10000 (PRP1), then 0x11000, 0x12000 (contiguous), 0x2f000.
        f.list.0[..3].copy_from_slice(&[0x11000, 0x12000, 0x2f000]);
        let sqe = Command::read(
            Lba(0),
            4,
            DataPtr::Prp {
                prp1: DmaAddr(0x10000),
                prp2: DmaAddr(f.list_addr),
            },
        )
        .to_sqe(CommandId(0));
        let ops = run(&f, &sqe).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0].buf,
            HostBuf {
                ptr: host(0x10000),
                len: 3 * 4096,
                fixed: None
            }
        );
        assert_eq!(
            (ops[1].offset, ops[1].buf.len, ops[1].buf.ptr),
            (3 * 4096, 4096, host(0x2f000))
        );
        // A list entry outside memory, or misaligned.
        f.list.0[1] = 0x40000;
        assert_eq!(run(&f, &sqe), Err(NvmeError::InvalidField));
        f.list.0[1] = 0x12008;
        assert_eq!(run(&f, &sqe), Err(NvmeError::InvalidField));
        // The list crossing its page (would need chaining), or outside memory.
        let mut s = sqe;
        s.dptr[1] = f.list_addr + 4096 - 16;
        assert_eq!(run(&f, &s), Err(NvmeError::InvalidField));
        s.dptr[1] = 0x60000;
        assert_eq!(run(&f, &s), Err(NvmeError::InvalidField));
        s.dptr[1] = f.list_addr + 4;
        assert_eq!(run(&f, &s), Err(NvmeError::InvalidField));
    }

    #[test]
    fn rejects_bad_entries() {
        let f = fixture();
        let good =
            Command::write(Lba(0), 1, DataPtr::Contiguous(DmaAddr(0x10000))).to_sqe(CommandId(0));
        let bad = |edit: &dyn Fn(&mut Sqe)| {
            let mut s = good;
            edit(&mut s);
            run(&f, &s)
        };
        assert!(bad(&|_| {}).is_ok());
        assert_eq!(
            bad(&|s| s.cdw0 = (s.cdw0 & !0xff) | 0x05),
            Err(NvmeError::InvalidOpcode)
        );
        assert_eq!(bad(&|s| s.cdw0 |= 1 << 8), Err(NvmeError::InvalidField));
        assert_eq!(bad(&|s| s.nsid = 0), Err(NvmeError::InvalidNamespace));
        assert_eq!(bad(&|s| s.nsid = 2), Err(NvmeError::InvalidNamespace));
        assert_eq!(
            bad(&|s| s.nsid = NSID_ALL),
            Err(NvmeError::InvalidNamespace)
        );
        assert_eq!(
            bad(&|s| s.set_range(Lba(999), 2)),
            Err(NvmeError::LbaOutOfRange)
        );
        assert_eq!(
            bad(&|s| s.set_range(Lba(1000), 1)),
            Err(NvmeError::LbaOutOfRange)
        );
        assert_eq!(
            bad(&|s| s.set_range(Lba(u64::MAX), 1)),
            Err(NvmeError::LbaOutOfRange)
        );
        assert_eq!(
            bad(&|s| s.set_range(Lba(0), 257)),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(
            bad(&|s| s.set_sgl_block(DmaAddr(0x10200), 4096)),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(
            bad(&|s| s.set_sgl_block(DmaAddr(0x10000), 512)),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(
            bad(&|s| s.set_sgl_block(DmaAddr(0x30000), 4096)),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(
            bad(&|s| s.set_sgl_block(DmaAddr(u64::MAX - 4095), 4096)),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(
            bad(&|s| s.dptr[1] |= 0x20 << 56),
            Err(NvmeError::InvalidField)
        );
        assert_eq!(bad(&|s| s.cdw0 |= 3 << 14), Err(NvmeError::InvalidField));
        // A contiguous buffer running past the end of its region.
        assert_eq!(
            bad(&|s| {
                s.set_range(Lba(0), 2);
                s.set_sgl_block(DmaAddr(0x2f000), 8192)
            }),
            Err(NvmeError::InvalidField)
        );
        let prp = |prp1: u64, prp2: u64, blocks: u32| {
            let mut s = Sqe::new(Opcode::Read, CommandId(0), NSID);
            s.set_range(Lba(0), blocks);
            s.set_prp(DmaAddr(prp1), DmaAddr(prp2));
            run(&f, &s).map(|ops| ops.len())
        };
        assert_eq!(prp(0x10000, 0, 1), Ok(1));
        assert_eq!(prp(0x10800, 0, 1), Err(NvmeError::InvalidField));
        assert_eq!(prp(0x0, 0, 1), Err(NvmeError::InvalidField));
        assert_eq!(prp(0x10000, 0x11000, 2), Ok(1));
        assert_eq!(prp(0x10000, 0x11800, 2), Err(NvmeError::InvalidField));
        assert_eq!(prp(0x10000, 0x40000, 2), Err(NvmeError::InvalidField));
        // Flush accepts the broadcast namespace, not others.
        let mut fl = Command::flush().to_sqe(CommandId(0));
        fl.nsid = NSID_ALL;
        assert_eq!(run(&f, &fl).map(|o| o.len()), Ok(1));
        fl.nsid = 3;
        assert_eq!(run(&f, &fl), Err(NvmeError::InvalidNamespace));
    }
}
