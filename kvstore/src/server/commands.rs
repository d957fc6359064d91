//! The commands: each parses its arguments, reads and writes through a
//! [`Db`] view and appends its reply. [`run`] wraps one command (or a
//! whole MULTI/EXEC block) in its key locks and one atomic, durable
//! commit; replies and error texts are Redis's.

use super::db::{Db, Entry};
use super::engine::{Cursor, EngineError, KvEngine, Ticket, UnixMs};
use super::session::{printable, Session, Shared};
use super::table::{self, Cmd, Spec, COMMANDS, POINT_READ, WRITE};
use crate::resp::Reply;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// A command's failure: the error reply's text (with its code).
type Fail = String;

const SYNTAX: &str = "ERR syntax error";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";

fn engine_err(e: EngineError) -> Fail {
    match e {
        EngineError::Full(_) => format!("OOM {e}"),
        e => format!("ERR {e}"),
    }
}

/// The version this server answers as (clients check it for features).
pub const REDIS_VERSION: &str = "7.0.0";

/// Runs one command outside MULTI (or MULTI, EXEC, DISCARD and the other
/// commands that are never queued) and returns the ticket of its writes.
pub(super) fn run<E: KvEngine>(
    s: &mut Session,
    sh: &Shared<E>,
    spec: &Spec,
    args: &[&[u8]],
    out: &mut Vec<u8>,
) -> Option<Ticket> {
    match spec.cmd {
        Cmd::Multi => {
            if s.multi.is_some() {
                Reply(out).error("ERR MULTI calls can not be nested");
            } else {
                s.multi = Some(Vec::new());
                s.multi_failed = false;
                s.multi_bytes = 0;
                Reply(out).ok();
            }
            None
        }
        Cmd::Discard => {
            if s.multi.take().is_some() {
                Reply(out).ok();
            } else {
                Reply(out).error("ERR DISCARD without MULTI");
            }
            None
        }
        Cmd::Exec => exec(s, sh, out),
        _ => {
            let _held = (spec.flags & WRITE != 0).then(|| {
                sh.locks
                    .lock(spec.key_positions(args.len()).map(|i| args[i]))
            });
            let mut db = Db::new(&sh.engine, (sh.clock)());
            // Only commands that read by point lookups run without
            // waiting (`Session::process_async` lets no other run while
            // reads are pending).
            db.no_wait = s.no_wait && spec.flags & POINT_READ != 0;
            let mark = out.len();
            if let Err(text) = execute(s, sh, &mut db, spec, args, out) {
                out.truncate(mark);
                Reply(out).error(&text);
            }
            if let Some(why) = db.blocked {
                // Abandoned: it runs again once what it needs is there.
                out.truncate(mark);
                s.blocked = Some(why);
                return None;
            }
            finish(sh, &mut db, out, mark)
        }
    }
}

/// Commits a command's (or block's) writes; if that fails, its reply
/// (from `mark` on) is replaced by the error.
fn finish<E: KvEngine>(
    sh: &Shared<E>,
    db: &mut Db<'_, E>,
    out: &mut Vec<u8>,
    mark: usize,
) -> Option<Ticket> {
    sh.stats.keyspace_hits.fetch_add(db.hits, Ordering::Relaxed);
    sh.stats
        .keyspace_misses
        .fetch_add(db.misses, Ordering::Relaxed);
    let committed = db.commit();
    // After the writes are applied (see `Stats::expiring_writes`).
    sh.stats
        .expiring_writes
        .fetch_add(db.expiring_writes, Ordering::Release);
    match committed {
        Ok(t) => t,
        Err(e) => {
            out.truncate(mark);
            Reply(out).error(&engine_err(e));
            None
        }
    }
}

