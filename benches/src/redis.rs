//! Redis's own snapshot stall, as a baseline for the snapshot benchmarks:
//! a `redis-server` child on a free loopback port (no persistence of its
//! own, DEBUG commands on), filled with 100-byte values to about a given
//! heap size (`DEBUG POPULATE`), then `BGSAVE` a few times, each followed
//! by `latest_fork_usec` from `INFO stats` (how long the fork stalled
//! the server). The server is shut down (`SHUTDOWN NOSAVE`, killed if it
//! does not exit) when the run ends, whatever happened.

use crate::child::dies_with_parent;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes per value, as the process snapshot workload stores them.
pub const VALUE_BYTES: usize = 100;

/// One filled server's measurements.
pub struct ForkStalls {
    /// Keys in the server.
    pub keys: u64,
    /// `used_memory` from `INFO memory` once filled, bytes.
    pub used_memory: u64,
    /// `latest_fork_usec` after each BGSAVE, microseconds.
    pub fork_usec: Vec<u64>,
}

/// A running `redis-server` child, shut down when dropped.
struct Server {
    child: Child,
    conn: Conn,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SHUTDOWN closes the connection instead of replying.
        let _ = self.conn.command(&["SHUTDOWN", "NOSAVE"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP connection.
struct Conn {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    fn command(&mut self, args: &[&str]) -> Result<String, String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("sending {}: {e}", args[0]))?;
        self.reply().map_err(|e| format!("{}: {e}", args.join(" ")))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(l.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(format!("reading the reply: {e}")),
        }
    }

    /// A reply: a simple string, an integer or a bulk string as text; an
    /// error reply is an `Err`.
    fn reply(&mut self) -> Result<String, String> {
        let l = self.line()?;
        let (kind, rest) = l.split_at(l.len().min(1));
        match kind {
            "+" | ":" => Ok(rest.into()),
            "-" => Err(format!("error reply: {rest}")),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| format!("a bad reply: {l:?}"))?;
                if n < 0 {
                    return Ok(String::new());
                }
                let mut buf = vec![0u8; n as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut buf)
                    .map_err(|e| format!("reading the reply: {e}"))?;
                buf.truncate(n as usize);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            _ => Err(format!("an unexpected reply: {l:?}")),
        }
    }

    /// Field `name` of `INFO section`, as a number.
    fn info(&mut self, section: &str, name: &str) -> Result<u64, String> {
        let text = self.command(&["INFO", section])?;
        info_field(&text, name).ok_or_else(|| format!("INFO {section} has no {name}"))
    }
}

/// Field `name` of an INFO reply, as a number.
pub fn info_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// A free loopback port (bound and released: another process may take it
/// before the server does, which makes the start fail with a reason).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Starts `bin` on a free port with its files in `dir` and connects.
fn start(bin: &str, dir: &Path) -> Result<Server, String> {
    let port = free_port()?;
    let log = dir.join(format!("redis-{port}.log"));
    let mut child = dies_with_parent(&mut Command::new(bin))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        .args(["--enable-debug-command", "yes"])
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {bin}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "{bin} exited at start ({status}): {}",
                tail.lines().last().unwrap_or("")
            ));
        }
        // Up once it answers.
        if let Ok(mut conn) = Conn::open(port) {
            if conn.command(&["PING"]).is_ok() {
                return Ok(Server { child, conn });
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{bin} did not answer on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `bin` (`redis-server`) with its files in `dir`, fills it with
/// 100-byte values until `used_memory` is about `heap_bytes`, and runs
/// `saves` BGSAVEs one after the other, reading `latest_fork_usec` after
/// each (`INFO stats`). The server is shut down at the end, or on any failure.
pub fn fork_stalls(
    bin: &str,
    dir: &Path,
    heap_bytes: u64,
    saves: usize,
) -> Result<ForkStalls, String> {
    let mut server = start(bin, dir)?;
    let c = &mut server.conn;
    let empty = c.info("memory", "used_memory")?;
    // A sample gives the bytes per key, then the rest in one call
    // (POPULATE skips the keys that exist).
    let sample = 10_000u64;
    let value = VALUE_BYTES.to_string();
    c.command(&["DEBUG", "POPULATE", &sample.to_string(), "key", &value])?;
    let used = c.info("memory", "used_memory")?;
    let per_key = (used.saturating_sub(empty) / sample).max(1);
    let keys = (heap_bytes.saturating_sub(empty) / per_key).max(sample);
    c.command(&["DEBUG", "POPULATE", &keys.to_string(), "key", &value])?;
    let used_memory = c.info("memory", "used_memory")?;
    let mut fork_usec = Vec::new();
    for _ in 0..saves {
        c.command(&["BGSAVE"])?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            std::thread::sleep(Duration::from_millis(5));
            if c.info("persistence", "rdb_bgsave_in_progress")? == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err("a BGSAVE did not end within 600 s".into());
            }
        }
        let status = c.command(&["INFO", "persistence"])?;
        if !status.contains("rdb_last_bgsave_status:ok") {
            return Err("a BGSAVE failed (rdb_last_bgsave_status is not ok)".into());
        }
        // In INFO stats (Redis 7), not in INFO persistence.
        fork_usec.push(c.info("stats", "latest_fork_usec")?);
    }
    let port = server.conn.stream.peer_addr().map_or(0, |a| a.port());
    drop(server);
    let _ = std::fs::remove_file(dir.join(format!("dump-{port}.rdb")));
    Ok(ForkStalls {
        keys,
        used_memory,
        fork_usec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_name() {
        let text = "# Persistence\r\nrdb_bgsave_in_progress:0\r\nlatest_fork_usec:1234\r\n";
        assert_eq!(info_field(text, "latest_fork_usec"), Some(1234));
        assert_eq!(info_field(text, "rdb_bgsave_in_progress"), Some(0));
        assert_eq!(info_field(text, "latest_fork"), None);
    }
}
