//! Child processes of the benchmarks (peers like `redis-server`, `fio`
//! and vmcache, the servers under test, guests under `dbos run`) that end
//! with the benchmark: a benchmark killed mid-run (SIGKILL, a crash)
//! leaves no server listening and no guest running behind it.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child `cmd` starts receive SIGKILL when the thread that
/// starts it ends (Linux's parent-death signal). Start children from the
/// thread that waits for them: the benchmarks' children are started and
/// reaped by one thread, the section that runs them.
pub fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed; prctl is a plain system
    // call that allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::thread::spawn(|| {
            dies_with_parent(Command::new("sleep").arg("60"))
                .spawn()
                .expect("sleep")
        })
        .join()
        .unwrap();
        // The thread that started it has ended: the child is killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