/// EXEC: the queued commands under the locks of all their keys, their
/// writes one atomic group.
fn exec<E: KvEngine>(s: &mut Session, sh: &Shared<E>, out: &mut Vec<u8>) -> Option<Ticket> {
    let Some(queued) = s.multi.take() else {
        Reply(out).error("ERR EXEC without MULTI");
        return None;
    };
    if s.multi_failed {
        Reply(out).error("EXECABORT Transaction discarded because of previous errors.");
        return None;
    }
    let specs: Vec<&Spec> = queued
        .iter()
        .map(|c| table::lookup(&c[0]).expect("queued commands were looked up"))
        .collect();
    let _held = sh.locks.lock(
        queued
            .iter()
            .zip(&specs)
            .flat_map(|(c, spec)| spec.key_positions(c.len()).map(move |i| c[i].as_slice())),
    );
    let mut db = Db::new(&sh.engine, (sh.clock)());
    let mark = out.len();
    Reply(out).array(queued.len());
    for (c, spec) in queued.iter().zip(&specs) {
        let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
        let before = out.len();
        if let Err(text) = execute(s, sh, &mut db, spec, &args, out) {
            out.truncate(before);
            Reply(out).error(&text);
        }
    }
    finish(sh, &mut db, out, mark)
}

/// Parses a signed 64-bit integer as Redis does (no sign but `-`, no
/// leading zeros, no spaces).
pub(super) fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = core::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

fn int_arg(b: &[u8]) -> Result<i64, Fail> {
    parse_i64(b).ok_or_else(|| NOT_INT.to_string())
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Redis's glob: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
pub(super) fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `pattern[p]`: whether `c` matches and where the
/// pattern goes on; `None` if the class is not closed.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut q = p + 1;
    let negate = pattern.get(q) == Some(&b'^');
    if negate {
        q += 1;
    }
    let mut matched = false;
    loop {
        let &b = pattern.get(q)?;
        match b {
            b']' => break,
            b'\\' if q + 1 < pattern.len() => {
                matched |= pattern[q + 1] == c;
                q += 2;
            }
            _ if pattern.get(q + 1) == Some(&b'-')
                && pattern.get(q + 2).is_some_and(|&e| e != b']') =>
            {
                let (lo, hi) = (b.min(pattern[q + 2]), b.max(pattern[q + 2]));
                matched |= (lo..=hi).contains(&c);
                q += 3;
            }
            _ => {
                matched |= b == c;
                q += 1;
            }
        }
    }
    Some((matched != negate, q + 1))
}

/// An expiry `amount` units (1 = ms, 1000 = s) from now, or at the
/// absolute time `amount` when `absolute`; `None` on overflow.
fn expiry_at(now: UnixMs, amount: i64, unit: i64, absolute: bool) -> Option<i64> {
    let ms = amount.checked_mul(unit)?;
    if absolute {
        Some(ms)
    } else {
        ms.checked_add(now.0 as i64)
    }
}

