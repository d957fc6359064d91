//! A failed log write under the Redis-protocol server: the btree engine on
//! a queue pair over the power-cut disk model (`dbos_nvme::host::powercut`),
//! served by `dbos_kvstore::net::serve` on a loopback port and driven by
//! real clients (the `redis` crate). Once the disk fails a write, no write
//! whose log write may not be stable is acknowledged (its client gets an
//! error or a closed connection, never `OK`), every later write is refused
//! with the engine's error, and a power cut afterwards loses none of the
//! writes acknowledged before.

mod common;

use common::{config as config_with, device, queues};
use dbos_bufferpool::host::{block_device, ProcessBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{Config, Layout};
use dbos_kvstore::net::{serve, wall_clock, Options};
use dbos_kvstore::server::btree::BtreeEngine;
use dbos_kvstore::server::{Config as ServerConfig, Shared};
use dbos_kvstore::Store;
use dbos_nvme::host::testing::OpMatch;
use dbos_nvme::host::Device;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LAYOUT: Layout = Layout {
    log_blocks: 64,
    data_pages: 256,
};
const FRAMES: usize = 64;

type TestStore = Store<ProcessBlockDevice, HashPool<ProcessBlockDevice>>;

fn config() -> Config {
    config_with(32)
}

fn pool(dev: &Device) -> Vec<ProcessBlockDevice> {
    vec![block_device(dev, 64).expect("queue")]
}

fn format(dev: &Device) -> TestStore {
    let (l, d) = queues(dev);
    Store::format(l, d, LAYOUT, config(), |s| {
        HashPool::new(pool(dev), s.config(FRAMES))
    })
    .expect("format")
}

fn open(dev: &Device) -> TestStore {
    let (l, d) = queues(dev);
    Store::open(l, d, config(), |s| {
        HashPool::new(pool(dev), s.config(FRAMES))
    })
    .expect("open after the power cut")
    .0
}

/// A server on `store` at a free loopback port, in a thread of its own.
struct Server {
    port: u16,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(store: TestStore) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let engine = BtreeEngine::new(store, wall_clock);
        let shared = Arc::new(Shared::new(engine, ServerConfig::default(), wall_clock));
        let options = Options {
            threads: 1,
            busy_poll: Duration::ZERO,
            async_reads: true,
        };
        let thread = std::thread::spawn(move || serve(shared, listener, options));
        Server { port, thread }
    }

    /// `SHUTDOWN NOSAVE` works on a failed engine, and the server ends.
    fn shut_down(self) {
        let mut c = connect(self.port);
        let r = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<String>(&mut c);
        // Success is a closed connection, not a reply.
        let e = r.expect_err("SHUTDOWN answers nothing");
        assert_ne!(e.kind(), redis::ErrorKind::ResponseError, "{e}");
        self.thread
            .join()
            .expect("the server thread")
            .expect("the server ended without an error");
    }
}

fn connect(port: u16) -> redis::Connection {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("client")
        .get_connection()
        .expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c
}

fn set(c: &mut redis::Connection, k: &str, v: &str) -> redis::RedisResult<String> {
    redis::cmd("SET").arg(k).arg(v).query(c)
}

/// Every `(key, value)` in `acked` is in the store.
fn assert_all_there(store: &TestStore, acked: &[(String, String)]) {
    let mut got = Vec::new();
    for (k, v) in acked {
        assert!(
            store.get(k.as_bytes(), &mut got).expect("read"),
            "acknowledged {k} is lost"
        );
        // The btree engine stores a one-byte header before the value (no
        // expiry).
        assert_eq!(&got[1..], v.as_bytes(), "acknowledged {k}");
    }
}

#[test]
fn a_failed_log_write_acknowledges_nothing_more_and_loses_nothing_acknowledged() {
    let bytes = LAYOUT.blocks() as usize * 4096;
    let (dev, pc) = device(vec![0; bytes]);
    let server = Server::start(format(&dev));
    let port = server.port;

    // One client: 20 writes acknowledged, then the disk fails every write.
    let mut a = connect(port);
    let mut acked = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("a{i}"), format!("value {i}"));
        assert_eq!(set(&mut a, &k, &v).expect("SET before the fault"), "OK");
        acked.push((k, v));
    }
    pc.fail(OpMatch::Write, libc::EIO);
    let r = set(&mut a, "a-fail", "never acknowledged");
    assert!(
        r.is_err(),
        "a write whose log write failed was answered {r:?}"
    );

    // A new client is refused with the engine's error, and keeps its
    // connection (only the write failed).
    let mut b = connect(port);
    let e = set(&mut b, "b0", "x").expect_err("a write after the log failed");
    let text = e.to_string();
    assert!(
        text.contains("the storage engine failed and stopped"),
        "the error says why: {text}"
    );
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut b).expect("PING"),
        "PONG"
    );
    let e = redis::cmd("MSET")
        .arg("b1")
        .arg("1")
        .arg("b2")
        .arg("2")
        .query::<String>(&mut b)
        .expect_err("MSET after the log failed");
    assert!(e.to_string().contains("failed"), "{e}");

    // A power cut now: every acknowledged write is found after recovery.
    let (image, _) = pc.crash_image(7);
    server.shut_down();
    let (dev2, _pc2) = device(image);
    let store = open(&dev2);
    assert_all_there(&store, &acked);
    assert!(
        !store.get(b"b0", &mut Vec::new()).expect("read"),
        "refused, not written"
    );
}

#[test]
fn writers_on_many_connections_when_the_log_fails_keep_every_acknowledged_write() {
    let bytes = LAYOUT.blocks() as usize * 4096;
    let (dev, pc) = device(vec![0; bytes]);
    let server = Server::start(format(&dev));
    let port = server.port;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut c = connect(port);
                let mut answered = 0u64;
                for i in 0.. {
                    let (k, v) = (format!("w{w}-{i}"), format!("{w} {i}"));
                    match set(&mut c, &k, &v) {
                        Ok(ok) => {
                            assert_eq!(ok, "OK");
                            acked.lock().unwrap().push((k, v));
                            answered += 1;
                        }
                        // The first failure ends this writer: its
                        // connection is closed or its write refused.
                        Err(_) => return answered,
                    }
                }
                unreachable!()
            })
        })
        .collect();
    // Let the writers commit in groups for a while, then fail the disk.
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    pc.fail(OpMatch::Write, libc::EIO);
    let answered: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(answered as usize, acked.len());
    assert!(acked.len() >= 200);
    let (image, _) = pc.crash_image(11);
    server.shut_down();
    let (dev2, _pc2) = device(image);
    assert_all_there(&open(&dev2), &acked);
}
