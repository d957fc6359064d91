//! The command table: one row per command, as Redis's own table has it
//! (name, arity, flags, key positions, group, summary). From it come the
//! arity errors, the `COMMAND` / `COMMAND INFO` / `COMMAND DOCS` replies,
//! which keys a command locks, and which commands a `MULTI` may queue.
//!
//! Arity as in Redis: positive = exactly that many arguments (the name
//! included), negative = at least that many.

/// The command a row dispatches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Append,
    Bgsave,
    Client,
    Command,
    Config,
    Dbsize,
    DbosRange,
    Decr,
    Decrby,
    Del,
    Discard,
    Echo,
    Exec,
    Exists,
    Expire,
    Flushall,
    Flushdb,
    Get,
    Getdel,
    Getrange,
    Getset,
    Hello,
    Incr,
    Incrby,
    Info,
    Keys,
    Lastsave,
    Mget,
    Mset,
    Msetnx,
    Multi,
    Persist,
    Pexpire,
    Ping,
    Pttl,
    Quit,
    Rename,
    Save,
    Scan,
    Select,
    Set,
    Setnx,
    Setrange,
    Shutdown,
    Strlen,
    Ttl,
    Type,
    Unlink,
}

/// The command writes data.
pub const WRITE: u8 = 1;
/// The command only reads data.
pub const READONLY: u8 = 2;
/// O(1) or O(log n).
pub const FAST: u8 = 4;
/// An administrative command.
pub const ADMIN: u8 = 8;
/// Not queued by MULTI: runs at once even inside one (MULTI, EXEC,
/// DISCARD, QUIT) or is refused there.
pub const NO_MULTI: u8 = 16;
/// Reads data by point lookups of its keys only (through `Db::get`), so
/// it can run without waiting for storage (`Session::process_async`).
pub const POINT_READ: u8 = 32;
/// Never touches the engine's data.
pub const NO_DATA: u8 = 64;

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Lower-case name, as `COMMAND` lists it.
    pub name: &'static str,
    pub arity: i32,
    pub flags: u8,
    /// First key argument, last (negative: from the end), step; 0 = none.
    pub keys: (i32, i32, i32),
    pub cmd: Cmd,
    /// Redis's command group (`string`, `generic`, `connection`, `server`,
    /// `transactions`).
    pub group: &'static str,
    pub summary: &'static str,
}

impl Spec {
    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    /// The positions of the key arguments in a call with `argc`
    /// arguments.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, last, step) = self.keys;
        let last = if last < 0 {
            argc as i32 + last
        } else {
            last.min(argc as i32 - 1)
        };
        let (first, step) = if first <= 0 || step <= 0 {
            (1, 1)
        } else {
            (first, step)
        };
        let end = if self.keys.0 <= 0 { 0 } else { last + 1 };
        (first..end.max(first))
            .step_by(step as usize)
            .map(|i| i as usize)
    }

    /// The flags' names for `COMMAND INFO`.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            (WRITE, "write"),
            (READONLY, "readonly"),
            (FAST, "fast"),
            (ADMIN, "admin"),
        ]
        .into_iter()
        .filter(|(f, _)| self.flags & f != 0)
        .map(|(_, n)| n)
    }
}

macro_rules! row {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $cmd:ident, $group:literal, $summary:literal) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            cmd: Cmd::$cmd,
            group: $group,
            summary: $summary,
        }
    };
}

const NONE: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);