/// Runs one command on `db`, appending its reply.
fn execute<E: KvEngine>(
    s: &mut Session,
    sh: &Shared<E>,
    db: &mut Db<'_, E>,
    spec: &Spec,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), Fail> {
    let e = engine_err;
    db.counting = spec.flags & WRITE == 0;
    let mut r = Reply(out);
    match spec.cmd {
        Cmd::Ping => match a.len() {
            1 => r.simple("PONG"),
            2 => r.bulk(a[1]),
            _ => {
                return Err(format!(
                    "ERR wrong number of arguments for '{}' command",
                    spec.name
                ))
            }
        },
        Cmd::Echo => r.bulk(a[1]),
        Cmd::Quit => {
            r.ok();
            s.closing = true;
        }
        Cmd::Select => match parse_i64(a[1]) {
            Some(0) => r.ok(),
            Some(_) => return Err("ERR DB index is out of range".into()),
            None => return Err(NOT_INT.into()),
        },
        Cmd::Hello => hello(s, a, &mut r)?,
        Cmd::Client => client(s, a, &mut r)?,
        Cmd::Command => command(a, &mut r)?,
        Cmd::Get => match db.get(a[1]).map_err(e)? {
            Some(v) => r.bulk(&v.value),
            None => r.null(),
        },
        Cmd::Set => set(db, a, &mut r)?,
        Cmd::Setnx => {
            if db.exists(a[1]).map_err(e)? {
                r.int(0);
            } else {
                check_value(db, a[2].len())?;
                db.put(a[1], a[2].to_vec(), None);
                r.int(1);
            }
        }
        Cmd::Getset => {
            check_value(db, a[2].len())?;
            match db.get(a[1]).map_err(e)? {
                Some(old) => r.bulk(&old.value),
                None => r.null(),
            }
            db.put(a[1], a[2].to_vec(), None);
        }
        Cmd::Getdel => match db.get(a[1]).map_err(e)? {
            Some(old) => {
                r.bulk(&old.value);
                db.delete(a[1]);
            }
            None => r.null(),
        },
        Cmd::Mget => {
            r.array(a.len() - 1);
            for k in &a[1..] {
                match db.get(k).map_err(e)? {
                    Some(v) => r.bulk(&v.value),
                    None => r.null(),
                }
            }
        }
        Cmd::Mset | Cmd::Msetnx => {
            if a.len().is_multiple_of(2) {
                return Err(format!(
                    "ERR wrong number of arguments for '{}' command",
                    spec.name
                ));
            }
            for pair in a[1..].chunks(2) {
                check_value(db, pair[1].len())?;
            }
            if spec.cmd == Cmd::Msetnx {
                for pair in a[1..].chunks(2) {
                    if db.exists(pair[0]).map_err(e)? {
                        r.int(0);
                        return Ok(());
                    }
                }
            }
            for pair in a[1..].chunks(2) {
                db.put(pair[0], pair[1].to_vec(), None);
            }
            if spec.cmd == Cmd::Msetnx {
                r.int(1);
            } else {
                r.ok();
            }
        }
        Cmd::Del | Cmd::Unlink => {
            let mut n = 0;
            for k in &a[1..] {
                if db.exists(k).map_err(e)? {
                    db.delete(k);
                    n += 1;
                }
            }
            r.int(n);
        }
        Cmd::Exists => {
            let mut n = 0;
            for k in &a[1..] {
                if db.exists(k).map_err(e)? {
                    n += 1;
                }
            }
            r.int(n);
        }
        Cmd::Incr | Cmd::Decr | Cmd::Incrby | Cmd::Decrby => {
            let by = match spec.cmd {
                Cmd::Incr => 1,
                Cmd::Decr => -1,
                Cmd::Incrby => int_arg(a[2])?,
                _ => int_arg(a[2])?
                    .checked_neg()
                    .ok_or("ERR decrement would overflow")?,
            };
            let old = db.get(a[1]).map_err(e)?;
            let (n, expires) = match &old {
                Some(v) => (parse_i64(&v.value).ok_or(NOT_INT)?, v.expires),
                None => (0, None),
            };
            let n = n.checked_add(by).ok_or(OVERFLOW)?;
            let mut text = Vec::new();
            crate::resp::push_int(&mut text, n);
            db.put(a[1], text, expires);
            r.int(n);
        }
        Cmd::Append => {
            let old = db.get(a[1]).map_err(e)?.unwrap_or_default();
            let len = old.value.len() + a[2].len();
            check_value(db, len)?;
            let mut v = old.value;
            v.extend_from_slice(a[2]);
            db.put(a[1], v, old.expires);
            r.int(len as i64);
        }
        Cmd::Strlen => {
            let len = db.get(a[1]).map_err(e)?.map_or(0, |v| v.value.len());
            r.int(len as i64);
        }
        Cmd::Getrange => {
            let (start, end) = (int_arg(a[2])?, int_arg(a[3])?);
            let v = db.get(a[1]).map_err(e)?.unwrap_or_default().value;
            r.bulk(substr(&v, start, end));
        }
        Cmd::Setrange => {
            let offset = int_arg(a[2])?;
            if offset < 0 {
                return Err("ERR offset is out of range".into());
            }
            let old = db.get(a[1]).map_err(e)?;
            let end = (offset as u64).saturating_add(a[3].len() as u64);
            match old {
                None if a[3].is_empty() => r.int(0),
                Some(v) if a[3].is_empty() => r.int(v.value.len() as i64),
                old => {
                    if end > db.engine().max_value() as u64 {
                        return Err(
                            "ERR string exceeds maximum allowed size (proto-max-bulk-len)".into(),
                        );
                    }
                    let Entry { mut value, expires } = old.unwrap_or_default();
                    let end = end as usize;
                    if value.len() < end {
                        value.resize(end, 0);
                    }
                    value[offset as usize..end].copy_from_slice(a[3]);
                    r.int(value.len() as i64);
                    db.put(a[1], value, expires);
                }
            }
        }
        Cmd::Type => {
            if db.exists(a[1]).map_err(e)? {
                r.simple("string");
            } else {
                r.simple("none");
            }
        }
        Cmd::Rename => {
            let Some(v) = db.get(a[1]).map_err(e)? else {
                return Err("ERR no such key".into());
            };
            if a[1] != a[2] {
                db.delete(a[1]);
                db.put(a[2], v.value, v.expires);
            }
            r.ok();
        }
        Cmd::Expire | Cmd::Pexpire => {
            let unit = if spec.cmd == Cmd::Expire { 1000 } else { 1 };
            let amount = int_arg(a[2])?;
            let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
            for opt in &a[3..] {
                match () {
                    _ if eq(opt, "nx") => nx = true,
                    _ if eq(opt, "xx") => xx = true,
                    _ if eq(opt, "gt") => gt = true,
                    _ if eq(opt, "lt") => lt = true,
                    _ => return Err(format!("ERR Unsupported option {}", printable(opt, 64))),
                }
            }
            if (nx && (xx || gt || lt)) || (gt && lt) {
                return Err(
                    "ERR NX and XX, GT or LT options at the same time are not compatible".into(),
                );
            }
            let at = expiry_at(db.now(), amount, unit, false)
                .ok_or_else(|| format!("ERR invalid expire time in '{}' command", spec.name))?;
            let Some(v) = db.get(a[1]).map_err(e)? else {
                r.int(0);
                return Ok(());
            };
            // A missing expiry counts as infinite for GT and LT.
            let ok = match v.expires {
                None => !xx && !gt,
                Some(old) => !nx && (!gt || at > old.0 as i64) && (!lt || at < old.0 as i64),
            };
            if !ok {
                r.int(0);
            } else if at <= db.now().0 as i64 {
                db.delete(a[1]);
                r.int(1);
            } else {
                db.put(a[1], v.value, Some(UnixMs(at as u64)));
                r.int(1);
            }
        }
        Cmd::Persist => match db.get(a[1]).map_err(e)? {
            Some(v) if v.expires.is_some() => {
                db.put(a[1], v.value, None);
                r.int(1);
            }
            _ => r.int(0),
        },
        Cmd::Ttl | Cmd::Pttl => match db.get(a[1]).map_err(e)? {
            None => r.int(-2),
            Some(Entry { expires: None, .. }) => r.int(-1),
            Some(Entry {
                expires: Some(t), ..
            }) => {
                let ms = t.0.saturating_sub(db.now().0) as i64;
                r.int(if spec.cmd == Cmd::Ttl {
                    (ms + 500) / 1000
                } else {
                    ms
                });
            }
        },
        Cmd::Keys => {
            let mut keys = Vec::new();
            let mut from = Cursor::Start;
            while from != Cursor::Done {
                from = scan_live(db, &from, 1024, &mut |k| {
                    if glob(a[1], k) {
                        keys.push(k.to_vec());
                    }
                })?;
            }
            r.array(keys.len());
            for k in &keys {
                r.bulk(k);
            }
        }
        Cmd::Scan => scan(s, db, a, &mut r)?,
        Cmd::DbosRange => range(db, a, &mut r)?,
        Cmd::Dbsize => r.int(db.engine().len().map_err(e)? as i64),
        Cmd::Flushdb | Cmd::Flushall => {
            if let Some(opt) = a.get(1) {
                if !(eq(opt, "sync") || eq(opt, "async")) || a.len() > 2 {
                    return Err(SYNTAX.into());
                }
            }
            if db.pending() > 0 {
                return Err("ERR FLUSHDB inside MULTI after writes is not supported".into());
            }
            let t = db.engine().clear().map_err(e)?;
            db.engine().wait(t).map_err(e)?;
            r.ok();
        }
        Cmd::Info => super::info::info(sh, a, &mut r).map_err(e)?,
        Cmd::Config => config(sh, a, &mut r)?,
        Cmd::Bgsave => {
            if a.len() > 2 || a.get(1).is_some_and(|o| !eq(o, "schedule")) {
                return Err(SYNTAX.into());
            }
            db.engine().bgsave().map_err(e)?;
            r.simple("Background saving started");
        }
        Cmd::Save => {
            db.engine().save().map_err(e)?;
            r.ok();
        }
        Cmd::Lastsave => r.int(db.engine().save_status().last_save_unix as i64),
        Cmd::Shutdown => {
            let mut save = None;
            for opt in &a[1..] {
                match () {
                    _ if eq(opt, "save") => save = Some(true),
                    _ if eq(opt, "nosave") => save = Some(false),
                    _ if eq(opt, "now") || eq(opt, "force") || eq(opt, "abort") => {}
                    _ => return Err(SYNTAX.into()),
                }
            }
            // Without an option: save where saves are configured.
            let save = save.unwrap_or(sh.config.save_every.load(Ordering::Relaxed) > 0);
            if let Err(err) = db.engine().shutdown(save) {
                log::error!("SHUTDOWN: {err}");
                return Err("ERR Errors trying to SHUTDOWN. Check logs.".into());
            }
            sh.request_shutdown();
            s.closing = true;
        }
        Cmd::Multi | Cmd::Exec | Cmd::Discard => {
            unreachable!("run handles MULTI, EXEC and DISCARD")
        }
    }
    Ok(())
}

