//! The Redis-protocol server (`dbos-kv serve`) tested as its users meet
//! it: the binary started on a free loopback port and driven by a real
//! client (the `redis` crate) or, where the exact bytes matter (hostile
//! clients, error texts), by raw sockets. Replies are compared with what
//! Redis documents for each command.

use redis::{Commands, Connection, RedisResult, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
            .args(["serve", "--dir"])
            .arg(dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--size",
                "16M",
                "--log",
                "4M",
                "--max-size",
                "256M",
            ])
            .args(if extra.contains(&"--pool") {
                &[][..]
            } else {
                &["--pool", "8M"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dbos-kv serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let port = loop {
            line.clear();
            let n = out.read_line(&mut line).expect("read the server's output");
            assert!(n > 0, "the server exited before listening");
            if let Some(addr) = line
                .trim()
                .rsplit(" on ")
                .next()
                .filter(|_| line.contains("serving"))
            {
                break addr.rsplit(':').next().unwrap().parse().expect("a port");
            }
        };
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server { child, port }
    }

    fn conn(&self) -> Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .expect("connect")
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends raw bytes and returns what arrives within `wait` (or until
    /// the server closes the connection).
    fn raw(&self, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (mut got, mut closed) = (Vec::new(), false);
        let end = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        (got, closed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's error reply, as `CODE detail`.
fn err<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    let e = r.expect_err("an error reply");
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

fn cmd(c: &mut Connection, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

#[test]
fn string_commands_reply_as_redis_documents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert_eq!(c.get::<_, Option<String>>("nope").unwrap(), None);
    // SET's options.
    assert_eq!(cmd(&mut c, &["SET", "k", "w", "NX"]).unwrap(), Value::Nil);
    assert_eq!(cmd(&mut c, &["SET", "k2", "w", "XX"]).unwrap(), Value::Nil);
    assert_eq!(
        cmd(&mut c, &["SET", "k", "w", "XX", "GET"]).unwrap(),
        bulk("v")
    );
    assert_eq!(
        cmd(&mut c, &["SET", "new", "x", "GET"]).unwrap(),
        Value::Nil
    );
    assert_eq!(
        cmd(&mut c, &["SET", "k", "w", "NX", "XX"]).map_err(|e| e.detail().map(String::from)),
        Err(Some("syntax error".into()))
    );
    assert_eq!(
        err(cmd(&mut c, &["SET", "k", "w", "EX", "0"])),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        err(cmd(&mut c, &["SET", "k", "w", "EX", "x"])),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err(cmd(&mut c, &["SET", "k", "w", "EX", "10", "PX", "10"])),
        "ERR syntax error"
    );
    assert_eq!(
        cmd(&mut c, &["SET", "t", "1", "EX", "100"]).unwrap(),
        Value::Okay
    );
    assert_eq!(c.ttl::<_, i64>("t").unwrap(), 100);
    assert_eq!(
        cmd(&mut c, &["SET", "t", "2", "KEEPTTL"]).unwrap(),
        Value::Okay
    );
    assert!(c.pttl::<_, i64>("t").unwrap() > 98_000);
    assert_eq!(cmd(&mut c, &["SET", "t", "3"]).unwrap(), Value::Okay);
    assert_eq!(
        c.ttl::<_, i64>("t").unwrap(),
        -1,
        "a plain SET clears the expiry"
    );
    // SETNX, GETSET, GETDEL.
    assert_eq!(cmd(&mut c, &["SETNX", "k", "z"]).unwrap(), Value::Int(0));
    assert_eq!(
        cmd(&mut c, &["SETNX", "fresh", "z"]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(cmd(&mut c, &["GETSET", "fresh", "y"]).unwrap(), bulk("z"));
    assert_eq!(cmd(&mut c, &["GETDEL", "fresh"]).unwrap(), bulk("y"));
    assert_eq!(cmd(&mut c, &["GETDEL", "fresh"]).unwrap(), Value::Nil);
    // MSET, MGET, MSETNX.
    assert_eq!(
        cmd(&mut c, &["MSET", "a", "1", "b", "2"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut c, &["MGET", "a", "nope", "b"]).unwrap(),
        Value::Array(vec![bulk("1"), Value::Nil, bulk("2")])
    );
    assert_eq!(
        err(cmd(&mut c, &["MSET", "a", "1", "b"])),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        cmd(&mut c, &["MSETNX", "c", "3", "a", "9"]).unwrap(),
        Value::Int(0)
    );
    assert_eq!(
        c.get::<_, Option<String>>("c").unwrap(),
        None,
        "MSETNX sets none if one exists"
    );
    assert_eq!(
        cmd(&mut c, &["MSETNX", "c", "3", "d", "4"]).unwrap(),
        Value::Int(1)
    );
    // Counters.
    assert_eq!(c.incr::<_, _, i64>("n", 1).unwrap(), 1);
    assert_eq!(cmd(&mut c, &["INCRBY", "n", "41"]).unwrap(), Value::Int(42));
    assert_eq!(cmd(&mut c, &["DECR", "n"]).unwrap(), Value::Int(41));
    assert_eq!(cmd(&mut c, &["DECRBY", "n", "50"]).unwrap(), Value::Int(-9));
    assert_eq!(
        err(cmd(&mut c, &["INCR", "k"])),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cmd(&mut c, &["SET", "max", "9223372036854775807"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        err(cmd(&mut c, &["INCR", "max"])),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        err(cmd(&mut c, &["INCRBY", "n", "1.5"])),
        "ERR value is not an integer or out of range"
    );
    // APPEND, STRLEN, GETRANGE, SETRANGE.
    assert_eq!(
        cmd(&mut c, &["APPEND", "s", "Hello"]).unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        cmd(&mut c, &["APPEND", "s", " World"]).unwrap(),
        Value::Int(11)
    );
    assert_eq!(cmd(&mut c, &["STRLEN", "s"]).unwrap(), Value::Int(11));
    assert_eq!(cmd(&mut c, &["STRLEN", "nope"]).unwrap(), Value::Int(0));
    assert_eq!(
        cmd(&mut c, &["GETRANGE", "s", "0", "4"]).unwrap(),
        bulk("Hello")
    );
    assert_eq!(
        cmd(&mut c, &["GETRANGE", "s", "-5", "-1"]).unwrap(),
        bulk("World")
    );
    assert_eq!(
        cmd(&mut c, &["SETRANGE", "s", "6", "Redis"]).unwrap(),
        Value::Int(11)
    );
    assert_eq!(c.get::<_, String>("s").unwrap(), "Hello Redis");
    assert_eq!(
        cmd(&mut c, &["SETRANGE", "pad", "3", "x"]).unwrap(),
        Value::Int(4)
    );
    assert_eq!(c.get::<_, Vec<u8>>("pad").unwrap(), b"\0\0\0x");
    assert_eq!(
        err(cmd(&mut c, &["SETRANGE", "pad", "-1", "x"])),
        "ERR offset is out of range"
    );
    // Binary keys and values survive.
    let key = [0u8, 255, 13, 10, 36];
    let val: Vec<u8> = (0..=255u8).collect();
    let _: () = c.set(&key[..], &val[..]).unwrap();
    assert_eq!(c.get::<_, Vec<u8>>(&key[..]).unwrap(), val);
    // A value of 1 MiB - 9 bytes is the btree engine's largest.
    let big = vec![7u8; (1 << 20) - 9];
    let _: () = c.set("big", &big[..]).unwrap();
    assert_eq!(c.get::<_, Vec<u8>>("big").unwrap(), big);
    let too_big = vec![7u8; 1 << 20];
    assert!(err(c.set::<_, _, ()>("big", &too_big[..]))
        .starts_with("ERR string exceeds maximum allowed size"));
}

#[test]
fn key_commands_scans_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    for i in 0..300 {
        let _: () = c.set(format!("user:{i:03}"), i).unwrap();
    }
    let _: () = c.set("other", "x").unwrap();
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(301));
    assert_eq!(
        cmd(&mut c, &["EXISTS", "other", "other", "nope"]).unwrap(),
        Value::Int(2)
    );
    assert_eq!(
        cmd(&mut c, &["TYPE", "other"]).unwrap(),
        Value::SimpleString("string".into())
    );
    assert_eq!(
        cmd(&mut c, &["TYPE", "nope"]).unwrap(),
        Value::SimpleString("none".into())
    );
    // KEYS with a pattern.
    let mut keys: Vec<String> = c.keys("user:1?0").unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "user:100", "user:110", "user:120", "user:130", "user:140", "user:150", "user:160",
            "user:170", "user:180", "user:190"
        ]
    );
    // SCAN visits every key exactly once, in pages of about COUNT.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, page): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(50)
            .query(&mut c)
            .unwrap();
        assert!(page.len() <= 50);
        seen.extend(page);
        rounds += 1;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    let want: Vec<String> = (0..300).map(|i| format!("user:{i:03}")).collect();
    assert_eq!(seen, want);
    assert!(rounds >= 6, "{rounds} rounds");
    assert_eq!(err(cmd(&mut c, &["SCAN", "12345"])), "ERR invalid cursor");
    // DBOS.RANGE: ordered, inclusive, limited.
    assert_eq!(
        cmd(&mut c, &["DBOS.RANGE", "user:010", "user:012"]).unwrap(),
        Value::Array(vec![
            bulk("user:010"),
            bulk("10"),
            bulk("user:011"),
            bulk("11"),
            bulk("user:012"),
            bulk("12")
        ])
    );
    assert_eq!(
        cmd(&mut c, &["DBOS.RANGE", "user:2", "user:3", "LIMIT", "2"]).unwrap(),
        Value::Array(vec![
            bulk("user:200"),
            bulk("200"),
            bulk("user:201"),
            bulk("201")
        ])
    );
    // DEL, UNLINK, RENAME.
    assert_eq!(
        cmd(&mut c, &["DEL", "user:000", "user:001", "nope"]).unwrap(),
        Value::Int(2)
    );
    assert_eq!(cmd(&mut c, &["UNLINK", "user:002"]).unwrap(), Value::Int(1));
    assert_eq!(
        cmd(&mut c, &["RENAME", "other", "moved"]).unwrap(),
        Value::Okay
    );
    assert_eq!(c.get::<_, Option<String>>("other").unwrap(), None);
    assert_eq!(c.get::<_, String>("moved").unwrap(), "x");
    assert_eq!(
        err(cmd(&mut c, &["RENAME", "nope", "x"])),
        "ERR no such key"
    );
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(298));
    assert_eq!(cmd(&mut c, &["FLUSHDB"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(0));
    assert_eq!(cmd(&mut c, &["FLUSHALL", "SYNC"]).unwrap(), Value::Okay);
}

#[test]
fn expiry_works_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(cmd(&mut c, &["TTL", "k"]).unwrap(), Value::Int(-1));
    assert_eq!(cmd(&mut c, &["TTL", "nope"]).unwrap(), Value::Int(-2));
    assert_eq!(
        cmd(&mut c, &["EXPIRE", "nope", "10"]).unwrap(),
        Value::Int(0)
    );
    assert_eq!(cmd(&mut c, &["EXPIRE", "k", "100"]).unwrap(), Value::Int(1));
    assert_eq!(cmd(&mut c, &["TTL", "k"]).unwrap(), Value::Int(100));
    assert_eq!(
        cmd(&mut c, &["EXPIRE", "k", "50", "GT"]).unwrap(),
        Value::Int(0)
    );
    assert_eq!(
        cmd(&mut c, &["EXPIRE", "k", "50", "LT"]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(
        cmd(&mut c, &["EXPIRE", "k", "70", "NX"]).unwrap(),
        Value::Int(0)
    );
    assert_eq!(cmd(&mut c, &["PERSIST", "k"]).unwrap(), Value::Int(1));
    assert_eq!(cmd(&mut c, &["PERSIST", "k"]).unwrap(), Value::Int(0));
    assert_eq!(
        cmd(&mut c, &["PEXPIRE", "k", "300000"]).unwrap(),
        Value::Int(1)
    );
    let pttl: i64 = c.pttl("k").unwrap();
    assert!((299_000..=300_000).contains(&pttl), "{pttl}");
    // A key that expires vanishes from reads, scans and EXISTS.
    assert_eq!(
        cmd(&mut c, &["SET", "short", "v", "PX", "100"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut c, &["EXPIRE", "gone", "-1"]).unwrap(),
        Value::Int(0)
    );
    let _: () = c.set("now", "v").unwrap();
    assert_eq!(cmd(&mut c, &["EXPIRE", "now", "0"]).unwrap(), Value::Int(1));
    assert!(
        !c.exists::<_, bool>("now").unwrap(),
        "an expiry in the past deletes"
    );
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(c.get::<_, Option<String>>("short").unwrap(), None);
    assert!(!c.exists::<_, bool>("short").unwrap());
    assert_eq!(cmd(&mut c, &["TTL", "short"]).unwrap(), Value::Int(-2));
    let keys: Vec<String> = c.keys("*").unwrap();
    assert_eq!(keys, ["k"]);
    // Expiry is stored with the value: a restart (after a crash) keeps it.
    assert_eq!(
        cmd(&mut c, &["SET", "soon", "v", "PX", "1500"]).unwrap(),
        Value::Okay
    );
    server.kill();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let pttl: i64 = c.pttl("k").unwrap();
    assert!((280_000..=300_000).contains(&pttl), "{pttl}");
    let soon: i64 = c.pttl("soon").unwrap();
    assert!((0..=1500).contains(&soon), "{soon}");
    std::thread::sleep(Duration::from_millis(soon as u64 + 100));
    assert_eq!(c.get::<_, Option<String>>("soon").unwrap(), None);
}

#[test]
fn connection_and_server_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    assert_eq!(
        cmd(&mut c, &["PING"]).unwrap(),
        Value::SimpleString("PONG".into())
    );
    assert_eq!(cmd(&mut c, &["PING", "hi"]).unwrap(), bulk("hi"));
    assert_eq!(cmd(&mut c, &["ECHO", "x y"]).unwrap(), bulk("x y"));
    assert_eq!(cmd(&mut c, &["SELECT", "0"]).unwrap(), Value::Okay);
    assert_eq!(
        err(cmd(&mut c, &["SELECT", "1"])),
        "ERR DB index is out of range"
    );
    assert_eq!(
        err(cmd(&mut c, &["HELLO", "3"])),
        "NOPROTO unsupported protocol version"
    );
    let hello = cmd(&mut c, &["HELLO", "2"]).unwrap();
    let Value::Array(h) = hello else {
        panic!("{hello:?}")
    };
    assert_eq!(h[0], bulk("server"));
    assert_eq!(h[4], bulk("proto"));
    assert_eq!(h[5], Value::Int(2));
    // CLIENT.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert!(id > 0);
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]).unwrap(), Value::Nil);
    assert_eq!(
        cmd(&mut c, &["CLIENT", "SETNAME", "me"]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]).unwrap(), bulk("me"));
    assert_eq!(
        err(cmd(&mut c, &["CLIENT", "SETNAME", "a b"])),
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(
        err(cmd(&mut c, &["CLIENT", "KILL"])),
        "ERR unknown subcommand 'KILL'. Try CLIENT HELP."
    );
    let mut other = server.conn();
    let id2: i64 = redis::cmd("CLIENT").arg("ID").query(&mut other).unwrap();
    assert_ne!(id, id2);
    // Unknown commands and arity, with Redis's texts.
    assert_eq!(
        err(cmd(&mut c, &["NOSUCH", "a", "b"])),
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        err(cmd(&mut c, &["GET"])),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err(cmd(&mut c, &["GET", "a", "b"])),
        "ERR wrong number of arguments for 'get' command"
    );
    // COMMAND.
    let Value::Int(count) = cmd(&mut c, &["COMMAND", "COUNT"]).unwrap() else {
        panic!()
    };
    assert!(count >= 48);
    let info = cmd(&mut c, &["COMMAND", "INFO", "get", "nosuch"]).unwrap();
    let Value::Array(info) = info else { panic!() };
    let Value::Array(get) = &info[0] else {
        panic!("{info:?}")
    };
    assert_eq!(get[0], bulk("get"));
    assert_eq!(get[1], Value::Int(2));
    assert_eq!(
        (get[3].clone(), get[4].clone(), get[5].clone()),
        (Value::Int(1), Value::Int(1), Value::Int(1))
    );
    assert_eq!(info[1], Value::Nil);
    let Value::Array(docs) = cmd(&mut c, &["COMMAND", "DOCS", "set"]).unwrap() else {
        panic!()
    };
    assert_eq!(docs[0], bulk("set"));
    let Value::Array(all) = cmd(&mut c, &["COMMAND"]).unwrap() else {
        panic!()
    };
    assert_eq!(all.len() as i64, count);
    // CONFIG GET: what redis-benchmark asks at start.
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "save"]).unwrap(),
        Value::Array(vec![bulk("save"), bulk("")])
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "appendonly"]).unwrap(),
        Value::Array(vec![bulk("appendonly"), bulk("yes")])
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "nosuch"]).unwrap(),
        Value::Array(vec![])
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "maxclients", "500"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "maxclients"]).unwrap(),
        Value::Array(vec![bulk("maxclients"), bulk("500")])
    );
    assert_eq!(
        err(cmd(&mut c, &["CONFIG", "SET", "nosuch", "1"])),
        "ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"
    );
    // INFO: every section, and the dbos counters.
    let _: () = c.set("a", "1").unwrap();
    let _: Option<String> = c.get("a").unwrap();
    let _: Option<String> = c.get("nope").unwrap();
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for section in [
        "# Server",
        "# Clients",
        "# Persistence",
        "# Stats",
        "# Keyspace",
        "# Dbos",
    ] {
        assert!(info.contains(section), "{section} in {info}");
    }
    let field = |name: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in {info}"));
        line.split(':').nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(field("connected_clients"), 2);
    assert_eq!(field("keyspace_hits"), 1);
    assert_eq!(field("keyspace_misses"), 1);
    assert!(field("log_units") >= 1);
    assert!(field("log_writes") >= 1);
    assert!(info.contains("db0:keys=1,"), "{info}");
    let persistence: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
    assert!(persistence.starts_with("# Persistence\r\n") && !persistence.contains("# Server"));
    // SAVE backs up; LASTSAVE is a recent time; BGSAVE starts a backup.
    assert_eq!(cmd(&mut c, &["SAVE"]).unwrap(), Value::Okay);
    let Value::Int(t) = cmd(&mut c, &["LASTSAVE"]).unwrap() else {
        panic!()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 5..=now).contains(&t));
    assert_eq!(
        cmd(&mut c, &["BGSAVE"]).unwrap(),
        Value::SimpleString("Background saving started".into())
    );
    // QUIT answers OK and closes.
    assert_eq!(cmd(&mut c, &["QUIT"]).unwrap(), Value::Okay);
    assert!(cmd(&mut c, &["PING"]).is_err());
}

