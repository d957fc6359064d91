use super::*;
use std::net::TcpListener;
use std::thread;

fn parse_all(bytes: &[u8]) -> Reply {
    match parse_reply(bytes) {
        Ok(Some((r, n))) => {
            assert_eq!(n, bytes.len(), "consumed all of {:?}", bytes.escape_ascii());
            r
        }
        other => panic!("{:?}: {other:?}", bytes.escape_ascii().to_string()),
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

#[test]
fn parses_every_type() {
    assert_eq!(parse_all(b"+OK\r\n"), Reply::Simple(b"OK".to_vec()));
    assert_eq!(parse_all(b"+\r\n"), Reply::Simple(Vec::new()));
    assert_eq!(
        parse_all(b"-ERR unknown command 'DBOS.RANGE'\r\n"),
        Reply::Error(b"ERR unknown command 'DBOS.RANGE'".to_vec())
    );
    assert_eq!(parse_all(b":0\r\n"), Reply::Integer(0));
    assert_eq!(parse_all(b":-42\r\n"), Reply::Integer(-42));
    assert_eq!(
        parse_all(b":9223372036854775807\r\n"),
        Reply::Integer(i64::MAX)
    );
    assert_eq!(parse_all(b"$5\r\nhello\r\n"), bulk("hello"));
    assert_eq!(parse_all(b"$0\r\n\r\n"), bulk(""));
    // Binary and CRLF inside a bulk string.
    assert_eq!(
        parse_all(b"$4\r\n\r\n\0\xff\r\n"),
        Reply::Bulk(b"\r\n\0\xff".to_vec())
    );
    assert_eq!(parse_all(b"$-1\r\n"), Reply::Nil);
    assert_eq!(parse_all(b"*-1\r\n"), Reply::NilArray);
    assert_eq!(parse_all(b"*0\r\n"), Reply::Array(Vec::new()));
    assert_eq!(
        parse_all(b"*4\r\n$2\r\nk1\r\n$2\r\nv1\r\n$2\r\nk2\r\n$-1\r\n"),
        Reply::Array(vec![bulk("k1"), bulk("v1"), bulk("k2"), Reply::Nil])
    );
    assert_eq!(
        parse_all(b"*3\r\n:1\r\n*2\r\n+a\r\n-b\r\n*0\r\n"),
        Reply::Array(vec![
            Reply::Integer(1),
            Reply::Array(vec![
                Reply::Simple(b"a".to_vec()),
                Reply::Error(b"b".to_vec())
            ]),
            Reply::Array(Vec::new()),
        ])
    );
}

#[test]
fn leaves_what_follows_a_reply() {
    let buf = b"+OK\r\n$3\r\nabc\r\n:7";
    let (r, n) = parse_reply(buf).unwrap().unwrap();
    assert_eq!((r, n), (Reply::Simple(b"OK".to_vec()), 5));
    let (r, m) = parse_reply(&buf[n..]).unwrap().unwrap();
    assert_eq!((r, m), (bulk("abc"), 9));
    assert_eq!(parse_reply(&buf[n + m..]), Ok(None));
}

#[test]
fn every_prefix_of_a_reply_is_incomplete() {
    let replies: [&[u8]; 8] = [
        b"+OK\r\n",
        b"-ERR x\r\n",
        b":123\r\n",
        b"$5\r\nhello\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"*2\r\n$1\r\na\r\n*1\r\n:5\r\n",
        b"*-1\r\n",
    ];
    for full in replies {
        for cut in 0..full.len() {
            assert_eq!(
                parse_reply(&full[..cut]),
                Ok(None),
                "{:?} cut at {cut}",
                full.escape_ascii().to_string()
            );
        }
        parse_all(full);
    }
}

#[test]
fn malformed_replies_are_errors() {
    let cases: [(&[u8], &str); 16] = [
        (b"?what\r\n", "unknown reply type"),
        (b"OK\r\n", "unknown reply type"),
        (b"+OK\n", "LF without CR"),
        (b"\n", "unknown reply type"),
        (b":\r\n", "not an integer"),
        (b":12a\r\n", "not an integer"),
        (b":--1\r\n", "not an integer"),
        (b":99999999999999999999\r\n", "not an integer"),
        (b":9223372036854775808\r\n", "out of range"),
        (b"$-2\r\n", "bulk string length -2"),
        (b"$x\r\n", "not an integer"),
        (b"$3\r\nabcd\r\n", "not followed by CRLF"),
        (b"$600000000\r\n", "above"),
        (b"*-5\r\n", "array length -5"),
        (b"*99999999\r\n", "above"),
        (b"*2\r\n+a\r\n!\r\n", "unknown reply type"),
    ];
    for (bytes, what) in cases {
        match parse_reply(bytes) {
            Err(e) => assert!(
                e.what.contains(what),
                "{:?}: {e} does not say {what}",
                bytes.escape_ascii().to_string()
            ),
            other => panic!("{:?}: {other:?}", bytes.escape_ascii().to_string()),
        }
    }
    // The offset points into the buffer.
    let e = parse_reply(b"*1\r\n$3\r\nabcXY").unwrap_err();
    assert_eq!(e.at, 11);
    assert_eq!(
        e.to_string(),
        "malformed reply at byte 11: bulk string of 3 bytes not followed by CRLF"
    );
}

#[test]
fn hostile_replies_are_bounded() {
    // Nesting.
    let mut deep = Vec::new();
    for _ in 0..MAX_DEPTH + 1 {
        deep.extend_from_slice(b"*1\r\n");
    }
    deep.extend_from_slice(b":1\r\n");
    let e = parse_reply(&deep).unwrap_err();
    assert!(e.what.contains("nested"), "{e}");
    let ok = &deep[4..];
    assert!(matches!(parse_reply(ok), Ok(Some(_))));
    // A line that never ends.
    let long = vec![b'+'; MAX_LINE + 10];
    assert!(parse_reply(&long).unwrap_err().what.contains("longer"));
    assert_eq!(parse_reply(&long[..MAX_LINE]), Ok(None));
    // A huge announced array allocates nothing up front.
    assert_eq!(parse_reply(b"*16000000\r\n:1\r\n"), Ok(None));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = crate::workload::Rng::new(7);
    let alphabet = b"+-:$*\r\n0123456789-abc";
    for _ in 0..20_000 {
        let len = rng.below(24) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(8) == 0 {
                    rng.next_u64() as u8
                } else {
                    alphabet[rng.below(alphabet.len() as u64) as usize]
                }
            })
            .collect();
        if let Ok(Some((_, n))) = parse_reply(&bytes) {
            assert!(n <= bytes.len());
        }
    }
}

