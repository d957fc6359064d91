//! A minimal RESP2 client over one `TcpStream`: the request encoder, the
//! reply parser, and a connection that queues requests, sends them in one
//! write (so a caller can pipeline) and reads replies in order.
//!
//! The parser takes any bytes a server sends: a reply that is not complete
//! yet is `Ok(None)` (read more and parse again), a malformed one is a
//! [`ProtocolError`], never a panic. Lengths are bounded ([`MAX_BULK`],
//! [`MAX_ARRAY`], [`MAX_LINE`], [`MAX_DEPTH`]) so a hostile reply cannot
//! make the client allocate without limit or recurse without end.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::string::{String, ToString};
use std::time::Duration;
use std::vec::Vec;
use std::{format, vec};

/// The longest bulk string accepted (Redis's `proto-max-bulk-len`
/// default).
pub const MAX_BULK: usize = 512 << 20;
/// The most elements of one array.
pub const MAX_ARRAY: usize = 1 << 24;
/// The longest simple-string, error or integer line, CRLF excluded.
pub const MAX_LINE: usize = 64 << 10;
/// The deepest nesting of arrays.
pub const MAX_DEPTH: usize = 16;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(Vec<u8>),
    /// `-ERR ...`: the text after the `-`.
    Error(Vec<u8>),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `$-1`: the null bulk string (GET of a missing key).
    Nil,
    /// `*2\r\n...`.
    Array(Vec<Reply>),
    /// `*-1`: the null array.
    NilArray,
}

impl Reply {
    /// A short description for error messages: the type and, for short
    /// text replies, the text.
    pub fn describe(&self) -> String {
        let text = |b: &[u8]| {
            let s = String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
            if b.len() > 80 {
                s + "..."
            } else {
                s
            }
        };
        match self {
            Reply::Simple(s) => format!("simple string '{}'", text(s)),
            Reply::Error(e) => format!("error '{}'", text(e)),
            Reply::Integer(i) => format!("integer {i}"),
            Reply::Bulk(b) => format!("bulk string of {} bytes", b.len()),
            Reply::Nil => "null bulk string".to_string(),
            Reply::Array(a) => format!("array of {} elements", a.len()),
            Reply::NilArray => "null array".to_string(),
        }
    }
}

/// A reply the parser rejects, with the offset of the offending byte in
/// the buffer it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// Offset in the parsed buffer.
    pub at: usize,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply at byte {}: {}", self.at, self.what)
    }
}

fn bad<T>(at: usize, what: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError {
        at,
        what: what.into(),
    })
}

/// Parses one reply from the start of `buf`: `Ok(Some((reply, bytes
/// used)))`, `Ok(None)` if `buf` holds only part of a reply, or the
/// reason it is malformed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(buf, 0, 0)
}

/// The line starting at `pos` (without its CRLF) and the position after
/// the CRLF; `None` if the CRLF has not arrived.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[pos..];
    let Some(lf) = rest.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') else {
        if rest.len() >= MAX_LINE + 2 {
            return bad(pos, format!("line longer than {MAX_LINE} bytes"));
        }
        return Ok(None);
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return bad(pos + lf, "line ends in LF without CR");
    }
    Ok(Some((&rest[..lf - 1], pos + lf + 1)))
}

/// The decimal integer `text` (optional `-`, at least one digit).
fn integer(text: &[u8], at: usize) -> Result<i64, ProtocolError> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return bad(
            at,
            format!("'{}' is not an integer", String::from_utf8_lossy(text)),
        );
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
        {
            Some(n) => n,
            None => return bad(at, "integer out of range"),
        };
    }
    Ok(if neg { -n } else { n })
}

