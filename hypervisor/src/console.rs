//! Guest console output: bytes from the console hypercall
//! ([`Hypercall::Console`]), assembled into lines per vCPU and printed
//! prefixed by the vCPU index (`[vcpu0] ...`). The guest cannot drive the
//! terminal: every control character is printed escaped ([`escape`]).

use crate::hypercall::{Outcome, Request, Service, MAX_CONSOLE_WRITE};
use dbos_abi::{ConsoleArgs, Hypercall};
use std::io::Write;
use std::sync::Mutex;

/// Longest line kept; a longer one is printed in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Console state shared by the vCPU threads.
pub struct Console {
    inner: Mutex<Inner>,
    echo: bool,
    capture: bool,
}

struct Inner {
    partial: Vec<Vec<u8>>,
    captured: Vec<String>,
}

impl Console {
    /// `echo`: print lines on stdout; `capture`: keep them for the run report.
    pub fn new(vcpus: u32, echo: bool, capture: bool) -> Self {
        Console {
            inner: Mutex::new(Inner {
                partial: vec![Vec::new(); vcpus as usize],
                captured: Vec::new(),
            }),
            echo,
            capture,
        }
    }

    /// Appends bytes written by `vcpu`.
    pub fn write(&self, vcpu: u32, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = Vec::new();
        let partial = &mut inner.partial[vcpu as usize];
        for &b in bytes {
            if b == b'\n' || partial.len() >= MAX_LINE {
                lines.push(std::mem::take(partial));
                if b == b'\n' {
                    continue;
                }
            }
            partial.push(b);
        }
        for line in lines {
            self.emit(&mut inner, vcpu, &line);
        }
    }

    /// Emits unterminated output left at the end of the run.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for vcpu in 0..inner.partial.len() {
            let line = std::mem::take(&mut inner.partial[vcpu]);
            if !line.is_empty() {
                self.emit(&mut inner, vcpu as u32, &line);
            }
        }
    }

    fn emit(&self, inner: &mut Inner, vcpu: u32, line: &[u8]) {
        let text = format!("[vcpu{vcpu}] {}", escape(line, false));
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        if self.capture {
            inner.captured.push(text);
        }
    }

    /// The captured lines so far.
    pub fn captured(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .captured
            .clone()
    }
}

/// Guest bytes made safe for a terminal: valid UTF-8 printable text and tabs
/// are kept as they are (and newlines, if `keep_newlines`); every other
/// control character (C0, DEL, C1) is written as `\xNN` (below 0x80) or
/// `\u{NN}`, and every byte that is not valid UTF-8 as `\xNN`. So a guest
/// cannot move the cursor, clear the screen or overwrite a line with a
/// carriage return.
pub fn escape(bytes: &[u8], keep_newlines: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !c.is_control() || c == '\t' || (keep_newlines && c == '\n') {
                out.push(c);
            } else if c.is_ascii() {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

impl Service for Console {
    fn serve(&self, req: &Request<'_>) -> Result<Outcome, crate::hypercall::HypercallError> {
        debug_assert_eq!(req.call, Hypercall::Console);
        let args: ConsoleArgs = req.args()?;
        let text = req.buffer("text", args.text, MAX_CONSOLE_WRITE)?;
        self.write(req.vcpu, &text);
        Ok(Outcome::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_lines_per_vcpu() {
        let c = Console::new(2, false, true);
        c.write(0, b"hel");
        c.write(1, b"other\n");
        c.write(0, b"lo\nwor");
        c.flush();
        assert_eq!(
            c.captured(),
            vec!["[vcpu1] other", "[vcpu0] hello", "[vcpu0] wor"]
        );
    }

    #[test]
    fn control_bytes_are_escaped() {
        let c = Console::new(1, false, true);
        c.write(0, b"fake\rdbos: guest exited with status 0\n");
        c.write(0, b"\x1b[2J\x1b]0;title\x07 clear\n");
        c.write(
            0,
            b"tab\tkept, caf\xc3\xa9 \xe2\x9c\x93 kept, del \x7f nul \0\n",
        );
        c.write(0, b"bad utf-8 \xff\xfe, C1 CSI \xc2\x9b, cut \xe2\x9c\n");
        c.write(0, b"backslash \\x1b stays text\n");
        assert_eq!(
            c.captured(),
            vec![
                "[vcpu0] fake\\x0ddbos: guest exited with status 0",
                "[vcpu0] \\x1b[2J\\x1b]0;title\\x07 clear",
                "[vcpu0] tab\tkept, café ✓ kept, del \\x7f nul \\x00",
                "[vcpu0] bad utf-8 \\xff\\xfe, C1 CSI \\u{9b}, cut \\xe2\\x9c",
                "[vcpu0] backslash \\x1b stays text",
            ]
        );
        assert_eq!(escape(b"a\nb\rc", true), "a\nb\\x0dc");
        assert_eq!(escape(b"a\nb", false), "a\\x0ab");
    }
}
