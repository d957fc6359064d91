//! `dbos bench --quick` from a clean state, and the report it writes
//! checked: every built section in index.md, index.html and report.json;
//! every figure and table value a finite number or an explicit "not
//! installed" / "not available here" with its reason; every plot a
//! well-formed SVG with its axis labels and at least one line of data.

use serde_json::Value as Json;
use std::path::Path;
use std::process::Command;

const BUILT: [&str; 6] = ["storage", "snapshots", "wal", "pools", "store", "kvstore"];

fn dbos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dbos"))
}

/// A scratch directory on the target's disk (the benchmarks need O_DIRECT
/// on a real file system, which /tmp may not be).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Checks every measured value in `json` (objects tagged `kind`: number,
/// not_installed, not_available) and returns how many there were.
fn check_values(json: &Json, at: &str) -> usize {
    match json {
        Json::Object(m) => {
            let mut n = 0;
            match m.get("kind").and_then(Json::as_str) {
                Some("number") => {
                    let v = m.get("value").and_then(Json::as_f64);
                    assert!(
                        v.is_some_and(f64::is_finite),
                        "{at}: a number that is not finite: {json}"
                    );
                    n += 1;
                }
                Some("not_installed") => {
                    let tool = m.get("tool").and_then(Json::as_str).unwrap_or("");
                    assert!(!tool.is_empty(), "{at}: not installed names no tool");
                    n += 1;
                }
                Some("not_available") => {
                    let why = m.get("reason").and_then(Json::as_str).unwrap_or("");
                    assert!(
                        !why.trim().is_empty(),
                        "{at}: not available without a reason"
                    );
                    n += 1;
                }
                _ => {}
            }
            for (k, v) in m {
                // A verdict is null when its figure has no value (checked
                // figure by figure in check_report).
                if k == "met" && v.is_null() {
                    continue;
                }
                n += check_values(v, &format!("{at}.{k}"));
            }
            n
        }
        Json::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| check_values(v, &format!("{at}[{i}]")))
            .sum(),
        Json::Number(x) => {
            assert!(x.as_f64().is_some_and(f64::is_finite), "{at}: {x}");
            0
        }
        Json::Null => panic!("{at}: null (a NaN or a missing value) in report.json"),
        _ => 0,
    }
}