fn check_value<E: KvEngine>(db: &Db<'_, E>, len: usize) -> Result<(), Fail> {
    let max = db.engine().max_value();
    if len > max {
        return Err(format!(
            "ERR string exceeds maximum allowed size ({len} bytes; this engine stores at most {max})"
        ));
    }
    Ok(())
}

/// Redis's GETRANGE: negative indexes count from the end, both inclusive.
fn substr(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (norm(start), norm(end).min(len - 1));
    if start > end || start >= len {
        return &[];
    }
    &v[start as usize..=end as usize]
}

fn set<E: KvEngine>(db: &mut Db<'_, E>, a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
    let mut expires: Option<i64> = None;
    let mut i = 3;
    let now = db.now();
    while i < a.len() {
        let opt = a[i];
        let timed = match () {
            _ if eq(opt, "ex") => Some((1000, false)),
            _ if eq(opt, "px") => Some((1, false)),
            _ if eq(opt, "exat") => Some((1000, true)),
            _ if eq(opt, "pxat") => Some((1, true)),
            _ => None,
        };
        if let Some((unit, absolute)) = timed {
            if expires.is_some() || keep {
                return Err(SYNTAX.into());
            }
            let n = int_arg(a.get(i + 1).ok_or(SYNTAX)?)?;
            let bad = || "ERR invalid expire time in 'set' command".to_string();
            if n <= 0 {
                return Err(bad());
            }
            expires = Some(expiry_at(now, n, unit, absolute).ok_or_else(bad)?);
            i += 2;
            continue;
        }
        match () {
            _ if eq(opt, "nx") && !xx => nx = true,
            _ if eq(opt, "xx") && !nx => xx = true,
            _ if eq(opt, "get") => get = true,
            _ if eq(opt, "keepttl") && expires.is_none() => keep = true,
            _ => return Err(SYNTAX.into()),
        }
        i += 1;
    }
    check_value(db, a[2].len())?;
    // The old value matters only to NX, XX, GET and KEEPTTL: a plain SET
    // reads nothing.
    let old = if nx || xx || get || keep {
        db.get(a[1]).map_err(engine_err)?
    } else {
        None
    };
    let reply_old = |r: &mut Reply<'_>| match &old {
        Some(v) => r.bulk(&v.value),
        None => r.null(),
    };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        if get {
            reply_old(r);
        } else {
            r.null();
        }
        return Ok(());
    }
    let expires = match (keep, expires) {
        (true, _) => old.as_ref().and_then(|v| v.expires),
        (false, Some(at)) if at <= db.now().0 as i64 => {
            // Already expired (EXAT in the past): the key is gone.
            db.delete(a[1]);
            if get {
                reply_old(r)
            } else {
                r.ok()
            }
            return Ok(());
        }
        (false, at) => at.map(|t| UnixMs(t as u64)),
    };
    db.put(a[1], a[2].to_vec(), expires);
    if get {
        reply_old(r);
    } else {
        r.ok();
    }
    Ok(())
}

