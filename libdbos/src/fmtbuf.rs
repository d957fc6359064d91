//! A `core::fmt::Write` sink over a fixed byte buffer that truncates instead
//! of failing, for formatting log lines and panic messages without a heap.

use core::fmt;

/// Formats into a borrowed buffer; output beyond its capacity is dropped and
/// remembered in [`FmtBuf::truncated`].
pub struct FmtBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> FmtBuf<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            truncated: false,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text written so far (always valid UTF-8: truncation happens at a
    /// character boundary).
    pub fn as_str(&self) -> &str {
        // Only whole `&str` prefixes cut at char boundaries are ever copied in.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Whether some output did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }
}

impl fmt::Write for FmtBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.remaining();
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_at_char_boundary() {
        let mut b = [0u8; 5];
        let mut w = FmtBuf::new(&mut b);
        let c = 'ç';
        write!(w, "ab{c}d").unwrap();
        assert_eq!(w.as_str(), "abçd");
        assert!(!w.truncated());
        write!(w, "é").unwrap();
        assert_eq!(w.as_str(), "abçd");
        assert!(w.truncated());
    }
}