#[test]
fn encodes_requests() {
    let mut out = Vec::new();
    encode_request(&[b"SET", b"k", b""], &mut out);
    encode_request(&[b"GET", b"a\r\nb"], &mut out);
    assert_eq!(
        out,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n"
    );
}

/// A server on a free port that reads one request and answers with
/// `reply`, one byte per write, then closes.
fn one_shot_server(reply: &'static [u8]) -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut got = vec![0; 256];
        let n = s.read(&mut got).unwrap();
        got.truncate(n);
        for b in reply {
            s.write_all(&[*b]).unwrap();
            s.flush().unwrap();
        }
        got
    });
    (port, h)
}

#[test]
fn connection_reads_replies_delivered_byte_by_byte() {
    let (port, h) = one_shot_server(b"+OK\r\n$3\r\nabc\r\n*2\r\n$1\r\nk\r\n:5\r\n");
    let mut c = Connection::connect("127.0.0.1", port, Duration::from_secs(10)).unwrap();
    assert_eq!(c.addr(), std::format!("127.0.0.1:{port}"));
    c.queue(&[b"PING"]);
    c.flush().unwrap();
    assert_eq!(c.read_reply().unwrap(), Reply::Simple(b"OK".to_vec()));
    assert_eq!(c.read_reply().unwrap(), bulk("abc"));
    assert_eq!(
        c.read_reply().unwrap(),
        Reply::Array(vec![bulk("k"), Reply::Integer(5)])
    );
    assert_eq!(h.join().unwrap(), b"*1\r\n$4\r\nPING\r\n");
    // Then the server is gone.
    let e = c.read_reply().unwrap_err();
    assert!(e.lost(), "{e}");
    assert!(e.to_string().contains("closed the connection"), "{e}");
}

#[test]
fn connection_reports_a_malformed_reply() {
    let (port, h) = one_shot_server(b"$3\r\nabcde");
    let mut c = Connection::connect("127.0.0.1", port, Duration::from_secs(10)).unwrap();
    let e = c.call(&[b"GET", b"x"]).unwrap_err();
    assert!(!e.lost());
    assert!(e.to_string().contains("not followed by CRLF"), "{e}");
    h.join().unwrap();
}

#[test]
fn connection_grows_its_buffer_for_a_large_reply() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| {
        let mut v = b"$100000\r\n".to_vec();
        v.extend((0..100_000).map(|i| (i % 251) as u8));
        v.extend_from_slice(b"\r\n");
        v
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = [0; 64];
        let _ = s.read(&mut got).unwrap();
        s.write_all(big).unwrap();
    });
    let mut c = Connection::connect("127.0.0.1", port, Duration::from_secs(10)).unwrap();
    match c.call(&[b"GET", b"big"]).unwrap() {
        Reply::Bulk(b) => assert_eq!(b, big[9..big.len() - 2]),
        r => panic!("{r:?}"),
    }
    h.join().unwrap();
}

#[test]
fn connect_refused_is_a_lost_connection() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = match Connection::connect("127.0.0.1", port, Duration::from_secs(5)) {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(e.lost());
    let text = e.to_string();
    assert!(
        text.starts_with(&std::format!("127.0.0.1:{port}: connecting: ")),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}
