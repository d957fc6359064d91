//! `INFO`: the server's state as Redis reports it (sections `server`,
//! `clients`, `persistence`, `stats`, `keyspace`), plus a `dbos` section
//! with the engine's event counters (page reads and writes, evictions,
//! log writes and commits per log write, snapshots, TLB shootdowns).

use super::engine::{EngineError, KvEngine};
use super::session::Shared;
use crate::resp::Reply;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;

const SECTIONS: [&str; 6] = [
    "server",
    "clients",
    "persistence",
    "stats",
    "keyspace",
    "dbos",
];

/// Appends the `INFO [section ...]` reply.
pub(super) fn info<E: KvEngine>(
    sh: &Shared<E>,
    args: &[&[u8]],
    r: &mut Reply<'_>,
) -> Result<(), EngineError> {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "default" || w == "everything");
    let mut text = String::new();
    for section in SECTIONS {
        if all || wanted.iter().any(|w| w == section) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            section_text(sh, section, &mut text)?;
        }
    }
    r.bulk(text.as_bytes());
    Ok(())
}

fn section_text<E: KvEngine>(
    sh: &Shared<E>,
    section: &str,
    t: &mut String,
) -> Result<(), EngineError> {
    fn line(t: &mut String, k: &str, v: &dyn core::fmt::Display) {
        let _ = write!(t, "{k}:{v}\r\n");
    }
    let st = &sh.stats;
    let get = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    match section {
        "server" => {
            t.push_str("# Server\r\n");
            line(t, "redis_version", &super::commands::REDIS_VERSION);
            line(t, "redis_mode", &"standalone");
            line(t, "dbos_engine", &sh.engine.name());
            line(t, "arch_bits", &64);
            line(t, "tcp_port", &sh.config.port.load(Ordering::Relaxed));
            let up = ((sh.clock)().0.saturating_sub(sh.started.0)) / 1000;
            line(t, "uptime_in_seconds", &up);
            line(t, "uptime_in_days", &(up / 86_400));
        }
        "clients" => {
            t.push_str("# Clients\r\n");
            line(t, "connected_clients", &get(&st.connected_clients));
            line(
                t,
                "maxclients",
                &sh.config.maxclients.load(Ordering::Relaxed),
            );
        }
        "persistence" => {
            let s = sh.engine.save_status();
            t.push_str("# Persistence\r\n");
            line(t, "loading", &0);
            line(t, "rdb_changes_since_last_save", &s.changes_since_save);
            line(t, "rdb_bgsave_in_progress", &u8::from(s.in_progress));
            line(t, "rdb_last_save_time", &s.last_save_unix);
            line(
                t,
                "rdb_last_bgsave_status",
                &if s.last_ok { "ok" } else { "err" },
            );
            line(t, "rdb_saves", &s.saves);
            line(t, "rdb_last_file_size", &s.latest_file_bytes);
            // How long writers were stopped for the last snapshot: what
            // Redis reports as the fork's duration.
            line(t, "latest_fork_usec", &s.latest_stall_us);
            line(t, "dbos_snapshot_copied_bytes", &s.latest_copied_bytes);
            let btree = sh.engine.name() == "btree";
            line(t, "aof_enabled", &u8::from(btree));
        }
        "stats" => {
            t.push_str("# Stats\r\n");
            line(
                t,
                "total_connections_received",
                &get(&st.connections_received),
            );
            line(t, "total_commands_processed", &get(&st.commands_processed));
            line(t, "total_net_input_bytes", &get(&st.net_input_bytes));
            line(t, "total_net_output_bytes", &get(&st.net_output_bytes));
            line(t, "rejected_connections", &get(&st.rejected_connections));
            line(t, "expired_keys", &get(&st.expired_keys));
            line(t, "keyspace_hits", &get(&st.keyspace_hits));
            line(t, "keyspace_misses", &get(&st.keyspace_misses));
            line(t, "dbos_protocol_errors", &get(&st.protocol_errors));
        }
        "keyspace" => {
            t.push_str("# Keyspace\r\n");
            let keys = sh.engine.len()?;
            if keys > 0 {
                let expires = sh.engine.expiring()?;
                let avg_ttl = get(&st.avg_ttl_ms);
                let _ = write!(t, "db0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n");
            }
        }
        _ => {
            t.push_str("# Dbos\r\n");
            let waits = get(&st.durable_waits);
            line(t, "durable_waits", &waits);
            line(t, "durable_clients", &get(&st.durable_clients));
            line(
                t,
                "clients_per_durable_wait",
                &format!(
                    "{:.2}",
                    get(&st.durable_clients) as f64 / waits.max(1) as f64
                ),
            );
            line(t, "loop_async_reads", &get(&st.async_reads));
            line(t, "loop_waiting_runs", &get(&st.waiting_runs));
            let mut counters = Vec::new();
            sh.engine.counters(&mut counters);
            if let Some(platform) = sh.platform_counters {
                platform(&mut counters);
            }
            for (k, v) in counters {
                line(t, k, &v);
            }
        }
    }
    Ok(())
}
