//! Writes a [`Report`] as `index.md`, `index.html` (the same content, the
//! plots inline as images) and `report.json` (the data model as it is, for
//! comparing runs later).

use super::report::{Figure, Report, Section, Table, KINDS_EXPLAINED};
use std::fmt::Write as _;
use std::path::Path;

/// Writes the three files into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<(), String> {
    let put = |name: &str, text: String| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
    };
    put("index.md", markdown(report))?;
    put("index.html", html(report))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| format!("report.json: {e}"))?;
    put("report.json", json + "\n")
}

fn met(f: &Figure) -> &'static str {
    match f.met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "no value",
    }
}

fn figure_cells(f: &Figure) -> Vec<String> {
    let value = match f.value.number() {
        Some(_) => format!("{} {}", f.value.text(), f.unit),
        None => f.value.text(),
    };
    vec![
        f.name.clone(),
        value,
        format!("{}: {}", f.baseline, f.baseline_value.text()),
        f.target.clone(),
        met(f).into(),
        f.kind.name().into(),
    ]
}

const FIGURE_COLUMNS: [&str; 6] = ["figure", "value", "baseline", "target", "met", "kind"];

fn machine_rows(r: &Report) -> Vec<(&'static str, String)> {
    let m = &r.machine;
    vec![
        ("CPU", m.cpu.clone()),
        ("cores", m.cores.to_string()),
        ("memory", m.memory.clone()),
        ("kernel", m.kernel.clone()),
        ("disk", m.disk.clone()),
        ("KVM", m.kvm.clone()),
    ]
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(out: &mut String, columns: &[String], rows: &[Vec<String>]) {
    let line = |cells: &[String]| {
        format!(
            "| {} |\n",
            cells
                .iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    };
    out.push_str(&line(columns));
    out.push_str(&format!("|{}\n", "---|".repeat(columns.len())));
    for r in rows {
        out.push_str(&line(r));
    }
    out.push('\n');
}

fn table_rows(t: &Table) -> Vec<Vec<String>> {
    t.rows
        .iter()
        .map(|r| r.iter().map(|c| c.text()).collect())
        .collect()
}

/// The report as markdown.
/// The `dbos bench` command that reruns section `s` alone.
fn section_command(r: &Report, s: &Section) -> String {
    format!(
        "dbos bench{} --only {}",
        if r.quick { " --quick" } else { "" },
        s.name
    )
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# dbos bench report\n");
    let _ = writeln!(
        o,
        "Run `{}` at {} ({}), {:.1} s in all.\n",
        r.command,
        r.started,
        if r.quick {
            "--quick: tiny sizes, short runs; the structure, not figures to quote"
        } else {
            "full sizes"
        },
        r.total_seconds
    );
    let _ = writeln!(o, "## Machine\n");
    md_table(
        &mut o,
        &["what".into(), "value".into()],
        &machine_rows(r)
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v])
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        o,
        "## Wall-clock and counted figures\n\n{KINDS_EXPLAINED}\n"
    );
    for s in &r.sections {
        let _ = writeln!(o, "## {} (`--only {}`)\n\n{}\n", s.title, s.name, s.about);
        let _ = writeln!(o, "Measured in {:.1} s.\n", s.seconds);
        if !s.figures.is_empty() {
            let _ = writeln!(
                o,
                "### Figures against their targets\n\nCommand: `{}` (the tables below name \
                 each figure's building block).\n",
                section_command(r, s)
            );
            md_table(
                &mut o,
                &FIGURE_COLUMNS.map(String::from),
                &s.figures.iter().map(figure_cells).collect::<Vec<_>>(),
            );
        }
        for t in &s.tables {
            let _ = writeln!(
                o,
                "### {}\n\n{} figures. Command: `{}`\n",
                t.title,
                t.kind.name(),
                t.command
            );
            md_table(&mut o, &t.columns, &table_rows(t));
        }
        for p in &s.plots {
            let _ = writeln!(o, "![{}]({})\n", p.title, p.file);
        }
        for n in &s.notes {
            let _ = writeln!(o, "- {n}");
        }
        if !s.notes.is_empty() {
            o.push('\n');
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(o: &mut String, columns: &[String], rows: &[Vec<String>]) {
    o.push_str("<table>\n<tr>");
    for c in columns {
        let _ = write!(o, "<th>{}</th>", esc(c));
    }
    o.push_str("</tr>\n");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            let class = match c.as_str() {
                "met" => " class=\"met\"",
                "NOT met" => " class=\"notmet\"",
                _ => "",
            };
            let _ = write!(o, "<td{class}>{}</td>", esc(c));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
}

/// The report as a static HTML page with the same content as
/// [`markdown`].
pub fn html(r: &Report) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dbos bench report</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}\
         table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}\
         th{background:#eee}.met{color:#060}.notmet{color:#a00;font-weight:bold}\
         code{background:#f4f4f4}img{max-width:100%;border:1px solid #ddd}\
         </style></head><body>\n<h1>dbos bench report</h1>\n",
    );
    let _ = writeln!(
        o,
        "<p>Run <code>{}</code> at {} ({}), {:.1} s in all.</p>",
        esc(&r.command),
        esc(&r.started),
        if r.quick {
            "--quick: tiny sizes, short runs; the structure, not figures to quote"
        } else {
            "full sizes"
        },
        r.total_seconds
    );
    o.push_str("<h2>Machine</h2>\n");
    html_table(
        &mut o,
        &["what".into(), "value".into()],
        &machine_rows(r)
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v])
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        o,
        "<h2>Wall-clock and counted figures</h2>\n<p>{}</p>",
        esc(KINDS_EXPLAINED)
    );
    for s in &r.sections {
        let _ = writeln!(
            o,
            "<h2 id=\"{}\">{} (<code>--only {}</code>)</h2>\n<p>{}</p>\n<p>Measured in {:.1} s.</p>",
            esc(&s.name),
            esc(&s.title),
            esc(&s.name),
            esc(&s.about),
            s.seconds
        );
        if !s.figures.is_empty() {
            let _ = writeln!(
                o,
                "<h3>Figures against their targets</h3>\n<p>Command: <code>{}</code> (the \
                 tables below name each figure's building block).</p>",
                esc(&section_command(r, s))
            );
            html_table(
                &mut o,
                &FIGURE_COLUMNS.map(String::from),
                &s.figures.iter().map(figure_cells).collect::<Vec<_>>(),
            );
        }
        for t in &s.tables {
            let _ = writeln!(
                o,
                "<h3>{}</h3>\n<p>{} figures. Command: <code>{}</code></p>",
                esc(&t.title),
                t.kind.name(),
                esc(&t.command)
            );
            html_table(&mut o, &t.columns, &table_rows(t));
        }
        for p in &s.plots {
            let _ = writeln!(
                o,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                esc(&p.file),
                esc(&p.title),
                esc(&p.title)
            );
        }
        if !s.notes.is_empty() {
            o.push_str("<ul>\n");
            for n in &s.notes {
                let _ = writeln!(o, "<li>{}</li>", esc(n));
            }
            o.push_str("</ul>\n");
        }
    }
    o.push_str("</body></html>\n");
    o
}
