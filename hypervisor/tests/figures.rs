//! Every figure in the repository's markdown comes with the command that
//! produced it (the convention of `docs/architecture.md`, "How claims are
//! measured"): each section of every tracked `.md` file (the text under a
//! heading, up to the next heading) that states a figure, a number with a
//! unit of measure, holds a command that produces figures, in a code span
//! or a fenced block, or a marked exception, `<!-- figures: REASON -->`,
//! saying why there is none (the numbers are parameters, not measurements;
//! estimates computed from figures above; a published figure, cited).

use std::path::Path;
use std::process::Command;

/// Units that make a number a measured figure: time, rates, percentages,
/// ratios, cycles, and the decimal sizes tools report resident memory and
/// files in. Binary sizes (KiB, MiB, GiB) and bare counts are read as the
/// sizes and parameters of the code, which need no command.
const UNITS: [&str; 22] = [
    "ns", "us", "µs", "ms", "s", "sec", "second", "seconds", "minute", "minutes", "hours", "IOPS",
    "%", "x", "cycles", "kB", "KB", "MB", "GB", "MiB/s", "GiB/s", "MB/s",
];

/// How a command that produces figures begins.
const COMMANDS: [&str; 19] = [
    "cargo run",
    "cargo test",
    "cargo bench",
    "cargo fuzz",
    "RUSTC_BOOTSTRAP=1 cargo fuzz",
    "dbos run",
    "dbos bench",
    "target/release/",
    "./target/release/",
    "target/debug/",
    "./target/debug/",
    "DBOS_",
    "fio ",
    "pg_test_fsync",
    "redis-benchmark",
    "perf ",
    "bash ",
    "THREADS=",
    "git checkout",
];

/// The figures in `text` (code and comments already removed): each number
/// (digits, commas, a decimal part, possibly a range `a-b`) followed by a
/// unit, at a word boundary.
fn figures(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || "._-/".contains(chars[i - 1])));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        let number = |j: &mut usize| {
            while *j < chars.len()
                && (chars[*j].is_ascii_digit()
                    || (",.".contains(chars[*j])
                        && chars.get(*j + 1).is_some_and(char::is_ascii_digit)))
            {
                *j += 1;
            }
        };
        number(&mut j);
        if chars.get(j) == Some(&'-') && chars.get(j + 1).is_some_and(char::is_ascii_digit) {
            j += 1;
            number(&mut j);
        }
        let mut k = j;
        if chars.get(k) == Some(&' ') {
            k += 1;
        }
        let rest: String = chars[k..chars.len().min(k + 8)].iter().collect();
        let unit = UNITS
            .iter()
            .filter(|u| {
                rest.starts_with(**u)
                    && rest[u.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            })
            .max_by_key(|u| u.len());
        if let Some(u) = unit {
            let n: String = chars[i..j].iter().collect();
            out.push(format!("{n} {u}"));
        }
        i = j.max(i + 1);
    }
    out
}

/// A section: its heading, the prose (code spans, fenced blocks and HTML
/// comments removed), the code, and the exception comments.
struct Section {
    heading: String,
    prose: String,
    code: Vec<String>,
    exceptions: Vec<String>,
}

fn sections(doc: &str) -> Vec<Section> {
    // Headings and fenced blocks, line by line; the rest of each section
    // is parsed whole (code spans and comments may cross lines).
    let mut raw: Vec<(String, String, Vec<String>)> = vec![(
        "(before the first heading)".into(),
        String::new(),
        Vec::new(),
    )];
    let mut fenced: Option<String> = None;
    for line in doc.lines() {
        let cur = raw.last_mut().unwrap();
        if let Some(block) = fenced.as_mut() {
            if line.trim_start().starts_with("```") {
                cur.2.push(fenced.take().unwrap());
            } else {
                block.push_str(line.trim());
                block.push('\n');
            }
        } else if line.trim_start().starts_with("```") {
            fenced = Some(String::new());
        } else if line.starts_with('#') {
            raw.push((line.to_string(), String::new(), Vec::new()));
        } else {
            cur.1.push_str(line);
            cur.1.push('\n');
        }
    }
    raw.into_iter()
        .map(|(heading, text, code)| {
            let mut section = Section {
                heading,
                prose: String::new(),
                code,
                exceptions: Vec::new(),
            };
            let mut rest = text.as_str();
            let mut prose = String::new();
            while let Some(start) = rest.find("<!--") {
                prose.push_str(&rest[..start]);
                let end = rest[start..].find("-->").map_or(rest.len(), |e| start + e);
                let comment = rest[start + 4..end].trim();
                if let Some(reason) = comment.strip_prefix("figures:") {
                    section.exceptions.push(reason.trim().to_string());
                }
                rest = &rest[(end + 3).min(rest.len())..];
            }
            prose.push_str(rest);
            // Code spans: the parts between two backticks (an unmatched
            // last backtick opens no span).
            let parts: Vec<&str> = prose.split('`').collect();
            for (i, part) in parts.iter().enumerate() {
                if i % 2 == 1 && i + 1 < parts.len() {
                    section.code.push(part.replace('\n', " "));
                } else {
                    section.prose.push_str(part);
                    section.prose.push(' ');
                }
            }
            section
        })
        .collect()
}

