//! RESP2, the Redis serialization protocol, sans-I/O: requests parsed from
//! a byte buffer, replies appended to one. No socket in sight: the process
//! server (sockets) and the guest (a network queue) feed the same code,
//! and tests feed it bytes directly.
//!
//! A request is either an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`,
//! what every client library sends) or an inline command (`GET k\r\n`, what
//! a person types into telnet). [`parse_request`] returns `Ok(None)` while
//! the buffer holds only part of a request ("need more bytes", never an
//! error), the request's arguments as ranges of the buffer once it is
//! complete, or a [`ProtoError`] that the server answers with the error's
//! text before it closes the connection, as Redis does.
//!
//! Limits ([`Limits`], Redis's `proto-max-bulk-len` and the most arguments
//! a request may have) are checked on the length fields, before anything
//! is allocated or waited for: a bulk length of 2^63 is an error at once,
//! not a wait for 2^63 bytes.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// The parser's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (Redis's `proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Most arguments in one request (Redis: 1024 * 1024).
    pub max_args: usize,
    /// Longest inline request (Redis: 64 KiB).
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk: 16 << 20,
            max_args: 1 << 20,
            max_inline: 64 << 10,
        }
    }
}

/// A request the client sent wrongly: the connection is answered with
/// [`fmt::Display`]'s text as an error and closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// `*N` with N not a number or over the limit.
    MultibulkLength,
    /// `$N` with N not a number, negative or over the limit.
    BulkLength,
    /// An array element that is not a bulk string.
    ExpectedBulk(u8),
    /// A bulk string not followed by CRLF.
    BulkTerminator,
    /// An inline request longer than the limit without a newline.
    InlineTooBig,
    /// An inline request with an unterminated quote.
    UnbalancedQuotes,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ProtoError::MultibulkLength => f.write_str("invalid multibulk length"),
            ProtoError::BulkLength => f.write_str("invalid bulk length"),
            ProtoError::ExpectedBulk(b) => {
                write!(f, "expected '$', got '{}'", char::from(*b).escape_default())
            }
            ProtoError::BulkTerminator => f.write_str("bulk string not terminated by CRLF"),
            ProtoError::InlineTooBig => f.write_str("too big inline request"),
            ProtoError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
        }
    }
}

/// A complete request: its arguments as ranges of the buffer it was
/// parsed from (inline arguments in quotes are unescaped into `owned`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the buffer the request took.
    pub consumed: usize,
    args: Vec<Arg>,
    owned: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Arg {
    Input(Range<usize>),
    Owned(Range<usize>),
}

impl Request {
    /// The arguments, borrowed from `input` (the buffer passed to
    /// [`parse_request`]) or from the request itself.
    pub fn args<'a>(&'a self, input: &'a [u8]) -> Vec<&'a [u8]> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Input(r) => &input[r.clone()],
                Arg::Owned(r) => &self.owned[r.clone()],
            })
            .collect()
    }

    /// How many arguments (0 for an empty inline line, which is skipped).
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// True for an empty inline line.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// Parses the request at the start of `input`: `Ok(None)` if it is not
/// complete yet.
pub fn parse_request(input: &[u8], limits: &Limits) -> Result<Option<Request>, ProtoError> {
    match input.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(input, limits),
        Some(_) => parse_inline(input, limits),
    }
}

/// The line starting at `at` (without its CRLF) and where the next starts.
fn line(input: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    let nl = input[at..].iter().position(|&b| b == b'\n')? + at;
    let end = if nl > at && input[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((at..end, nl + 1))
}

/// A decimal length field; `None` if not a number or over `max`.
fn length(digits: &[u8], max: usize) -> Option<i64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let (neg, digits) = match digits[0] {
        b'-' => (true, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        if n > max as u64 {
            return None;
        }
    }
    let n = n as i64;
    Some(if neg { -n } else { n })
}

fn parse_multibulk(input: &[u8], limits: &Limits) -> Result<Option<Request>, ProtoError> {
    let Some((head, mut at)) = line(input, 1) else {
        if input.len() > 32 {
            return Err(ProtoError::MultibulkLength);
        }
        return Ok(None);
    };
    let count = length(&input[head], limits.max_args).ok_or(ProtoError::MultibulkLength)?;
    let mut req = Request::default();
    if count <= 0 {
        req.consumed = at;
        return Ok(Some(req));
    }
    // Reserve only what the bytes present could hold: a count of a million
    // arguments announced in 10 bytes allocates nothing yet.
    req.args
        .reserve((count as usize).min((input.len() - at) / 4 + 1));
    for _ in 0..count {
        let Some(&kind) = input.get(at) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(ProtoError::ExpectedBulk(kind));
        }
        let Some((len_field, data)) = line(input, at + 1) else {
            if input.len() - at > 32 {
                return Err(ProtoError::BulkLength);
            }
            return Ok(None);
        };
        let len = length(&input[len_field], limits.max_bulk).ok_or(ProtoError::BulkLength)?;
        if len < 0 {
            return Err(ProtoError::BulkLength);
        }
        let end = data + len as usize;
        if input.len() < end + 2 {
            return Ok(None);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(ProtoError::BulkTerminator);
        }
        req.args.push(Arg::Input(data..end));
        at = end + 2;
    }
    req.consumed = at;
    Ok(Some(req))
}