#[test]
fn multi_exec_is_atomic_and_queues_like_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("n", "10").unwrap();
    let (a, b, n): (String, i64, i64) = redis::pipe()
        .atomic()
        .set("a", "x")
        .ignore()
        .get("a")
        .incr("n", 5)
        .incr("n", 1)
        .query(&mut c)
        .map(|(a, b, n): (String, i64, i64)| (a, b, n))
        .unwrap();
    assert_eq!((a.as_str(), b, n), ("x", 15, 16));
    // Raw: QUEUED replies, errors at queue time abort EXEC.
    let (out, _) = server.raw(
        b"MULTI\r\nSET k v\r\nGET\r\nEXEC\r\nGET k\r\n",
        Duration::from_millis(300),
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'get' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"
    );
    // A runtime error inside EXEC fails that command only.
    let (out, _) = server.raw(
        b"MULTI\r\nSET s abc\r\nINCR s\r\nSET t 1\r\nEXEC\r\n",
        Duration::from_millis(300),
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n+OK\r\n"
    );
    let (out, _) = server.raw(
        b"EXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nSET d 1\r\nDISCARD\r\nGET d\r\n",
        Duration::from_millis(300),
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n+OK\r\n$-1\r\n"
    );
    // Concurrent INCRs lose nothing (the key locks).
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut c = server.conn();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let _: i64 = c.incr("counter", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.get::<_, i64>("counter").unwrap(), 800);
}

