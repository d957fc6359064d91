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
        let pid = std::thread::spawn(|| {
            let child = dies_with_parent(Command::new("sleep").arg("60"))
                .spawn()
                .expect("sleep");
            child.id()
        })
        .join()
        .unwrap();
        // The starting thread has ended: the child is killed (and, not
        // reaped by anyone here, a zombie or gone).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still runs: {stat}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