/// Every command, sorted by name (looked up by binary search).
pub static COMMANDS: &[Spec] = &[
    row!("append", 3, WRITE, ONE, Append, "string", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    row!("bgsave", -1, ADMIN, NONE, Bgsave, "server", "Saves the database in the background (a snapshot file, or an online backup of the B+tree store)."),
    row!("client", -2, NO_DATA, NONE, Client, "connection", "CLIENT SETNAME, GETNAME and ID."),
    row!("command", -1, NO_DATA, NONE, Command, "server", "Returns detailed information about all commands (COUNT, INFO, DOCS)."),
    row!("config", -2, ADMIN, NONE, Config, "server", "CONFIG GET and SET of the parameters this server supports."),
    row!("dbos.range", -3, READONLY, (1, 2, 1), DbosRange, "generic", "Returns keys and values from FROM up to TO (inclusive) in key order: DBOS.RANGE FROM TO [LIMIT N]. Ordered engines only."),
    row!("dbsize", 1, READONLY, NONE, Dbsize, "server", "Returns the number of keys in the database."),
    row!("decr", 2, WRITE | FAST, ONE, Decr, "string", "Decrements the integer value of a key by one."),
    row!("decrby", 3, WRITE | FAST, ONE, Decrby, "string", "Decrements a number from the integer value of a key."),
    row!("del", -2, WRITE, ALL, Del, "generic", "Deletes one or more keys."),
    row!("discard", 1, FAST | NO_MULTI | NO_DATA, NONE, Discard, "transactions", "Discards a transaction."),
    row!("echo", 2, FAST | NO_DATA, NONE, Echo, "connection", "Returns the given string."),
    row!("exec", 1, NO_MULTI, NONE, Exec, "transactions", "Executes all commands in a transaction, atomically and with one durable commit."),
    row!("exists", -2, READONLY | FAST | POINT_READ, ALL, Exists, "generic", "Determines whether one or more keys exist."),
    row!("expire", -3, WRITE | FAST, ONE, Expire, "generic", "Sets the expiration time of a key in seconds."),
    row!("flushall", -1, WRITE, NONE, Flushall, "server", "Removes all keys."),
    row!("flushdb", -1, WRITE, NONE, Flushdb, "server", "Removes all keys of the database."),
    row!("get", 2, READONLY | FAST | POINT_READ, ONE, Get, "string", "Returns the string value of a key."),
    row!("getdel", 2, WRITE | FAST, ONE, Getdel, "string", "Returns the string value of a key after deleting the key."),
    row!("getrange", 4, READONLY | POINT_READ, ONE, Getrange, "string", "Returns a substring of the string stored at a key."),
    row!("getset", 3, WRITE | FAST, ONE, Getset, "string", "Returns the previous string value of a key after setting it to a new value."),
    row!("hello", -1, FAST | NO_MULTI | NO_DATA, NONE, Hello, "connection", "Handshakes with the server (protocol 2 only)."),
    row!("incr", 2, WRITE | FAST, ONE, Incr, "string", "Increments the integer value of a key by one."),
    row!("incrby", 3, WRITE | FAST, ONE, Incrby, "string", "Increments the integer value of a key by a number."),
    row!("info", -1, 0, NONE, Info, "server", "Returns information and statistics about the server."),
    row!("keys", 2, READONLY, NONE, Keys, "generic", "Returns all key names that match a pattern."),
    row!("lastsave", 1, FAST, NONE, Lastsave, "server", "Returns the Unix timestamp of the last successful save."),
    row!("mget", -2, READONLY | FAST | POINT_READ, ALL, Mget, "string", "Atomically returns the string values of one or more keys."),
    row!("mset", -3, WRITE, (1, -1, 2), Mset, "string", "Atomically creates or modifies the string values of one or more keys."),
    row!("msetnx", -3, WRITE, (1, -1, 2), Msetnx, "string", "Atomically sets the values of one or more keys only when none of them exist."),
    row!("multi", 1, FAST | NO_MULTI | NO_DATA, NONE, Multi, "transactions", "Starts a transaction."),
    row!("persist", 2, WRITE | FAST, ONE, Persist, "generic", "Removes the expiration time of a key."),
    row!("pexpire", -3, WRITE | FAST, ONE, Pexpire, "generic", "Sets the expiration time of a key in milliseconds."),
    row!("ping", -1, FAST | NO_DATA, NONE, Ping, "connection", "Returns the server's liveliness response."),
    row!("pttl", 2, READONLY | FAST | POINT_READ, ONE, Pttl, "generic", "Returns the expiration time in milliseconds of a key."),
    row!("quit", -1, FAST | NO_MULTI | NO_DATA, NONE, Quit, "connection", "Closes the connection."),
    row!("rename", 3, WRITE, (1, 2, 1), Rename, "generic", "Renames a key and overwrites the destination."),
    row!("save", 1, ADMIN, NONE, Save, "server", "Synchronously saves the database."),
    row!("scan", -2, READONLY, NONE, Scan, "generic", "Iterates over the key names in the database (MATCH, COUNT)."),
    row!("select", 2, FAST | NO_DATA, NONE, Select, "connection", "Changes the selected database (only 0 exists)."),
    row!("set", -3, WRITE, ONE, Set, "string", "Sets the string value of a key (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL)."),
    row!("setnx", 3, WRITE | FAST, ONE, Setnx, "string", "Sets the string value of a key only when the key doesn't exist."),
    row!("setrange", 4, WRITE, ONE, Setrange, "string", "Overwrites a part of a string value with another by an offset."),
    row!("shutdown", -1, ADMIN | NO_MULTI, NONE, Shutdown, "server", "Synchronously saves (SAVE) or not (NOSAVE), then shuts down the server."),
    row!("strlen", 2, READONLY | FAST | POINT_READ, ONE, Strlen, "string", "Returns the length of a string value."),
    row!("ttl", 2, READONLY | FAST | POINT_READ, ONE, Ttl, "generic", "Returns the expiration time in seconds of a key."),
    row!("type", 2, READONLY | FAST | POINT_READ, ONE, Type, "generic", "Determines the type of value stored at a key."),
    row!("unlink", -2, WRITE | FAST, ALL, Unlink, "generic", "Deletes one or more keys."),
];

/// The row of the command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > 16 {
        return None;
    }
    let mut lower = [0u8; 16];
    for (l, b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    let lower = &lower[..name.len()];
    COMMANDS
        .binary_search_by(|s| s.name.as_bytes().cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn the_table_is_sorted_and_found_in_any_case() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for s in COMMANDS {
            assert_eq!(
                lookup(s.name.to_ascii_uppercase().as_bytes()).unwrap().name,
                s.name
            );
        }
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(b"averyveryverylongname").is_none());
    }

    #[test]
    fn key_positions_follow_first_last_step() {
        let keys = |name: &str, argc| {
            lookup(name.as_bytes())
                .unwrap()
                .key_positions(argc)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("get", 2), [1]);
        assert_eq!(keys("mset", 7), [1, 3, 5]);
        assert_eq!(keys("del", 4), [1, 2, 3]);
        assert_eq!(keys("rename", 3), [1, 2]);
        assert_eq!(keys("ping", 2), Vec::<usize>::new());
        assert_eq!(keys("expire", 4), [1]);
        assert!(lookup(b"get").unwrap().arity_ok(2));
        assert!(!lookup(b"get").unwrap().arity_ok(3));
        assert!(lookup(b"del").unwrap().arity_ok(5));
        assert!(!lookup(b"del").unwrap().arity_ok(1));
    }
}