#[test]
fn multi_exec_blocks_are_all_or_nothing_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let server = Server::start(dir.path());
        let port = server.port;
        // Writers: each EXEC sets a{i} and b{i} to the same number; the
        // number of each acknowledged EXEC is recorded.
        let blocks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acked: Vec<_> = (0..3)
            .map(|w| {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
                let blocks = blocks.clone();
                std::thread::spawn(move || {
                    let mut c = client.get_connection().unwrap();
                    let mut last = None;
                    for n in 0u64.. {
                        let r: RedisResult<()> = redis::pipe()
                            .atomic()
                            .set(format!("a{w}"), n + round * 1_000_000)
                            .set(format!("pad{w}"), vec![n as u8; 3000])
                            .set(format!("b{w}"), n + round * 1_000_000)
                            .query(&mut c);
                        if r.is_err() {
                            break;
                        }
                        last = Some(n + round * 1_000_000);
                        blocks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    last
                })
            })
            .collect();
        // Killed once blocks are being acknowledged (however loaded the
        // machine), later in each round.
        let deadline = Instant::now() + Duration::from_secs(60);
        while blocks.load(std::sync::atomic::Ordering::Relaxed) < 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50 + 100 * round));
        server.kill();
        let acked: Vec<Option<u64>> = acked.into_iter().map(|t| t.join().unwrap()).collect();
        let server = Server::start(dir.path());
        let mut c = server.conn();
        for (w, last) in acked.iter().enumerate() {
            let a: Option<u64> = c.get(format!("a{w}")).unwrap();
            let b: Option<u64> = c.get(format!("b{w}")).unwrap();
            assert_eq!(a, b, "round {round} writer {w}: a block half applied");
            if let Some(last) = last {
                // The acknowledged block is there, or the one in flight.
                let a = a.expect("an acknowledged block is lost");
                assert!(
                    a == *last || a == last + 1,
                    "round {round} writer {w}: {a} after ack {last}"
                );
            }
        }
        assert!(
            acked.iter().any(|a| a.is_some()),
            "no block was acknowledged"
        );
        server.kill();
    }
}

