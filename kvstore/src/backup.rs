//! The btree engine's online backup (BGSAVE, SAVE) in process mode: a
//! copy of the store's file, taken while writers go on, that opens and
//! recovers as a store of its own (`dbos-kv serve --dir DIR/backup`, or
//! `dbos-kv check --dir DIR/backup`).
//!
//! The copy is a crash image (see `Engine::hold_checkpoints` for why it
//! is consistent): with checkpoints held off, the data area is read
//! fuzzily, the log is made durable, then the control blocks and the whole
//! log area are read. Writers are not stopped; only a writer that needs
//! log space pinned by the held checkpoint waits. The copy is written to
//! `kv.db.tmp` beside its destination, made durable, then renamed to
//! `kv.db`: a crash during a backup leaves the previous backup.

use crate::store::Store;
use dbos_bufferpool::{BlockDevice, BufferManager, Engine};
use dbos_nvme::host::BackingFile;
use std::format;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

const BLOCK: u64 = 4096;
const CHUNK_BLOCKS: usize = 256;

/// One block, aligned for `O_DIRECT` reads.
#[repr(C, align(4096))]
struct Block([u8; BLOCK as usize]);

/// The bytes of `blocks`.
fn bytes(blocks: &mut [Block]) -> &mut [u8] {
    let len = blocks.len() * BLOCK as usize;
    // SAFETY: `Block` is `repr(C)` around a byte array of exactly 4096
    // bytes (no padding), so `blocks` is `len` initialized bytes, borrowed
    // mutably for the returned lifetime.
    unsafe { core::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), len) }
}

/// Copies blocks `start..end` of `src` to the same offsets of `dst`,
/// skipping chunks that are all zero (they stay holes); returns the bytes
/// written.
fn copy_blocks(
    src: &BackingFile,
    dst: &File,
    start: u64,
    end: u64,
    buf: &mut [Block],
) -> Result<u64, String> {
    let mut at = start;
    let mut written = 0;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        let chunk = &mut bytes(&mut buf[..n])[..];
        src.file()
            .read_exact_at(chunk, at * BLOCK)
            .map_err(|e| format!("{}: reading block {at}: {e}", src.path().display()))?;
        if chunk.iter().any(|&b| b != 0) {
            dst.write_all_at(chunk, at * BLOCK)
                .map_err(|e| format!("writing the backup at block {at}: {e}"))?;
            written += chunk.len() as u64;
        }
        at += n as u64;
    }
    Ok(written)
}

/// Copies the store on `src` into `dest_dir/kv.db` (see the module
/// documentation); returns the bytes written.
pub fn copy_store<D: BlockDevice + Send + 'static, B: BufferManager>(
    store: &Store<D, B>,
    src: &BackingFile,
    dest_dir: &Path,
) -> Result<u64, String>
where
    Engine<D, B>: Sync,
{
    std::fs::create_dir_all(dest_dir)
        .map_err(|e| format!("{}: cannot create: {e}", dest_dir.display()))?;
    let tmp = dest_dir.join("kv.db.tmp");
    let _ = std::fs::remove_file(&tmp);
    let dst = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let blocks = src.blocks();
    dst.set_len(blocks * BLOCK)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut buf: Vec<Block> = (0..CHUNK_BLOCKS).map(|_| Block([0; 4096])).collect();
    let written = {
        let hold = store.engine().hold_checkpoints();
        let layout = hold.layout();
        let data = 2 + layout.log_blocks;
        let mut w = copy_blocks(src, &dst, data, data + layout.data_pages, &mut buf)?;
        hold.sync_log()
            .map_err(|e| format!("making the log durable: {e}"))?;
        w += copy_blocks(src, &dst, 0, data, &mut buf)?;
        // The backup control block, the file's last block.
        w += copy_blocks(src, &dst, blocks - 1, blocks, &mut buf)?;
        w
    };
    dst.sync_all()
        .map_err(|e| format!("{}: fsync: {e}", tmp.display()))?;
    drop(dst);
    let path = dest_dir.join("kv.db");
    std::fs::rename(&tmp, &path)
        .and_then(|()| File::open(dest_dir)?.sync_all())
        .map_err(|e| format!("{}: naming the backup: {e}", path.display()))?;
    log::info!("backup: {} ({written} bytes written)", path.display());
    Ok(written)
}

/// Runs `f` on a new thread (the btree engine's background saves); false
/// if no thread could be started.
pub fn spawn(f: std::boxed::Box<dyn FnOnce() + Send>) -> bool {
    match std::thread::Builder::new()
        .name("dbos-kv-save".to_string())
        .spawn(f)
    {
        Ok(_) => true,
        Err(e) => {
            log::error!("cannot start the background save thread: {e}");
            false
        }
    }
}