fn parse_inline(input: &[u8], limits: &Limits) -> Result<Option<Request>, ProtoError> {
    let Some((text, next)) = line(input, 0) else {
        if input.len() > limits.max_inline {
            return Err(ProtoError::InlineTooBig);
        }
        return Ok(None);
    };
    if text.len() > limits.max_inline {
        return Err(ProtoError::InlineTooBig);
    }
    let mut req = Request {
        consumed: next,
        ..Request::default()
    };
    let text = &input[text];
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if text[i] == b'"' || text[i] == b'\'' {
            // A quoted argument: "..." with \n, \r, \t, \\, \" and \xHH;
            // '...' with \' only.
            let quote = text[i];
            let start = req.owned.len();
            i += 1;
            loop {
                let Some(&c) = text.get(i) else {
                    return Err(ProtoError::UnbalancedQuotes);
                };
                i += 1;
                if c == quote {
                    // The closing quote must end the argument.
                    if text.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return Err(ProtoError::UnbalancedQuotes);
                    }
                    break;
                }
                if c == b'\\' && i < text.len() {
                    let e = text[i];
                    i += 1;
                    let byte = match (quote, e) {
                        (b'"', b'n') => b'\n',
                        (b'"', b'r') => b'\r',
                        (b'"', b't') => b'\t',
                        (b'"', b'x')
                            if text.len() >= i + 2
                                && text[i].is_ascii_hexdigit()
                                && text[i + 1].is_ascii_hexdigit() =>
                        {
                            let h = hex(text[i]) * 16 + hex(text[i + 1]);
                            i += 2;
                            h
                        }
                        (b'"', e) => e,
                        (_, b'\'') => b'\'',
                        (_, e) => {
                            req.owned.push(b'\\');
                            e
                        }
                    };
                    req.owned.push(byte);
                } else {
                    req.owned.push(c);
                }
            }
            req.args.push(Arg::Owned(start..req.owned.len()));
        } else {
            let start = i;
            while i < text.len() && !text[i].is_ascii_whitespace() {
                i += 1;
            }
            // Ranges of the line are ranges of the input (it starts at 0).
            req.args.push(Arg::Input(start..i));
        }
    }
    Ok(Some(req))
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// Appends RESP2 replies to a buffer.
pub struct Reply<'a>(pub &'a mut Vec<u8>);