#[test]
fn pipelining_and_a_thousand_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.set(format!("p{i}"), i).ignore();
    }
    for i in 0..2000 {
        pipe.get(format!("p{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(got, (0..2000).collect::<Vec<i64>>());
    // A thousand connections open at once, each served.
    let mut conns: Vec<Connection> = (0..1000).map(|_| server.conn()).collect();
    for (i, c) in conns.iter_mut().enumerate().step_by(7) {
        let _: () = c.set(format!("c{i}"), i).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate().step_by(7) {
        assert_eq!(c.get::<_, i64>(format!("c{i}")).unwrap(), i as i64);
    }
    let info: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
    assert!(info.contains("connected_clients:1001\r\n"), "{info}");
}

#[test]
fn hostile_clients_get_an_error_and_harm_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("k", "v").unwrap();
    let expect_closed = |bytes: &[u8], reply: &str| {
        let (out, closed) = server.raw(bytes, Duration::from_secs(2));
        assert_eq!(
            String::from_utf8_lossy(&out),
            reply,
            "for {:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            closed,
            "the connection stays open after {:?}",
            String::from_utf8_lossy(bytes)
        );
    };
    expect_closed(
        b"*1\r\n$9223372036854775808\r\n",
        "-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_closed(
        b"*2\r\n$3\r\nGET\r\n$-3\r\n",
        "-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_closed(
        b"*99999999999\r\n",
        "-ERR Protocol error: invalid multibulk length\r\n",
    );
    expect_closed(
        b"*1\r\n:5\r\n",
        "-ERR Protocol error: expected '$', got ':'\r\n",
    );
    expect_closed(
        b"PING\r\n*1\r\n$4\r\nPINGxx",
        "+PONG\r\n-ERR Protocol error: bulk string not terminated by CRLF\r\n",
    );
    expect_closed(
        b"SET \"unbalanced\r\n",
        "-ERR Protocol error: unbalanced quotes in request\r\n",
    );
    // A huge inline line without a newline.
    expect_closed(
        &vec![b'a'; 100_000],
        "-ERR Protocol error: too big inline request\r\n",
    );
    // Over proto-max-bulk-len (lowered here): refused at the length.
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "2048"]).unwrap(),
        Value::Okay
    );
    expect_closed(
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4096\r\n",
        "-ERR Protocol error: invalid bulk length\r\n",
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "16777216"]).unwrap(),
        Value::Okay
    );
    // A bulk announced but never sent completely, then the client goes.
    let (out, _) = server.raw(
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nshort",
        Duration::from_millis(200),
    );
    assert!(out.is_empty());
    // Inline commands work (telnet).
    let (out, _) = server.raw(b"GET k\r\nEXISTS k\n", Duration::from_millis(300));
    assert_eq!(out, b"$1\r\nv\r\n:1\r\n");
    // An unknown command with 10,000 arguments: the error names only the
    // first few, as Redis's does.
    let mut many = redis::cmd("NOSUCH");
    for i in 0..10_000 {
        many.arg(format!("argument-{i}"));
    }
    let e = many.query::<()>(&mut c).unwrap_err();
    let detail = e.detail().unwrap_or_default().to_string();
    assert!(
        detail.starts_with("unknown command 'NOSUCH', with args beginning with: 'argument-0' "),
        "{detail}"
    );
    assert!(detail.len() < 300, "{} bytes of error", detail.len());
    // A MULTI block is bounded by client-query-buffer-limit: past it the
    // command is refused and EXEC discards the block.
    assert_eq!(
        cmd(
            &mut c,
            &["CONFIG", "SET", "client-query-buffer-limit", "1048576"]
        )
        .unwrap(),
        Value::Okay
    );
    let value = "x".repeat(100_000);
    let mut block = b"MULTI\r\n".to_vec();
    for i in 0..12 {
        block.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n$2\r\nm{}\r\n$100000\r\n{value}\r\n",
                i % 10
            )
            .as_bytes(),
        );
    }
    block.extend_from_slice(b"EXEC\r\nGET m1\r\n");
    let (out, _) = server.raw(&block, Duration::from_secs(2));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("+QUEUED").count(), 10, "{text}");
    assert!(
        text.contains("-ERR MULTI block over 1048576 bytes"),
        "{text}"
    );
    assert!(
        text.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"),
        "{text}"
    );
    // Nothing above harmed the data or the other client.
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory_and_no_one_else_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("v", vec![1u8; 64 << 10]).unwrap();
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss(server.child.id());
    // 20,000 GETs of a 64 KiB value (1.3 GB of replies), never read.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n".repeat(1000);
    for _ in 0..20 {
        if slow.write_all(&req).is_err() {
            break; // the server stopped reading it: back-pressure
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // Others are served at once.
    let t = Instant::now();
    for i in 0..50 {
        let _: () = c.set(format!("x{i}"), i).unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    let after = rss(server.child.id());
    assert!(
        after < before + (64 << 20),
        "RSS grew from {before} to {after} bytes"
    );
    drop(slow);
}

#[test]
fn ten_thousand_connections_are_served_or_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.conn();
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "maxclients", "5000"]).unwrap(),
        Value::Okay
    );
    // Connected from 10 threads: a connect whose SYN meets a full accept
    // queue waits a second for its retry, and these overlap.
    let port = server.port;
    let mut socks = Vec::new();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                (0..1000)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        socks.extend(t.join().unwrap());
    }
    // Those over maxclients got Redis's error and were closed.
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    let mut buf = [0u8; 64];
    for s in socks.iter_mut() {
        s.set_nonblocking(true).unwrap();
        if let Ok(n) = s.read(&mut buf) {
            if n > 0 {
                assert_eq!(&buf[..n], b"-ERR max number of clients reached\r\n");
                refused += 1;
            }
        }
    }
    // With this test's client, 5,000 are connected: the other 5,001 were
    // refused.
    assert_eq!(refused, 5001, "connections over the limit refused");
    let info: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
    assert!(info.contains("connected_clients:5000\r\n"), "{info}");
    drop(socks);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get::<_, Option<String>>("nope").unwrap(), None);
}