/// Scans from `from`, calling `f` for each live key; where to resume.
fn scan_live<E: KvEngine>(
    db: &Db<'_, E>,
    from: &Cursor,
    limit: usize,
    f: &mut dyn FnMut(&[u8]),
) -> Result<Cursor, Fail> {
    db.engine()
        .scan(from, limit, &mut |k, _, exp| {
            if db.alive(exp) {
                f(k)
            }
        })
        .map_err(engine_err)
}

fn scan<E: KvEngine>(
    s: &mut Session,
    db: &mut Db<'_, E>,
    a: &[&[u8]],
    r: &mut Reply<'_>,
) -> Result<(), Fail> {
    let cursor = core::str::from_utf8(a[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or("ERR invalid cursor")?;
    let (mut pattern, mut count): (Option<&[u8]>, usize) = (None, 10);
    let mut i = 2;
    while i < a.len() {
        let v = a.get(i + 1).ok_or(SYNTAX)?;
        match () {
            _ if eq(a[i], "match") => pattern = Some(v),
            _ if eq(a[i], "count") => {
                count = match parse_i64(v) {
                    Some(n) if n >= 1 => n.min(1 << 20) as usize,
                    Some(_) => return Err(SYNTAX.into()),
                    None => return Err(NOT_INT.into()),
                }
            }
            // Every key is a string.
            _ if eq(a[i], "type") => {
                if !eq(v, "string") {
                    count = 0;
                }
            }
            _ => return Err(SYNTAX.into()),
        }
        i += 2;
    }
    let ordered = db.engine().ordered();
    let from = match (cursor, ordered) {
        (0, _) => Cursor::Start,
        (n, false) => Cursor::Slot(n),
        (n, true) => match s.cursors.iter().position(|(c, _)| *c == n) {
            Some(i) => Cursor::Key(s.cursors.remove(i).1),
            None => return Err("ERR invalid cursor".into()),
        },
    };
    let mut keys = Vec::new();
    let next = if count == 0 {
        Cursor::Done
    } else {
        scan_live(db, &from, count, &mut |k| {
            if pattern.is_none_or(|p| glob(p, k)) {
                keys.push(k.to_vec());
            }
        })?
    };
    let next = match next {
        Cursor::Done | Cursor::Start => 0,
        Cursor::Slot(n) => n,
        Cursor::Key(k) => {
            // Ordered engines resume at a key, remembered per connection
            // (the 16 latest).
            s.next_cursor += 1;
            if s.cursors.len() >= 16 {
                s.cursors.remove(0);
            }
            s.cursors.push((s.next_cursor, k));
            s.next_cursor
        }
    };
    r.array(2);
    r.bulk(next.to_string().as_bytes());
    r.array(keys.len());
    for k in &keys {
        r.bulk(k);
    }
    Ok(())
}

fn range<E: KvEngine>(db: &mut Db<'_, E>, a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    if !db.engine().ordered() {
        return Err(format!(
            "ERR DBOS.RANGE needs an ordered engine; the '{}' engine is not",
            db.engine().name()
        ));
    }
    let mut limit = usize::MAX;
    match a.len() {
        3 => {}
        5 if eq(a[3], "limit") => {
            limit = match parse_i64(a[4]) {
                Some(n) if n >= 0 => n as usize,
                _ => return Err(NOT_INT.into()),
            }
        }
        _ => return Err(SYNTAX.into()),
    }
    let (from, to) = (a[1], a[2]);
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cursor = Cursor::Key(from.to_vec());
    while pairs.len() < limit && !matches!(cursor, Cursor::Done) {
        let mut past = false;
        cursor = db
            .engine()
            .scan(&cursor, (limit - pairs.len()).min(256), &mut |k, v, exp| {
                if k > to {
                    past = true;
                } else if !past && pairs.len() < limit && db.alive(exp) {
                    pairs.push((k.to_vec(), v.to_vec()));
                }
            })
            .map_err(engine_err)?;
        if past {
            break;
        }
    }
    r.array(pairs.len() * 2);
    for (k, v) in &pairs {
        r.bulk(k);
        r.bulk(v);
    }
    Ok(())
}

fn hello(s: &mut Session, a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    let mut i = 1;
    if let Some(v) = a.get(1) {
        match parse_i64(v) {
            Some(2) => {}
            Some(_) => return Err("NOPROTO unsupported protocol version".into()),
            None => return Err("ERR Protocol version is not an integer or out of range".into()),
        }
        i = 2;
    }
    while i < a.len() {
        match () {
            _ if eq(a[i], "setname") && i + 1 < a.len() => {
                set_name(s, a[i + 1])?;
                i += 2;
            }
            _ if eq(a[i], "auth") && i + 2 < a.len() => {
                return Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into());
            }
            _ => {
                return Err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    printable(a[i], 64)
                ))
            }
        }
    }
    r.array(14);
    for (k, v) in [("server", "redis"), ("version", REDIS_VERSION)] {
        r.bulk(k.as_bytes());
        r.bulk(v.as_bytes());
    }
    r.bulk(b"proto");
    r.int(2);
    r.bulk(b"id");
    r.int(s.id as i64);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        r.bulk(k.as_bytes());
        r.bulk(v.as_bytes());
    }
    r.bulk(b"modules");
    r.array(0);
    Ok(())
}