impl Reply<'_> {
    /// `+text`
    pub fn simple(&mut self, text: &str) {
        self.0.push(b'+');
        self.0.extend_from_slice(text.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    /// `+OK`
    pub fn ok(&mut self) {
        self.0.extend_from_slice(b"+OK\r\n");
    }

    /// `-text`: the text starts with its error code (`ERR`, `WRONGTYPE`).
    /// Line breaks in it are replaced by spaces (a reply is one line).
    pub fn error(&mut self, text: &str) {
        self.0.push(b'-');
        self.0.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.0.extend_from_slice(b"\r\n");
    }

    /// `:n`
    pub fn int(&mut self, n: i64) {
        self.0.push(b':');
        push_int(self.0, n);
        self.0.extend_from_slice(b"\r\n");
    }

    /// `$len\r\nbytes`
    pub fn bulk(&mut self, bytes: &[u8]) {
        self.0.push(b'$');
        push_int(self.0, bytes.len() as i64);
        self.0.extend_from_slice(b"\r\n");
        self.0.extend_from_slice(bytes);
        self.0.extend_from_slice(b"\r\n");
    }

    /// `$-1`, the null bulk string.
    pub fn null(&mut self) {
        self.0.extend_from_slice(b"$-1\r\n");
    }

    /// `*-1`, the null array.
    pub fn null_array(&mut self) {
        self.0.extend_from_slice(b"*-1\r\n");
    }

    /// `*n`: an array of the `n` replies that follow.
    pub fn array(&mut self, n: usize) {
        self.0.push(b'*');
        push_int(self.0, n as i64);
        self.0.extend_from_slice(b"\r\n");
    }
}

/// Appends the decimal digits of `n`.
pub fn push_int(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    type Parsed = Option<(Vec<Vec<u8>>, usize)>;

    fn parse(input: &[u8]) -> Result<Parsed, ProtoError> {
        parse_request(input, &Limits::default()).map(|r| {
            r.map(|r| {
                (
                    r.args(input).iter().map(|a| a.to_vec()).collect(),
                    r.consumed,
                )
            })
        })
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_multibulk_request_is_parsed_and_every_prefix_is_incomplete() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n";
        assert_eq!(
            parse(req),
            Ok(Some((args(&["SET", "k", "va\r\nl"]), req.len())))
        );
        for n in 0..req.len() {
            assert_eq!(parse(&req[..n]), Ok(None), "prefix of {n} bytes");
        }
        // Two pipelined requests: the first is returned with its length.
        let two = [&req[..], b"*1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(
            parse(&two),
            Ok(Some((args(&["SET", "k", "va\r\nl"]), req.len())))
        );
    }

    #[test]
    fn inline_requests_split_on_spaces_and_unquote() {
        assert_eq!(
            parse(b"set  k \"a b\\x41\\n\" 'it\\'s'\r\n"),
            Ok(Some((args(&["set", "k", "a bA\n", "it's"]), 28)))
        );
        assert_eq!(parse(b"PING\n"), Ok(Some((args(&["PING"]), 5))));
        assert_eq!(parse(b"\r\n"), Ok(Some((Vec::new(), 2))));
        assert_eq!(parse(b"PIN"), Ok(None));
        assert_eq!(parse(b"set \"abc\r\n"), Err(ProtoError::UnbalancedQuotes));
        assert_eq!(
            parse(b"set \"abc\"x\r\n"),
            Err(ProtoError::UnbalancedQuotes)
        );
    }

    #[test]
    fn hostile_lengths_are_refused_before_anything_is_allocated_or_awaited() {
        assert_eq!(
            parse(b"*1\r\n$9223372036854775808\r\n"),
            Err(ProtoError::BulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n$99999999999999999999999\r\n"),
            Err(ProtoError::BulkLength)
        );
        assert_eq!(parse(b"*1\r\n$-5\r\n"), Err(ProtoError::BulkLength));
        assert_eq!(parse(b"*1\r\n$x\r\n"), Err(ProtoError::BulkLength));
        assert_eq!(
            parse(b"*1\r\n$17000000\r\n"),
            Err(ProtoError::BulkLength),
            "over proto-max-bulk-len"
        );
        assert_eq!(
            parse(b"*9223372036854775807\r\n"),
            Err(ProtoError::MultibulkLength)
        );
        assert_eq!(parse(b"*abc\r\n"), Err(ProtoError::MultibulkLength));
        // A header line that never ends.
        assert_eq!(parse(&[b'*'; 40]), Err(ProtoError::MultibulkLength));
        assert_eq!(parse(b"*1\r\n+OK\r\n"), Err(ProtoError::ExpectedBulk(b'+')));
        assert_eq!(parse(b"*1\r\n$2\r\nabcd"), Err(ProtoError::BulkTerminator));
        let long = alloc::vec![b'a'; 70 << 10];
        assert_eq!(parse(&long), Err(ProtoError::InlineTooBig));
        // Empty and negative counts are empty requests, as in Redis.
        assert_eq!(parse(b"*0\r\n"), Ok(Some((Vec::new(), 4))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((Vec::new(), 5))));
    }

    #[test]
    fn error_texts_are_redis_s() {
        assert_eq!(
            ProtoError::BulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            ProtoError::ExpectedBulk(b'+').to_string(),
            "Protocol error: expected '$', got '+'"
        );
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = Vec::new();
        let mut r = Reply(&mut out);
        r.ok();
        r.simple("PONG");
        r.error("ERR bad\r\nthing");
        r.int(-42);
        r.int(i64::MIN);
        r.bulk(b"hi");
        r.null();
        r.array(2);
        r.null_array();
        assert_eq!(
            out,
            b"+OK\r\n+PONG\r\n-ERR bad  thing\r\n:-42\r\n:-9223372036854775808\r\n$2\r\nhi\r\n$-1\r\n*2\r\n*-1\r\n"
        );
    }
}