#[test]
fn shutdown_checkpoints_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut c = server.conn();
    let _: () = c.set("k", "v").unwrap();
    let _ = cmd(&mut c, &["SHUTDOWN"]);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Reopened: nothing to replay, the data is there.
    let out = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(["check", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replayed 0 log units"), "{text}");
    assert!(text.contains("check passed: 1 entries"), "{text}");
}

/// Where a tool is installed (`None`: not installed). Under `CI=true` the
/// tools `.ci/run` installs must be there.
fn installed(tool: &str) -> Option<()> {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is not installed, and CI=true (.ci/run installs it)"
        );
        eprintln!("{tool}: not installed; this check did not run");
    }
    found.then_some(())
}

#[test]
fn redis_cli_and_redis_benchmark_work_unchanged() {
    if installed("redis-cli").is_none() || installed("redis-benchmark").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port.to_string();
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&["INCRBY", "n", "5"]), "5\n");
    assert_eq!(cli(&["--scan"]), "greeting\nn\n");
    assert!(cli(&["INFO", "persistence"]).contains("rdb_last_bgsave_status:ok"));
    // redis-benchmark asks CONFIG GET save and appendonly at start, then
    // runs; every request must succeed.
    let out = Command::new("redis-benchmark")
        .args([
            "-p", &port, "-t", "set,get", "-n", "3000", "-c", "20", "-P", "4", "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let last = |name: &str| {
        text.rsplit('\r')
            .chain(text.lines())
            .find(|l| {
                l.trim_start().starts_with(&format!("{name}: "))
                    && l.contains("requests per second")
            })
            .map(str::to_string)
    };
    assert!(last("SET").is_some() && last("GET").is_some(), "{text}");
    let mut c = server.conn();
    assert_eq!(
        c.get::<_, Vec<u8>>("key:__rand_int__").unwrap().len(),
        3,
        "redis-benchmark's SETs (3-byte values) are stored"
    );
}

/// Polls `INFO persistence` until no save runs; returns the section.
fn wait_for_save(c: &mut Connection) -> String {
    let t = Instant::now();
    loop {
        let info: String = redis::cmd("INFO").arg("persistence").query(c).unwrap();
        if info.contains("rdb_bgsave_in_progress:0") {
            return info;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the save never ended: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bgsave_makes_an_online_backup_that_opens_as_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers go on during the backup: each block sets a{w} and b{w} to
    // the same number (and a 3000-byte pad, so pages split and move).
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let _: () = redis::pipe()
                        .atomic()
                        .set(format!("a{w}"), n)
                        .set(format!("pad{w}:{}", n % 50), vec![n as u8; 3000])
                        .set(format!("b{w}"), n)
                        .query(&mut c)
                        .unwrap();
                }
                n
            })
        })
        .collect();
    let mut c = server.conn();
    // Every writer has had blocks acknowledged (however loaded the
    // machine) before the backup starts.
    let t = Instant::now();
    while (0..3).any(|w| {
        c.get::<_, Option<u64>>(format!("a{w}"))
            .unwrap()
            .is_none_or(|n| n < 5)
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the writers never wrote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        cmd(&mut c, &["BGSAVE"]).unwrap(),
        Value::SimpleString("Background saving started".into())
    );
    let info = wait_for_save(&mut c);
    assert!(info.contains("rdb_saves:1\r\n"), "{info}");
    assert!(info.contains("rdb_last_bgsave_status:ok"), "{info}");
    assert!(!info.contains("rdb_last_file_size:0\r\n"), "{info}");
    // Writers went on during it.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last: Vec<u64> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    drop(server);
    // The backup opens as a store of its own: every block whole, none
    // from after the backup ended.
    let backup = dir.path().join("backup");
    let out = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(["check", "--dir"])
        .arg(&backup)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("check passed"),
        "{text} {out:?}"
    );
    let server = Server::start(&backup);
    let mut c = server.conn();
    let mut found = 0;
    for (w, last) in last.iter().enumerate() {
        let a: Option<u64> = c.get(format!("a{w}")).unwrap();
        let b: Option<u64> = c.get(format!("b{w}")).unwrap();
        assert_eq!(a, b, "writer {w}: a block half in the backup");
        if let Some(a) = a {
            assert!(
                a < *last,
                "writer {w}: {a} in the backup, {last} written in all"
            );
            found += 1;
        }
    }
    assert_eq!(found, 3, "the writers' blocks before the backup are in it");
}