/// Well-formedness of an SVG as XML: one root `<svg>` element, every tag
/// closed in order, attributes quoted; returns the text of its `<text>`
/// elements and its elements' names.
fn parse_svg(svg: &str) -> (Vec<String>, Vec<String>) {
    let s = svg.trim();
    assert!(s.starts_with("<svg"), "does not start with <svg");
    assert!(s.ends_with("</svg>"), "does not end with </svg>");
    let mut stack: Vec<String> = Vec::new();
    let (mut texts, mut names) = (Vec::new(), Vec::new());
    let mut rest = s;
    let mut roots = 0;
    while let Some(lt) = rest.find('<') {
        let text = &rest[..lt];
        if stack.last().is_some_and(|t| t == "text") && !text.trim().is_empty() {
            texts.push(text.trim().to_string());
        }
        let gt = rest[lt..].find('>').expect("an unclosed tag") + lt;
        let tag = &rest[lt + 1..gt];
        assert!(!tag.contains('<'), "a '<' inside a tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().expect("a close tag without its open tag");
            assert_eq!(open, name.trim(), "tags closed out of order");
        } else if !tag.starts_with('?') && !tag.starts_with('!') {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[gt + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert_eq!(roots, 1, "one root element");
    assert!(rest.trim().is_empty());
    (texts, names)
}

/// A polyline with at least two points, or a path with a line in it.
fn has_data_line(svg: &str) -> bool {
    svg.split("<polyline").skip(1).any(|p| {
        p.split("points=\"")
            .nth(1)
            .and_then(|q| q.split('"').next())
            .is_some_and(|pts| pts.split_whitespace().count() >= 2)
    }) || svg.contains("<path")
}

/// `s` as HTML text.
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn check_report(dir: &Path, sections: &[&str]) {
    let md = std::fs::read_to_string(dir.join("index.md")).unwrap();
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let json: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for text in [&md, &html] {
        for bad in ["NaN", "inf us", " inf ", "null"] {
            assert!(!text.contains(bad), "{bad:?} in the report");
        }
        for part in ["Machine", "Wall-clock and counted figures", "KVM"] {
            assert!(text.contains(part), "no {part:?} in the report");
        }
    }
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    let got: Vec<&str> = json["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, sections, "the sections in report.json");
    for m in ["cpu", "memory", "kernel", "disk", "kvm"] {
        assert!(
            json["machine"][m].as_str().is_some_and(|v| !v.is_empty()),
            "machine.{m}"
        );
    }
    assert!(json["total_seconds"].as_f64().is_some_and(|t| t > 0.0));
    let values = check_values(&json, "report");
    assert!(values > 0, "no values in the report");
    for s in json["sections"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let title = s["title"].as_str().unwrap();
        assert!(
            md.contains(&format!("## {title}")),
            "{name} not in index.md"
        );
        assert!(
            html.contains(&format!("<h2 id=\"{name}\">")),
            "{name} not in index.html"
        );
        assert!(s.get("failed").is_none(), "{name} failed: {}", s["failed"]);
        let figures = s["figures"].as_array().unwrap();
        assert!(!figures.is_empty(), "{name}: no figures");
        for f in figures {
            let fname = f["name"].as_str().unwrap();
            assert!(
                md.contains(fname),
                "{name}: figure {fname:?} not in index.md"
            );
            assert!(
                html.contains(&html_text(fname)),
                "{name}: figure {fname:?} not in index.html"
            );
            assert!(!f["target"].as_str().unwrap().is_empty());
            assert!(!f["baseline"].as_str().unwrap().is_empty());
            // A figure with a number says whether its target is met; one
            // without says why not.
            match f["value"]["kind"].as_str().unwrap() {
                "number" => assert!(f["met"].is_boolean(), "{fname}: no verdict"),
                _ => assert!(f["met"].is_null(), "{fname}: a verdict without a value"),
            }
            assert!(matches!(f["kind"].as_str(), Some("wall_clock" | "counted")));
        }
        let tables = s["tables"].as_array().unwrap();
        assert!(!tables.is_empty(), "{name}: no tables");
        for t in tables {
            let command = t["command"].as_str().unwrap();
            assert!(
                command.starts_with("dbos bench") && command.contains(&format!("--only {name}")),
                "{name}: table command {command:?}"
            );
            assert!(md.contains(command), "{name}: command not in index.md");
            assert!(
                html.contains(&html_text(command)),
                "{name}: command not in index.html"
            );
            let width = t["columns"].as_array().unwrap().len();
            let rows = t["rows"].as_array().unwrap();
            assert!(!rows.is_empty(), "{name}: an empty table");
            for r in rows {
                assert_eq!(r.as_array().unwrap().len(), width, "{name}: a ragged row");
            }
        }
        let plots = s["plots"].as_array().unwrap();
        assert!(!plots.is_empty(), "{name}: no plots");
        for p in plots {
            let file = p["file"].as_str().unwrap();
            assert!(md.contains(&format!("]({file})")), "{file} not in index.md");
            assert!(
                html.contains(&format!("src=\"{file}\"")),
                "{file} not in html"
            );
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            let (texts, names) = parse_svg(&svg);
            for label in [&p["x_label"], &p["y_label"]] {
                let label = label.as_str().unwrap();
                assert!(!label.is_empty());
                assert!(
                    texts.iter().any(|t| t == label),
                    "{file}: axis label {label:?} not drawn ({texts:?})"
                );
            }
            assert!(names.iter().any(|n| n == "polyline" || n == "path"));
            assert!(has_data_line(&svg), "{file}: no line of data");
        }
    }
    // fio is optional: without it its figure says "not installed".
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !fio && sections.contains(&"storage") {
        assert!(md.contains("not installed (fio)"));
    }
}

/// The snapshots section's Redis table: Redis's fork stall measured where
/// redis-server runs, a row saying "not installed" where it does not.
fn check_snapshot_redis(md: &str) {
    let table = md
        .split("### Redis's BGSAVE fork stall")
        .nth(1)
        .expect("no Redis table in the snapshots section");
    let row = table
        .lines()
        .find(|l| l.starts_with("| 16 |"))
        .expect("no 16 MiB row in the Redis table");
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if redis {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // heap, keys, used_memory, stall: numbers.
        for c in &cells[2..5] {
            assert!(c.parse::<f64>().is_ok(), "not a number: {c:?} in {row}");
        }
    } else {
        assert!(row.contains("not installed (redis-server)"), "{row}");
    }
}

#[test]
fn bench_quick_writes_a_complete_report() {
    let dir = scratch();
    let out = dir.path().join("report");
    let run = dbos()
        .args(["bench", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "dbos bench failed: {stderr}");
    // A progress line per benchmark and the total time at the end.
    assert!(
        stderr.contains("storage: randread 4k qd1 round 1: pread"),
        "{stderr}"
    );
    assert!(stderr.contains("snapshots: 16 MiB heap"), "{stderr}");
    assert!(
        stderr.contains("wal: round 1: qp FUA, 1 committer(s)"),
        "{stderr}"
    );
    assert!(
        stderr.lines().last().unwrap().contains("total time"),
        "{stderr}"
    );
    check_report(&out, &BUILT);
    let md = std::fs::read_to_string(out.join("index.md")).unwrap();
    check_snapshot_redis(&md);
    // wal: write+flush commits beside the FUA ones, on both devices.
    for row in [
        "| qp FUA | 1 |",
        "| qp write+flush | 1 |",
        "| direct write+flush | 16 |",
    ] {
        assert!(md.contains(row), "no {row:?} in the wal tables");
    }
    // pools: Tabby in process mode in and out of memory, the reference
    // vmcache (a number or "not installed"), in memory with busy threads.
    for row in [
        "| tabby | 1 |",
        "| tabby +2 busy threads | 1 |",
        "| vmcache +2 busy threads | 2 |",
        "| vmcache (reference) | 1 |",
    ] {
        assert!(md.contains(row), "no {row:?} in the pools tables");
    }
    if std::env::var_os("DBOS_VMCACHE").is_none() {
        assert!(md.contains("not installed (vmcache: set DBOS_VMCACHE to its binary)"));
    }
    let counted = md
        .split("TLB shootdowns per evicted page |")
        .nth(1)
        .expect("the pools' counted table");
    assert!(counted.contains("| tabby | 1 |"), "no Tabby TLB shootdowns");
    check_kvstore_tables(&out);
    check_store_figures(&out);
    // The benchmark files are gone; the report is all that is left.
    assert!(!out.join(".work").exists());
}

/// Section `name` of the report in `dir`, from its report.json.
fn section_json(dir: &Path, name: &str) -> Json {
    let json: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    json["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("a {name} section"))
        .clone()
}

/// The kvstore section has each of its tables, each row a value or the
/// reason for none (the guest's without KVM, Redis's without Redis).
fn check_kvstore_tables(dir: &Path) {
    let kv = section_json(dir, "kvstore");
    let titles: Vec<&str> = kv["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    for table in [
        "Workload A over the Redis protocol",
        "Workloads B-F over the Redis protocol",
        "redis-benchmark -t set,get",
        "Out of memory: workload C",
        "The guest server in ring 0: counted events per request",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(table)),
            "no table {table:?} in the kvstore section: {titles:?}"
        );
    }
    let figures: Vec<&str> = kv["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for figure in [
        "Redis appendfsync always, workload A, 1 clients",
        "workload F",
        "redis-benchmark GET, -P 16",
        "protocol / in-process reads per second, 4 client(s)",
        "guest server, memory engine, --net-poll-spin 1s: exits to the VMM per request",
    ] {
        assert!(
            figures.iter().any(|f| f.contains(figure)),
            "no figure {figure:?} in the kvstore section: {figures:?}"
        );
    }
}

/// The store section has its three figures against the disk and the bare
/// WAL, each with a value (the store needs no outside tool), and a note
/// with the 4x pool's update ratios, which have no target.
fn check_store_figures(dir: &Path) {
    let store = section_json(dir, "store");
    let figures = store["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 3, "{figures:?}");
    for f in figures {
        assert_eq!(
            f["value"]["kind"], "number",
            "a store figure without a value: {f}"
        );
    }
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for figure in [
        "workload C uniform, 1 thread: page reads/s",
        "1 thread(s), store in a pool that holds it",
        "16 thread(s), store in a pool that holds it",
    ] {
        assert!(
            names.iter().any(|n| n.contains(figure)),
            "no figure {figure:?} in the store section: {names:?}"
        );
    }
    let notes: Vec<&str> = store["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let pool = notes
        .iter()
        .find(|n| n.starts_with("Durable updates with the store 4x the pool"))
        .unwrap_or_else(|| panic!("no note on the 4x pool's updates: {notes:?}"));
    // Both thread counts, each with a measured ratio.
    for threads in [": 1 thread(s) ", ", 16 thread(s) "] {
        let at = pool.find(threads).map(|i| i + threads.len());
        let digit = at.and_then(|i| pool[i..].chars().next());
        assert!(digit.is_some_and(|c| c.is_ascii_digit()), "{pool}");
    }
}

#[test]
fn bench_only_runs_the_sections_named_and_refuses_others() {
    let dir = scratch();
    let out = dir.path().join("report");
    let run = dbos()
        .args(["bench", "--quick", "--only", "snapshots", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    check_report(&out, &["snapshots"]);
    check_snapshot_redis(&std::fs::read_to_string(out.join("index.md")).unwrap());
    for bad in ["nope", "Storage"] {
        let run = dbos()
            .args(["bench", "--quick", "--only", bad, "--out"])
            .arg(dir.path().join("other"))
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "--only {bad}");
        assert!(!dir.path().join("other").exists());
    }
}

#[test]
fn the_value_check_fails_on_missing_or_unexplained_values() {
    for bad in [
        r#"{"kind": "number", "value": null}"#,
        r#"{"kind": "number"}"#,
        r#"{"kind": "not_available", "reason": " "}"#,
        r#"{"kind": "not_installed", "tool": ""}"#,
        r#"{"rows": [[null]]}"#,
    ] {
        let json: Json = serde_json::from_str(bad).unwrap();
        assert!(
            std::panic::catch_unwind(|| check_values(&json, "t")).is_err(),
            "{bad} passed"
        );
    }
    let good: Json = serde_json::from_str(
        r#"[{"kind": "number", "value": 1.5}, {"kind": "not_installed", "tool": "fio"}]"#,
    )
    .unwrap();
    assert_eq!(check_values(&good, "t"), 2);
}

#[test]
fn the_svg_check_fails_on_broken_svgs() {
    for bad in [
        "<svg><text>x</svg>",
        "<svg><g></svg></g>",
        "<html></html>",
        "<svg><line x=\"1/></svg>",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_svg(bad)).is_err(),
            "{bad} passed"
        );
    }
    let (texts, _) =
        parse_svg("<svg a=\"1\"><text>IOPS</text><polyline points=\"1,2 3,4\"/></svg>");
    assert_eq!(texts, ["IOPS"]);
    assert!(has_data_line("<svg><polyline points=\"1,2 3,4\"/></svg>"));
    assert!(!has_data_line("<svg><polyline points=\"1,2\"/></svg>"));
}

/// A second `dbos bench` into a report directory in use is refused (it
/// would delete the first's benchmark files), and says who holds it.
#[test]
fn a_second_bench_into_the_same_directory_is_refused() {
    let dir = scratch();
    let out = dir.path().join("report");
    std::fs::create_dir_all(&out).unwrap();
    // This test holds the lock a running dbos bench holds.
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let run = dbos()
        .args(["bench", "--quick", "--only", "wal", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another dbos bench is writing its report into"),
        "{stderr}"
    );
    assert!(!out.join("index.md").exists(), "nothing written");
    drop(lock);
}

/// `dbos bench` killed while its servers run leaves none behind: every
/// child (the servers under test, Redis, guests) dies with it.
#[test]
fn a_killed_bench_leaves_no_server_running() {
    use std::io::{BufRead, BufReader};
    let dir = scratch();
    let out = dir.path().join("report");
    let mut bench = dbos()
        .args(["bench", "--quick", "--only", "kvstore", "--out"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the servers are up and being loaded.
    let mut lines = BufReader::new(bench.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("dbos bench ended before loading its servers")
            .unwrap();
        if line.contains("loading") {
            break;
        }
    }
    let work = out.canonicalize().unwrap().join(".work");
    let children = || -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // redis-server rewrites its command line; it runs in its
            // directory under the work directory.
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            if cmd.contains(work.to_str().unwrap()) || cwd.starts_with(&work) {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next())
                    == Some("Z");
                if !zombie {
                    found.push(cmd);
                }
            }
        }
        found
    };
    assert!(
        !children().is_empty(),
        "no server runs under {}",
        work.display()
    );
    bench.kill().unwrap();
    bench.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !children().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after dbos bench was killed: {:?}",
            children()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
