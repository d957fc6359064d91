//! Why vmcache's window is not read into with io_uring fixed buffers: a
//! registration pins the physical pages behind the window at registration
//! time; `madvise(MADV_DONTNEED)` then drops them from the page table and
//! the next touch faults in a new zero page, while a `READ_FIXED` still
//! lands in the old, pinned page. The reader of the window sees zeros.
//!
//! The pools' path (read into a registered bounce buffer that is never
//! released, then copy) and a non-fixed read (the kernel pins the
//! destination at submission) both see the data.

use io_uring::{opcode, types, IoUring};
use std::io::Write;
use std::os::unix::io::AsRawFd;

const PAGE: usize = 4096;

struct Anon(*mut u8, usize);

impl Anon {
    fn new(len: usize) -> Anon {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Anon(p.cast(), len)
    }
    fn page(&self, i: usize) -> *mut u8 {
        self.0.wrapping_add(i * PAGE)
    }
    fn bytes(&self, i: usize) -> Vec<u8> {
        // SAFETY: page i lies inside the mapping; nothing writes it now.
        unsafe { std::slice::from_raw_parts(self.page(i), PAGE) }.to_vec()
    }
    fn fill(&self, i: usize, b: u8) {
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(self.page(i), b, PAGE) };
    }
    fn dontneed(&self, i: usize) {
        // SAFETY: page i lies inside our mapping.
        let r = unsafe { libc::madvise(self.page(i).cast(), PAGE, libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our mapping; no I/O is in flight (every test waits).
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

fn read(ring: &mut IoUring, entry: io_uring::squeue::Entry) -> i32 {
    // SAFETY: the buffers named by `entry` outlive the wait below.
    unsafe { ring.submission().push(&entry) }.unwrap();
    ring.submit_and_wait(1).unwrap();
    ring.completion().next().unwrap().result()
}

#[test]
fn stale_fixed_buffer_registration_misses_the_window() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[0x55; PAGE]).unwrap();
    let fd = types::Fd(f.as_raw_fd());
    let mut ring = IoUring::new(8).unwrap();

    // Pages 0-1: the "window"; page 2: the bounce buffer.
    let mem = Anon::new(3 * PAGE);
    for i in 0..3 {
        mem.fill(i, 0xaa);
    }
    let iov = [libc::iovec {
        iov_base: mem.0.cast(),
        iov_len: 3 * PAGE,
    }];
    // SAFETY: `mem` outlives the ring's use of it (unregistered below).
    unsafe { ring.submitter().register_buffers(&iov) }.unwrap();

    // Evict page 0 the vmcache way, then read the page in through the
    // registration: the data goes to the page pinned at registration.
    mem.dontneed(0);
    let n = read(
        &mut ring,
        opcode::ReadFixed::new(fd, mem.page(0), PAGE as u32, 0)
            .offset(0)
            .build(),
    );
    assert_eq!(n, PAGE as i32);
    assert_eq!(
        mem.bytes(0),
        vec![0; PAGE],
        "the window shows a fresh zero page, not the data just read"
    );

    // The pools' path: read into the bounce buffer (never released), copy.
    mem.dontneed(1);
    let n = read(
        &mut ring,
        opcode::ReadFixed::new(fd, mem.page(2), PAGE as u32, 0)
            .offset(0)
            .build(),
    );
    assert_eq!(n, PAGE as i32);
    // SAFETY: pages 1 and 2 are distinct pages of the mapping.
    unsafe { std::ptr::copy_nonoverlapping(mem.page(2), mem.page(1), PAGE) };
    assert_eq!(mem.bytes(1), vec![0x55; PAGE]);

    // A non-fixed read pins the destination when it is issued.
    mem.dontneed(0);
    let n = read(
        &mut ring,
        opcode::Read::new(fd, mem.page(0), PAGE as u32)
            .offset(0)
            .build(),
    );
    assert_eq!(n, PAGE as i32);
    assert_eq!(mem.bytes(0), vec![0x55; PAGE]);
    ring.submitter().unregister_buffers().unwrap();
}