const MEMORY: &[&str] = &["--engine", "memory", "--memory", "64M"];

#[test]
fn the_memory_engine_serves_the_same_commands_and_snapshots_on_bgsave() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), MEMORY);
    let mut c = server.conn();
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(c.incr::<_, _, i64>("n", 5).unwrap(), 5);
    assert_eq!(
        cmd(&mut c, &["SET", "e", "1", "EX", "1000"]).unwrap(),
        Value::Okay
    );
    let (a, b): (String, i64) = redis::pipe()
        .atomic()
        .set("a", "x")
        .ignore()
        .get("a")
        .incr("n", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a.as_str(), b), ("x", 6));
    for i in 0..500 {
        let _: () = c.set(format!("user:{i}"), i).unwrap();
    }
    // SCAN over the hash table's slots: every key once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, page): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("user:*")
            .query(&mut c)
            .unwrap();
        seen.extend(page);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    let mut want: Vec<String> = (0..500).map(|i| format!("user:{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(cmd(&mut c, &["DBSIZE"]).unwrap(), Value::Int(504));
    assert_eq!(
        err(cmd(&mut c, &["DBOS.RANGE", "a", "z"])),
        "ERR DBOS.RANGE needs an ordered engine; the 'memory' engine is not"
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "appendonly"]).unwrap(),
        Value::Array(vec![bulk("appendonly"), bulk("no")])
    );
    // BGSAVE, then a write after it: a restart after SIGKILL has what the
    // snapshot holds, not the later write.
    assert_eq!(
        cmd(&mut c, &["BGSAVE"]).unwrap(),
        Value::SimpleString("Background saving started".into())
    );
    let info = wait_for_save(&mut c);
    assert!(info.contains("rdb_saves:1\r\n"), "{info}");
    assert!(info.contains("rdb_changes_since_last_save:0\r\n"), "{info}");
    assert!(info.contains("latest_fork_usec:"), "{info}");
    let _: () = c.set("after", "1").unwrap();
    server.kill();
    let server = Server::start_with(dir.path(), MEMORY);
    let mut c = server.conn();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert_eq!(c.get::<_, i64>("n").unwrap(), 6);
    assert_eq!(c.get::<_, i64>("user:499").unwrap(), 499);
    let ttl: i64 = c.ttl("e").unwrap();
    assert!((990..=1000).contains(&ttl), "expiry kept: {ttl}");
    assert_eq!(c.get::<_, Option<String>>("after").unwrap(), None);
    // A second server on the same directory is refused.
    let second = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .args(MEMORY)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another dbos-kv serves this directory")
    );
}

#[test]
fn memory_engine_writes_acknowledged_before_a_completed_snapshot_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), MEMORY);
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(
        (0..3)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                for n in 1u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let r: RedisResult<()> = redis::pipe()
                        .atomic()
                        .set(format!("a{w}"), n)
                        .set(format!("b{w}"), n)
                        .query(&mut c);
                    if r.is_err() {
                        break;
                    }
                    acked[w].store(n, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut c = server.conn();
    let t = Instant::now();
    while acked
        .iter()
        .any(|a| a.load(std::sync::atomic::Ordering::Relaxed) < 5)
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the writers never wrote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before: Vec<u64> = acked
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let _: () = redis::cmd("BGSAVE").query(&mut c).unwrap();
    let info = wait_for_save(&mut c);
    assert!(info.contains("rdb_last_bgsave_status:ok"), "{info}");
    std::thread::sleep(Duration::from_millis(100));
    server.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let server = Server::start_with(dir.path(), MEMORY);
    let mut c = server.conn();
    for (w, before) in before.iter().enumerate() {
        let a: u64 = c.get(format!("a{w}")).unwrap();
        let b: u64 = c.get(format!("b{w}")).unwrap();
        assert_eq!(a, b, "writer {w}: half a block in the snapshot");
        assert!(
            a >= *before,
            "writer {w}: {a} found, {before} acknowledged before BGSAVE"
        );
    }
}

#[test]
fn a_damaged_snapshot_is_refused_with_its_offset_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), MEMORY);
    let mut c = server.conn();
    for i in 0..100 {
        let _: () = c.set(format!("k{i}"), "some value").unwrap();
    }
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    server.kill();
    let dump = dir.path().join("dump.dbkv");
    let mut bytes = std::fs::read(&dump).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&dump, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .args(MEMORY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("dump.dbkv") && text.contains("offset"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&dump).unwrap(),
        bytes,
        "the damaged file is kept as it was"
    );
}

#[test]
fn periodic_saves_and_a_full_heap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--engine", "memory", "--memory", "4M", "--save-every", "1"],
    );
    let mut c = server.conn();
    assert_eq!(
        cmd(&mut c, &["CONFIG", "GET", "save"]).unwrap(),
        Value::Array(vec![bulk("save"), bulk("1 1")])
    );
    let _: () = c.set("kept", "yes").unwrap();
    // Fill the heap: the write that does not fit gets OOM, nothing lost.
    let value = vec![9u8; 100_000];
    let mut stored = 0;
    let oom = loop {
        match c.set::<_, _, ()>(format!("big{stored}"), &value[..]) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "a 4 MiB heap took {stored} values of 100 kB");
    };
    assert_eq!(oom.code(), Some("OOM"), "{oom}");
    assert!(stored > 5, "{stored}");
    assert_eq!(c.get::<_, Vec<u8>>("big0").unwrap(), value);
    let _: () = c.del("big0").unwrap();
    let _: () = c.set("after-free", "fits").unwrap();
    // Within two seconds a periodic save has taken it all.
    std::thread::sleep(Duration::from_millis(2500));
    let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
    assert!(!info.contains("rdb_saves:0\r\n"), "{info}");
    server.kill();
    let server = Server::start_with(dir.path(), &["--engine", "memory", "--memory", "4M"]);
    let mut c = server.conn();
    assert_eq!(c.get::<_, String>("kept").unwrap(), "yes");
    assert_eq!(c.get::<_, String>("after-free").unwrap(), "fits");
}

