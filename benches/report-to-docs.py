#!/usr/bin/env python3
"""Copies the sections of a full `dbos bench` report into the crates' docs
(storage -> nvme/docs/benchmarks.md, pools -> bufferpool/docs/pools.md,
wal -> bufferpool/docs/wal.md, snapshots -> snapshot/docs/baselines.md,
store -> kvstore/docs/store.md, kvstore -> kvstore/docs/benchmarks.md),
between the markers it writes (a second run replaces the first), with
the plots copied into each docs folder's figures/.

usage: python3 benches/report-to-docs.py REPORT_DIR REPO_DIR COMMIT
(after a full `dbos bench --out REPORT_DIR` on a quiet machine; the text
it writes names the peers' versions as they were on this project's
machine: edit PEERS when they change)."""
import re, sys, shutil, os, json
rep, repo, commit = sys.argv[1], sys.argv[2], sys.argv[3]
md = open(os.path.join(rep, 'index.md')).read()
j = json.load(open(os.path.join(rep, 'report.json')))
m = j['machine']
# section name -> (doc file, insert before this heading (regex) or None = before first '## ')
TARGETS = {
    'storage': ('nvme/docs/benchmarks.md', None),
    'pools': ('bufferpool/docs/pools.md', r'^## Benchmarks$'),
    'wal': ('bufferpool/docs/wal.md', r'^## Benchmark$'),
    'snapshots': ('snapshot/docs/baselines.md', None),
    'store': ('kvstore/docs/store.md', None),
    'kvstore': ('kvstore/docs/benchmarks.md', None),
}
PEERS = ("fio 3.33 and Redis 7.0.15 from Debian and `DBOS_VMCACHE` naming a vmcache\n"
         "binary built by hand from its public repository's head")
BEGIN = '<!-- dbos bench: begin (generated from a full dbos bench run; replaced by the next) -->'
END = '<!-- dbos bench: end -->'
def section(name):
    pat = re.compile(r'^## .*\(`--only %s`\)$' % name, re.M)
    mm = pat.search(md)
    if not mm: return None
    start = mm.end()
    nxt = re.compile(r'^## ', re.M).search(md, start)
    return md[start: nxt.start() if nxt else len(md)].strip('\n')
def machine():
    keys = ['cpu', 'cores', 'memory', 'kernel', 'disk', 'kvm']
    return '; '.join(f"{k}: {m.get(k)}" for k in keys if m.get(k) is not None)
for name, (doc, before) in TARGETS.items():
    body = section(name)
    if body is None:
        print('no section', name); continue
    docpath = os.path.join(repo, doc)
    figdir = os.path.join(os.path.dirname(docpath), 'figures')
    os.makedirs(figdir, exist_ok=True)
    def fig(mo):
        f = mo.group(2)
        shutil.copy(os.path.join(rep, f), os.path.join(figdir, f))
        return f'![{mo.group(1)}](figures/{f})'
    # Paths inside this checkout are shown relative to it.
    body = body.replace(os.path.abspath(repo) + '/', '')
    body = re.sub(r'!\[([^\]]*)\]\(([^)]+\.svg)\)', fig, body)
    block = f"""{BEGIN}
## Figures of the latest full `dbos bench` run

Generated from one full run of `dbos bench` (all sections,
{j['total_seconds']/60:.0f} minutes) started {j['started']} on commit {commit},
on this project's machine with nothing else running ({machine()}), with
{PEERS}. This is the
report's `{name}` section unchanged: rerun it with `cargo run --release
--bin dbos -- bench --only {name}`. The sections after it are earlier
measurements by the building-block binaries, kept for how the design
choices were made; where the two differ, this run is the current figure.

{body}
{END}
"""
    text = open(docpath).read()
    if BEGIN in text:
        a = text.index(BEGIN); b = text.index(END) + len(END) + 1
        text = text[:a] + block + text[b:]
    else:
        if before:
            mo = re.compile(before, re.M).search(text)
        else:
            mo = re.compile(r'^## ', re.M).search(text)
        at = mo.start() if mo else len(text)
        text = text[:at] + block + '\n' + text[at:]
    open(docpath, 'w').write(text)
    print('wrote', doc)