fn set_name(s: &mut Session, name: &[u8]) -> Result<(), Fail> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    s.name = (!name.is_empty()).then(|| name.to_vec());
    Ok(())
}

fn client(s: &mut Session, a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    let sub = a[1];
    match () {
        _ if eq(sub, "setname") && a.len() == 3 => {
            set_name(s, a[2])?;
            r.ok();
        }
        _ if eq(sub, "getname") && a.len() == 2 => match &s.name {
            Some(n) => r.bulk(n),
            None => r.null(),
        },
        _ if eq(sub, "id") && a.len() == 2 => r.int(s.id as i64),
        _ if eq(sub, "setinfo") && a.len() == 4 => r.ok(),
        _ if eq(sub, "setname") || eq(sub, "getname") || eq(sub, "id") || eq(sub, "setinfo") => {
            return Err(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                printable(sub, 32).to_ascii_lowercase()
            ))
        }
        _ => {
            return Err(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                printable(sub, 128)
            ))
        }
    }
    Ok(())
}

fn command_info(spec: &Spec, r: &mut Reply<'_>) {
    r.array(10);
    r.bulk(spec.name.as_bytes());
    r.int(spec.arity as i64);
    let flags: Vec<&str> = spec.flag_names().collect();
    r.array(flags.len());
    for f in flags {
        r.simple(f);
    }
    r.int(spec.keys.0 as i64);
    r.int(spec.keys.1 as i64);
    r.int(spec.keys.2 as i64);
    for _ in 0..4 {
        // ACL categories, tips, key specs, subcommands: none.
        r.array(0);
    }
}