/// Whether `code` is a command that produces figures: it begins like one,
/// has arguments (a mention of `dbos run` in passing is not a command), and
/// is not a usage synopsis (`dbos run <guest.elf> [--vcpus N] ...`).
fn is_command(code: &str) -> bool {
    code.lines().any(|l| {
        let l = l.trim().trim_start_matches("$ ");
        COMMANDS.iter().any(|c| {
            l.starts_with(c)
                && l[c.len()..]
                    .split_whitespace()
                    .any(|arg| !["--help", "-h", "--version"].contains(&arg))
        }) && !l.contains(" <")
            && !l.contains("[--")
    })
}

/// What is wrong with `doc`'s figures: one line per section that states
/// figures with neither a command nor an exception.
fn unsourced(doc: &str) -> Vec<String> {
    sections(doc)
        .iter()
        .filter_map(|s| {
            let figs = figures(&s.prose);
            let exception = s.exceptions.iter().any(|r| r.len() >= 12);
            let command = s.code.iter().any(|c| is_command(c));
            (!figs.is_empty() && !exception && !command)
                .then(|| format!("{}: {}", s.heading, figs.join(", ")))
        })
        .collect()
}

#[test]
fn every_figure_has_its_command_or_a_marked_exception() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let out = Command::new("git")
        .args(["ls-files", "--", "*.md"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for must in [
        "README.md",
        "docs/architecture.md",
        "bufferpool/docs/wal.md",
    ] {
        assert!(files.iter().any(|f| f == must), "{must} not found");
    }
    let mut problems = Vec::new();
    for f in &files {
        let doc = std::fs::read_to_string(root.join(f)).unwrap();
        for p in unsourced(&doc) {
            problems.push(format!("{f}: {p}"));
        }
    }
    assert!(
        problems.is_empty(),
        "figures without a command or a `<!-- figures: REASON -->` exception in their \
         section:\n{}",
        problems.join("\n")
    );
}

/// The checker itself: what it takes for a figure, a command and an
/// exception.
#[test]
fn the_checker_finds_figures_and_their_commands() {
    assert_eq!(
        figures("starts in 0.03-0.06 s, 5 MB resident, 1.5x faster, 10-30% of 1,203 IOPS"),
        ["0.03-0.06 s", "5 MB", "1.5 x", "10-30 %", "1,203 IOPS"]
    );
    // Sizes and counts are parameters; hex, versions and names are not
    // numbers with units.
    assert!(figures("a 4 KiB page, 64 MiB, 16 pages, 0x1000, x86_64, v2, 3rd, 2 vCPUs").is_empty());
    let no_command = "# T\n\nIt took 59 s.\n";
    assert_eq!(unsourced(no_command), ["# T: 59 s"]);
    // A figure inside code is not one.
    assert!(unsourced("# T\n\n`--seconds 2` and\n```\nfoo 3 s\n```\n").is_empty());
    let with_command = "# T\n\nIt took 59 s:\n`cargo run --release --bin x`.\n";
    assert!(unsourced(with_command).is_empty());
    let fenced = "# T\n\n```sh\ndbos run --vcpus 2 g -- bench\n```\n\n42 ms.\n";
    assert!(unsourced(fenced).is_empty());
    // The next section does not inherit the command.
    assert_eq!(
        unsourced(&format!("{fenced}## U\n\n7 ms.\n")),
        ["## U: 7 ms"]
    );
    // A usage synopsis is not a command, nor a mention without arguments.
    assert_eq!(
        unsourced("# T\n\na second `dbos run` on the disk: 7 ms.\n"),
        ["# T: 7 ms"]
    );
    assert_eq!(
        unsourced("# T\n\n`dbos run --help` says: 7 ms.\n"),
        ["# T: 7 ms"]
    );
    let synopsis = "# T\n\n```\ndbos run <guest.elf> [--vcpus N]\n```\n\n7 ms.\n";
    assert_eq!(unsourced(synopsis), ["# T: 7 ms"]);
    // An exception needs a reason.
    assert!(
        unsourced("# T\n\n<!-- figures: estimates from the counts above -->\n7 ms.\n").is_empty()
    );
    assert_eq!(
        unsourced("# T\n\n<!-- figures: -->\n7 ms.\n"),
        ["# T: 7 ms"]
    );
    assert!(unsourced("# T\n\n<!--\nfigures: parameters of\nthe code -->\n7 ms.\n").is_empty());
}
