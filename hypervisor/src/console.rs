//! Guest console output: bytes from the console hypercall
//! ([`Hypercall::Console`](dbos_abi::Hypercall::Console)), assembled into lines per vCPU and printed
//! prefixed by the vCPU index (`[vcpu0] ...`). The guest cannot drive the
//! terminal: every control character is printed escaped ([`escape`]).

use crate::hypercall::{Outcome, Request, MAX_CONSOLE_WRITE};
use dbos_abi::ConsoleArgs;
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
/// `\u{NN}`, and so are the invisible formatting characters that reorder or
/// hide text (bidirectional overrides and isolates, zero-width characters,
/// [`hides_or_reorders`]); every byte that is not valid UTF-8 is written as
/// `\xNN`, and a backslash as `\\`. So a guest cannot move the cursor, clear
/// the screen, overwrite a line with a carriage return, display text in
/// another order than it wrote it, or print something that reads like an
/// escape the host made.
pub fn escape(bytes: &[u8], keep_newlines: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str(r"\\");
            } else if (!c.is_control() && !hides_or_reorders(c))
                || c == '\t'
                || (keep_newlines && c == '\n')
            {
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

/// Invisible formatting characters that change how the text around them is
/// displayed: zero-width spaces and joiners, left-to-right and right-to-left
/// marks (U+200B..=U+200F), bidirectional embeddings and overrides
/// (U+202A..=U+202E), word joiner and invisible operators (U+2060..=U+2064),
/// bidirectional isolates (U+2066..=U+2069), and the byte-order mark.
pub fn hides_or_reorders(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

impl Console {
    /// [`Hypercall::Console`](dbos_abi::Hypercall::Console): appends the guest's text to its vCPU's line.
    pub fn serve(
        &self,
        req: &Request<'_>,
        args: ConsoleArgs,
    ) -> Result<Outcome, crate::hypercall::HypercallError> {
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
        c.write(0, b"backslash \\x1b is not an escape\n");
        c.write(
            0,
            "rtl \u{202e}gnp.exe\u{202c} zw a\u{200b}b bom \u{feff}\n".as_bytes(),
        );
        assert_eq!(
            c.captured(),
            vec![
                "[vcpu0] fake\\x0ddbos: guest exited with status 0",
                "[vcpu0] \\x1b[2J\\x1b]0;title\\x07 clear",
                "[vcpu0] tab\tkept, café ✓ kept, del \\x7f nul \\x00",
                "[vcpu0] bad utf-8 \\xff\\xfe, C1 CSI \\u{9b}, cut \\xe2\\x9c",
                "[vcpu0] backslash \\\\x1b is not an escape",
                "[vcpu0] rtl \\u{202e}gnp.exe\\u{202c} zw a\\u{200b}b bom \\u{feff}",
            ]
        );
        assert_eq!(escape(b"a\nb\rc", true), "a\nb\\x0dc");
        assert_eq!(escape(b"a\nb", false), "a\\x0ab");
    }
}