fn command(a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    let Some(sub) = a.get(1) else {
        r.array(COMMANDS.len());
        for spec in COMMANDS {
            command_info(spec, r);
        }
        return Ok(());
    };
    let named = |names: &[&[u8]]| -> Vec<Option<&'static Spec>> {
        names.iter().map(|n| table::lookup(n)).collect()
    };
    match () {
        _ if eq(sub, "count") && a.len() == 2 => r.int(COMMANDS.len() as i64),
        _ if eq(sub, "info") => {
            let specs = if a.len() == 2 {
                COMMANDS.iter().map(Some).collect()
            } else {
                named(&a[2..])
            };
            r.array(specs.len());
            for spec in specs {
                match spec {
                    Some(spec) => command_info(spec, r),
                    None => r.null_array(),
                }
            }
        }
        _ if eq(sub, "docs") => {
            let specs: Vec<&Spec> = if a.len() == 2 {
                COMMANDS.iter().collect()
            } else {
                named(&a[2..]).into_iter().flatten().collect()
            };
            r.array(specs.len() * 2);
            for spec in specs {
                r.bulk(spec.name.as_bytes());
                r.array(6);
                r.bulk(b"summary");
                r.bulk(spec.summary.as_bytes());
                r.bulk(b"since");
                r.bulk(b"1.0.0");
                r.bulk(b"group");
                r.bulk(spec.group.as_bytes());
            }
        }
        _ => {
            return Err(format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                printable(sub, 128)
            ))
        }
    }
    Ok(())
}