/// `dbos-kv bench ARGS` against `port`.
fn bench(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(["bench", "--port", &port.to_string()])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_load_generator_drives_every_workload_and_checks_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = bench(
        server.port,
        &[
            "--workload",
            "a",
            "--records",
            "2000",
            "--operations",
            "3000",
            "--clients",
            "4",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in ["b", "c", "d", "e", "f"] {
        let out = bench(
            server.port,
            &[
                "--workload",
                w,
                "--records",
                "2000",
                "--operations",
                "1500",
                "--clients",
                "3",
                "--phase",
                "run",
                "--pipeline",
                "4",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "workload {w}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut c = server.conn();
    let Value::Int(keys) = cmd(&mut c, &["DBSIZE"]).unwrap() else {
        panic!()
    };
    assert!(keys >= 2000, "{keys}");
}

#[test]
fn every_write_the_load_generator_saw_acknowledged_survives_a_sigkill() {
    for round in 0..2 {
        // A store and acks file of its own per round: the acks file's
        // versions start at 1 in each bench, so a store holding a newer
        // version from an earlier bench would read as "wrong".
        let dir = tempfile::tempdir().unwrap();
        let acks = dir.path().join("acks");
        let data = dir.path().join("data");
        let server = Server::start(&data);
        let child = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
            .args(["bench", "--port", &server.port.to_string()])
            .args([
                "--workload",
                "a",
                "--records",
                "800",
                "--operations",
                "100000000",
            ])
            .args(["--clients", "6", "--distribution", "uniform", "--seed"])
            .arg(round.to_string())
            .arg("--acks")
            .arg(&acks)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill once updates are being acknowledged (versions above 1).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&acks).unwrap_or_default();
            let updates = text
                .lines()
                .filter(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    f.len() == 2 && f[0].parse::<u64>().is_ok() && f[1] != "1"
                })
                .count();
            if updates >= 300 + 200 * round {
                break;
            }
            assert!(Instant::now() < deadline, "no updates acknowledged");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Server::start(&data);
        let out = bench(
            server.port,
            &[
                "--verify",
                "--acks",
                acks.to_str().unwrap(),
                "--clients",
                "2",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "round {round}: {text}");
        assert!(text.contains(" 0 missing, 0 wrong, 0 errors"), "{text}");
        assert!(text.contains("verify: PASSED"), "{text}");
    }
}

#[test]
fn expired_keys_are_swept_away_on_both_engines() {
    for engine in [&[][..], MEMORY] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with(dir.path(), engine);
        let mut c = server.conn();
        for i in 0..50 {
            assert_eq!(
                cmd(&mut c, &["SET", &format!("short{i}"), "v", "PX", "100"]).unwrap(),
                Value::Okay
            );
        }
        for i in 0..5 {
            let _: () = c.set(format!("kept{i}"), "v").unwrap();
        }
        let _: () = c.set("later", "v").unwrap();
        assert_eq!(
            cmd(&mut c, &["EXPIRE", "later", "1000"]).unwrap(),
            Value::Int(1)
        );
        // Without a read of them, the sweep deletes them: DBSIZE falls.
        let t = Instant::now();
        loop {
            let Value::Int(n) = cmd(&mut c, &["DBSIZE"]).unwrap() else {
                panic!()
            };
            if n == 6 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{engine:?}: DBSIZE {n}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let info: String = redis::cmd("INFO").arg("stats").query(&mut c).unwrap();
        assert!(info.contains("expired_keys:50\r\n"), "{engine:?}: {info}");
        assert_eq!(c.get::<_, String>("kept0").unwrap(), "v");
        assert_eq!(c.get::<_, String>("later").unwrap(), "v");
        // INFO keyspace counts the keys with an expiry, as Redis does:
        // "later" now; then also kept1, and not "later" once it persists.
        let keyspace =
            |c: &mut Connection| -> String { redis::cmd("INFO").arg("keyspace").query(c).unwrap() };
        let info = keyspace(&mut c);
        assert!(info.contains("db0:keys=6,expires=1,"), "{engine:?}: {info}");
        cmd(&mut c, &["EXPIRE", "kept1", "1000"]).unwrap();
        cmd(&mut c, &["PERSIST", "later"]).unwrap();
        cmd(&mut c, &["SET", "kept2", "w", "EX", "1000"]).unwrap();
        let info = keyspace(&mut c);
        assert!(info.contains("db0:keys=6,expires=2,"), "{engine:?}: {info}");
        // avg_ttl: the mean time to live of those two (1,000 s each), as
        // active expiry's next whole pass (every 100 ms) finds it.
        let t = Instant::now();
        loop {
            let info = keyspace(&mut c);
            let avg: u64 = info
                .split("avg_ttl=")
                .nth(1)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{engine:?}: {info}"));
            if (990_000..=1_000_000).contains(&avg) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{engine:?}: avg_ttl {avg}: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A client that sends its request and closes its side at once (the
/// request and the end of its input arrive together), and one that
/// closes after its reply, are both answered and then closed by the
/// server: it never keeps a connection whose peer has gone (a server
/// that stopped reading at a short read and missed the end of input
/// would keep such connections forever, up to `maxclients`).
#[test]
fn clients_that_close_after_a_request_are_answered_and_closed() {
    use std::net::Shutdown;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    for round in 0..50 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        if round % 2 == 1 {
            // Close only after the reply came.
            let mut reply = [0u8; 7];
            c.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, b"+PONG\r\n");
            c.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest)
                .unwrap_or_else(|e| panic!("round {round}: the server did not close: {e}"));
            assert!(rest.is_empty());
        } else {
            c.shutdown(Shutdown::Write).unwrap();
            let mut reply = Vec::new();
            c.read_to_end(&mut reply)
                .unwrap_or_else(|e| panic!("round {round}: the server did not close: {e}"));
            assert_eq!(reply, b"+PONG\r\n");
        }
    }
    // Only this connection is left (the count may trail the last close
    // by a moment).
    let mut conn = s.conn();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut conn).unwrap();
        if info.contains("connected_clients:1\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system) of process `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn busy_polling_loops_serve_and_then_sleep() {
    let dir = tempfile::tempdir().unwrap();
    // The memory engine's loops poll for 50 us after a busy round (the
    // default); a budget of 200 ms makes that polling visible.
    for (poll, busy) in [(None, false), (Some("200000"), true)] {
        let mut args = vec!["--engine", "memory", "--memory", "4M"];
        if let Some(us) = poll {
            args.extend(["--busy-poll", us]);
        }
        let server = Server::start_with(dir.path(), &args);
        let pid = server.child.id();
        let mut c = server.conn();
        for i in 0..2000 {
            let k = format!("k{}", i % 100);
            let () = redis::cmd("SET").arg(&k).arg(i).query(&mut c).unwrap();
        }
        let v: i64 = redis::cmd("GET").arg("k99").query(&mut c).unwrap();
        assert_eq!(v, 1999);
        if busy {
            // Right after a request the loop keeps polling: ~100 ms of its
            // CPU in the next 100 ms (10 ticks), at least 3 even if this
            // machine is shared.
            let before = cpu_ticks(pid);
            std::thread::sleep(Duration::from_millis(100));
            let spent = cpu_ticks(pid) - before;
            assert!(spent >= 3, "{spent} ticks while polling");
        }
        // Idle: the budget spent, the loop sleeps (active expiry wakes up
        // every 100 ms and rests: no key has an expiry).
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(1));
        let spent = cpu_ticks(pid) - before;
        assert!(
            spent <= 10,
            "{spent} ticks in an idle second (poll {poll:?})"
        );
        drop(c);
        server.kill();
    }
}

/// Voluntary context switches of each event loop thread (`dbos-kv-loopN`)
/// of process `pid`, by loop.
fn loop_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        if !name.starts_with("dbos-kv-loop") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        out.insert(name.trim().to_string(), n);
    }
    out
}

#[test]
fn connections_are_spread_over_the_event_loops() {
    let dir = tempfile::tempdir().unwrap();
    // Four loops. Four clients connect one after another (every loop is
    // woken by each; the first to accept would take them all) and then
    // take turns: each loop serves one, so each sleeps in epoll_wait after
    // each of its client's requests, while a loop without clients wakes
    // only at its 100 ms poll timeout.
    let server = Server::start_with(dir.path(), &["--threads", "4"]);
    let pid = server.child.id();
    let mut conns: Vec<Connection> = (0..4).map(|_| server.conn()).collect();
    let before = loop_switches(pid);
    assert_eq!(before.len(), 4, "event loops: {before:?}");
    let start = Instant::now();
    for i in 0..300 {
        for (n, c) in conns.iter_mut().enumerate() {
            let v: String = redis::cmd("ECHO").arg(format!("{n}:{i}")).query(c).unwrap();
            assert_eq!(v, format!("{n}:{i}"));
        }
    }
    let after = loop_switches(pid);
    let idle_wakes = start.elapsed().as_millis() as u64 / 100 + 5;
    for (name, n) in &after {
        let slept = n - before[name];
        assert!(
            slept >= 250 && slept > idle_wakes,
            "{name} slept {slept} times in 1,200 requests of 4 clients ({before:?} -> {after:?})"
        );
    }
    // A client that leaves frees its place: the next one is served by
    // the loop it left.
    drop(conns.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut c = server.conn();
    let before = loop_switches(pid);
    for i in 0..300 {
        let v: i64 = redis::cmd("ECHO").arg(i).query(&mut c).unwrap();
        assert_eq!(v, i);
        for c in &mut conns {
            let () = redis::cmd("PING").query(c).unwrap();
        }
    }
    let after = loop_switches(pid);
    for (name, n) in &after {
        assert!(n - before[name] >= 250, "{name}: {before:?} -> {after:?}");
    }
    server.kill();
}

/// `INFO dbos` field `name` of the server behind `c`.
fn dbos_counter(c: &mut Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("dbos").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} in {info}"))
        .trim()
        .parse()
        .unwrap()
}

/// A store twice its pool, read by 8 clients at once through one event
/// loop: lookups that miss the pool wait for their pages without blocking
/// the loop (counted: pages read asynchronously), writes and values in
/// overflow pages run the waiting way after the loop's reads in flight
/// (counted), and every reply is the right one, in order, pipelines
/// mixing reads and writes included.
#[test]
fn lookups_that_miss_the_pool_do_not_block_the_event_loop() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--pool", "1M", "--threads", "1"]);
    let value = |i: usize| -> Vec<u8> {
        // Every 100th value takes overflow pages (over a quarter page).
        let len = if i.is_multiple_of(100) { 3000 } else { 300 };
        std::iter::repeat_n(b'a' + (i % 26) as u8, len).collect()
    };
    let records = 6000;
    let mut c = server.conn();
    for chunk in (0..records).collect::<Vec<_>>().chunks(500) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET").arg(format!("k{i}")).arg(value(i)).ignore();
        }
        let () = p.query(&mut c).unwrap();
    }
    let async_before = dbos_counter(&mut c, "loop_async_reads");
    let waiting_before = dbos_counter(&mut c, "loop_waiting_runs");
    std::thread::scope(|s| {
        for t in 0..8usize {
            let server = &server;
            s.spawn(move || {
                let mut c = server.conn();
                for round in 0..20usize {
                    // 15 reads of keys spread over the store, a write and
                    // its read back, in one pipeline.
                    let keys: Vec<usize> = (0..15)
                        .map(|j| (t * 7919 + round * 3001 + j * 401) % records)
                        .collect();
                    let mut p = redis::pipe();
                    for &k in &keys[..8] {
                        p.cmd("GET").arg(format!("k{k}"));
                    }
                    let mine = format!("t{t}:{round}");
                    p.cmd("SET").arg(&mine).arg(round);
                    p.cmd("GET").arg(&mine);
                    p.cmd("MGET").arg(
                        keys[8..]
                            .iter()
                            .map(|k| format!("k{k}"))
                            .collect::<Vec<_>>(),
                    );
                    let (gets, set, back, mget): (Vec<Vec<u8>>, String, usize, Vec<Vec<u8>>) = {
                        let r: Vec<redis::Value> = p.query(&mut c).unwrap();
                        assert_eq!(r.len(), 11);
                        let gets = r[..8]
                            .iter()
                            .map(|v| redis::from_redis_value(v).unwrap())
                            .collect();
                        (
                            gets,
                            redis::from_redis_value(&r[8]).unwrap(),
                            redis::from_redis_value(&r[9]).unwrap(),
                            redis::from_redis_value(&r[10]).unwrap(),
                        )
                    };
                    for (k, v) in keys[..8].iter().zip(&gets) {
                        assert_eq!(*v, value(*k), "k{k}");
                    }
                    assert_eq!(set, "OK");
                    assert_eq!(back, round);
                    for (k, v) in keys[8..].iter().zip(&mget) {
                        assert_eq!(*v, value(*k), "k{k} in MGET");
                    }
                }
            });
        }
    });
    let async_reads = dbos_counter(&mut c, "loop_async_reads") - async_before;
    let waiting = dbos_counter(&mut c, "loop_waiting_runs") - waiting_before;
    assert!(
        async_reads >= 200,
        "{async_reads} pages read without blocking"
    );
    assert!(waiting >= 1, "{waiting} runs that waited");
    server.kill();
}