/// A length field: -1 (null), or `0..=max`.
fn length(text: &[u8], at: usize, max: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
    match integer(text, at)? {
        -1 => Ok(None),
        n if n < 0 => bad(at, format!("{what} length {n}")),
        n if n as u64 > max as u64 => bad(at, format!("{what} length {n} above {max}")),
        n => Ok(Some(n as usize)),
    }
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    if !b"+-:$*".contains(&kind) {
        return bad(
            pos,
            format!(
                "unknown reply type byte 0x{kind:02x} ('{}')",
                kind.escape_ascii()
            ),
        );
    }
    let Some((text, next)) = line(buf, pos + 1)? else {
        return Ok(None);
    };
    let at = pos + 1;
    let reply = match kind {
        b'+' => (Reply::Simple(text.to_vec()), next),
        b'-' => (Reply::Error(text.to_vec()), next),
        b':' => (Reply::Integer(integer(text, at)?), next),
        b'$' => match length(text, at, MAX_BULK, "bulk string")? {
            None => (Reply::Nil, next),
            Some(n) => {
                let end = next + n;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return bad(
                        end,
                        format!("bulk string of {n} bytes not followed by CRLF"),
                    );
                }
                (Reply::Bulk(buf[next..end].to_vec()), end + 2)
            }
        },
        b'*' => match length(text, at, MAX_ARRAY, "array")? {
            None => (Reply::NilArray, next),
            Some(n) => {
                if depth >= MAX_DEPTH {
                    return bad(pos, format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                // Never trust the count for the allocation: the elements
                // have to arrive first.
                let mut items = Vec::with_capacity(n.min(1024));
                let mut p = next;
                for _ in 0..n {
                    let Some((item, q)) = parse_at(buf, p, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    p = q;
                }
                (Reply::Array(items), p)
            }
        },
        // Checked above.
        _ => return bad(pos, "unknown reply type"),
    };
    Ok(Some(reply))
}

/// Appends the request `args` (a command and its arguments) to `out` as
/// a RESP array of bulk strings.
pub fn encode_request(args: &[&[u8]], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Why a connection failed. Every one of these leaves the connection
/// unusable.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting, sending or receiving failed (refused, reset, timed
    /// out, ...).
    Io {
        addr: String,
        action: &'static str,
        source: io::Error,
    },
    /// The server closed the connection.
    Closed { addr: String },
    /// The server sent something that is not RESP2.
    Protocol { addr: String, error: ProtocolError },
}

impl ClientError {
    /// True if the server went away (refused, reset, closed, no reply in
    /// time), as opposed to sending a malformed reply.
    pub fn lost(&self) -> bool {
        !matches!(self, ClientError::Protocol { .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io {
                addr,
                action,
                source,
            } => {
                let what = match source.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        "no reply in time (timed out)".to_string()
                    }
                    _ => source.to_string(),
                };
                write!(f, "{addr}: {action}: {what}")
            }
            ClientError::Closed { addr } => {
                write!(f, "{addr}: the server closed the connection")
            }
            ClientError::Protocol { addr, error } => write!(f, "{addr}: {error}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// One connection to a RESP server: requests are queued
/// ([`Connection::queue`]), sent together ([`Connection::flush`]), and
/// their replies read in order ([`Connection::read_reply`]).
pub struct Connection {
    stream: TcpStream,
    addr: String,
    /// Received bytes: `buf[start..end]` not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Requests queued, not sent yet.
    out: Vec<u8>,
}

impl Connection {
    /// Connects to `host:port` with `TCP_NODELAY`; `timeout` bounds the
    /// connect and every read and write.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Connection, ClientError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let io = |action, source| ClientError::Io {
            addr: addr.clone(),
            action,
            source,
        };
        let mut last = None;
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| io("resolving the address", e))?;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(io("connecting", e)),
            (None, None) => {
                return Err(io(
                    "resolving the address",
                    io::Error::new(io::ErrorKind::NotFound, "no address"),
                ))
            }
        };
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| io("setting socket options", e))?;
        Ok(Connection {
            stream,
            addr,
            buf: vec![0; 16 << 10],
            start: 0,
            end: 0,
            out: Vec::with_capacity(16 << 10),
        })
    }

    /// `host:port` as connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues the request `args` (sent by the next [`Connection::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode_request(args, &mut self.out);
    }

    /// Sends every queued request.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        r.map_err(|source| ClientError::Io {
            addr: self.addr.clone(),
            action: "sending",
            source,
        })
    }

    /// Reads the next reply (of the oldest request sent and not answered
    /// yet).
    pub fn read_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            match parse_reply(&self.buf[self.start..self.end]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.end {
                        (self.start, self.end) = (0, 0);
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(mut error) => {
                    error.at += self.start;
                    return Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        error,
                    });
                }
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    (self.start, self.end) = (0, self.end - self.start);
                } else {
                    let n = self.buf.len() * 2;
                    self.buf.resize(n, 0);
                }
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        addr: self.addr.clone(),
                    })
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        addr: self.addr.clone(),
                        action: "receiving",
                        source,
                    })
                }
            }
        }
    }

    /// Sends `args` and reads its reply (everything queued before goes
    /// too, and its replies must have been read).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        self.queue(args);
        self.flush()?;
        self.read_reply()
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