/// The parameters CONFIG GET answers, with their values now.
fn config_values<E: KvEngine>(sh: &Shared<E>) -> Vec<(&'static str, String)> {
    let c = &sh.config;
    let every = c.save_every.load(Ordering::Relaxed);
    let btree = sh.engine.name() == "btree";
    alloc::vec![
        ("appendfsync", "always".into()),
        // The B+tree logs every write before it is acknowledged, which is
        // what an append-only file gives Redis.
        ("appendonly", if btree { "yes" } else { "no" }.into()),
        (
            "client-query-buffer-limit",
            c.client_query_buffer_limit
                .load(Ordering::Relaxed)
                .to_string()
        ),
        ("databases", "1".into()),
        ("dir", c.dir.clone()),
        (
            "maxclients",
            c.maxclients.load(Ordering::Relaxed).to_string()
        ),
        ("port", c.port.load(Ordering::Relaxed).to_string()),
        (
            "proto-max-bulk-len",
            c.proto_max_bulk_len.load(Ordering::Relaxed).to_string()
        ),
        (
            "save",
            if every == 0 {
                String::new()
            } else {
                format!("{every} 1")
            }
        ),
    ]
}

fn config<E: KvEngine>(sh: &Shared<E>, a: &[&[u8]], r: &mut Reply<'_>) -> Result<(), Fail> {
    let sub = a[1];
    match () {
        _ if eq(sub, "get") && a.len() >= 3 => {
            let values = config_values(sh);
            let hits: Vec<&(&str, String)> = values
                .iter()
                .filter(|(name, _)| {
                    a[2..]
                        .iter()
                        .any(|p| glob(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .collect();
            r.array(hits.len() * 2);
            for (name, value) in hits {
                r.bulk(name.as_bytes());
                r.bulk(value.as_bytes());
            }
        }
        _ if eq(sub, "set") && a.len() >= 4 && a.len().is_multiple_of(2) => {
            for pair in a[2..].chunks(2) {
                let bad = || {
                    format!(
                        "ERR CONFIG SET failed (possibly related to argument '{}') - argument must be a positive integer",
                        printable(pair[0], 64)
                    )
                };
                let n = || -> Result<usize, Fail> {
                    parse_i64(pair[1])
                        .filter(|&n| n > 0)
                        .map(|n| n as usize)
                        .ok_or_else(bad)
                };
                let c = &sh.config;
                match () {
                    _ if eq(pair[0], "maxclients") => c.maxclients.store(n()?, Ordering::Relaxed),
                    _ if eq(pair[0], "proto-max-bulk-len") => c
                        .proto_max_bulk_len
                        .store(n()?.max(1024), Ordering::Relaxed),
                    _ if eq(pair[0], "client-query-buffer-limit") => c
                        .client_query_buffer_limit
                        .store(n()?.max(1024 * 1024), Ordering::Relaxed),
                    _ => {
                        return Err(format!(
                            "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                            printable(pair[0], 64)
                        ))
                    }
                }
            }
            r.ok();
        }
        _ if eq(sub, "resetstat") && a.len() == 2 => r.ok(),
        _ if eq(sub, "get") || eq(sub, "set") || eq(sub, "resetstat") => {
            return Err(format!(
                "ERR wrong number of arguments for 'config|{}' command",
                printable(sub, 32).to_ascii_lowercase()
            ))
        }
        _ => {
            return Err(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                printable(sub, 128)
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_redis_parses_them() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b" 1",
            b"1 ",
            b"-0",
            b"9223372036854775808",
            b"1.5",
            b"-",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(!glob(b"h?llo", b"heello"));
        assert!(glob(b"h*llo", b"heeeello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[ae]llo", b"hillo"));
        assert!(glob(b"h[^e]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"h\\*llo", b"h*llo"));
        assert!(!glob(b"h\\*llo", b"hallo"));
        assert!(glob(b"user:*:name", b"user:42:name"));
        assert!(!glob(b"user:*:name", b"user:42:mail"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
    }

    #[test]
    fn getrange_indexes_like_redis() {
        let v = b"This is a string";
        assert_eq!(substr(v, 0, 3), b"This");
        assert_eq!(substr(v, -3, -1), b"ing");
        assert_eq!(substr(v, 0, -1), v);
        assert_eq!(substr(v, 10, 100), b"string");
        assert_eq!(substr(v, 100, 200), b"");
        assert_eq!(substr(v, -1, -5), b"");
        assert_eq!(substr(b"", 0, -1), b"");
    }
}
