//! The interface between the server's commands and a storage engine.
//!
//! The command layer (`server::commands`) turns every Redis command into
//! reads and atomic groups of writes on a [`KvEngine`]; it never sees
//! pages, logs or snapshots. Two engines implement it: the durable B+tree
//! (`server::btree`, every write logged and acknowledged once durable)
//! and the in-memory hash table persisted by snapshots (`memory`).
//!
//! # Contract
//!
//! - [`KvEngine::write`] applies its writes atomically (after a crash all
//!   of them or none) and makes them visible to every reader before it
//!   returns; it does **not** wait for durability. It returns a
//!   [`Ticket`], and [`KvEngine::wait`] returns once everything up to that
//!   ticket is durable. The server waits for the tickets of all the
//!   commands it ran for its ready connections at once before it sends
//!   their replies, so one log write carries many clients' commands (group
//!   commit) and no reply announces a write that is not durable.
//! - The engine does not serialize read-modify-write: the command layer
//!   holds a lock per key (striped) from its read to its write.
//! - Values carry an expiry time (milliseconds since the Unix epoch) that
//!   the engine stores with the value and returns with it; expired
//!   entries are filtered by the command layer, not by the engine.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
pub use dbos_bufferpool::pool::{BeginRead, PendingRead, Resident};
pub use dbos_bufferpool::{DeviceError, PageId};

/// Milliseconds since the Unix epoch: when a key expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMs(pub u64);

/// What a durable write waits for: an engine-defined position (the log's
/// LSN for the B+tree engine; the memory engine's writes are not durable
/// one by one, its tickets are always ready).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// One write of an atomic group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write<'a> {
    /// Sets `key` to `value` with an optional expiry.
    Put {
        key: &'a [u8],
        value: &'a [u8],
        expires: Option<UnixMs>,
    },
    /// Removes `key` (nothing if absent).
    Delete { key: &'a [u8] },
}

/// Where a scan starts (and where the next one resumes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The start of the keyspace.
    Start,
    /// An ordered engine: the first key `>=` this one.
    Key(Vec<u8>),
    /// An unordered engine: an engine-defined position (a slot number).
    Slot(u64),
    /// Nothing more.
    Done,
}

/// What an engine reports of its snapshots (`INFO persistence`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveStatus {
    /// A background save is running now.
    pub in_progress: bool,
    /// When the last successful save completed (seconds since the epoch;
    /// 0 = never).
    pub last_save_unix: u64,
    /// Whether the last save that finished succeeded (true when none ran).
    pub last_ok: bool,
    /// Saves completed successfully since the server started.
    pub saves: u64,
    /// How long writers were stopped to take the last snapshot, in
    /// microseconds (Redis's `latest_fork_usec`).
    pub latest_stall_us: u64,
    /// Bytes the last snapshot's mechanism copied to keep its view (pages
    /// copied on write), where the mechanism counts them.
    pub latest_copied_bytes: u64,
    /// Bytes of the last snapshot file.
    pub latest_file_bytes: u64,
    /// Writes (keys changed) since the last successful save.
    pub changes_since_save: u64,
}

/// What went wrong in an engine. The text of each is what the client is
/// told after `-ERR `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// A key or value over the engine's limits.
    TooLarge(String),
    /// The engine is out of space (memory for the memory engine, the disk
    /// or its `--max-size` for the B+tree); nothing was written.
    Full(String),
    /// More writes in one atomic group than the engine can apply as one.
    TooManyWrites { writes: usize, max: usize },
    /// The operation is not supported by this engine.
    Unsupported(String),
    /// The engine failed (an I/O error, a failed log write): it has
    /// stopped, no further write is accepted.
    Failed(String),
    /// A command run without waiting for storage needs it: the command
    /// is abandoned (nothing written, no reply) and runs again once the
    /// page is read (`Session::process_async`). Never sent to a client.
    WouldWait,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::TooLarge(s) | EngineError::Unsupported(s) => f.write_str(s),
            EngineError::Full(s) => write!(f, "out of space: {s}"),
            EngineError::TooManyWrites { writes, max } => write!(
                f,
                "{writes} writes in one atomic group; this engine applies at most {max} at once"
            ),
            EngineError::Failed(s) => write!(f, "the storage engine failed and stopped: {s}"),
            EngineError::WouldWait => f.write_str("the command waits for storage"),
        }
    }
}

/// A key-value engine as the server's commands see it (see the module
/// documentation for the contract).
#[allow(clippy::len_without_is_empty)]
pub trait KvEngine: Sync {
    /// The engine's name as `--engine` takes it (`btree`, `memory`).
    fn name(&self) -> &'static str;

    /// Copies the value of `key` into `out` (replacing its contents) and
    /// returns `Some(expiry)`; `None` if absent.
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Option<UnixMs>>, EngineError>;

    /// [`get`](Self::get) without waiting for storage, for an event loop
    /// that serves other clients while a page is read:
    /// [`Resident::Missing`] names a page to read in first
    /// ([`begin_read`](Self::begin_read)), [`Resident::WouldBlock`] says
    /// only the waiting `get` can answer. The default is `get` itself: an
    /// engine whose reads never wait for storage (the memory engine), or
    /// that cannot read asynchronously.
    fn get_resident(
        &self,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Resident<Option<Option<UnixMs>>>, EngineError> {
        self.get(key, out).map(Resident::Done)
    }

    /// Whether lookups may need pages read from storage, so that a caller
    /// serving many clients gains from [`get_resident`](Self::get_resident)
    /// and [`begin_read`](Self::begin_read) (the B+tree engine); false
    /// (the default) for an engine whose reads never wait.
    fn reads_storage(&self) -> bool {
        false
    }

    /// Prepares reading page `page` in for the caller to carry out (see
    /// `BufferManager::begin_read`: while the read is pending the caller
    /// must not wait for anything else of the engine). The default:
    /// [`BeginRead::Unsupported`].
    fn begin_read(&self, _page: PageId) -> Result<BeginRead, EngineError> {
        Ok(BeginRead::Unsupported)
    }

    /// Completes a read [`begin_read`](Self::begin_read) started, with the
    /// outcome of the caller's I/O; an error if the read failed or the
    /// page read is damaged (the page stays unread: the waiting `get`
    /// reads it again and reports what it finds).
    fn finish_read(
        &self,
        read: PendingRead,
        _result: Result<(), DeviceError>,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported(format!(
            "{}: no asynchronous reads (page {})",
            self.name(),
            read.id.0
        )))
    }

    /// Applies `writes` in order, atomically; visible on return, durable
    /// once [`wait`](Self::wait) for the returned ticket returns.
    fn write(&self, writes: &[Write<'_>]) -> Result<Ticket, EngineError>;

    /// Returns once every write up to `ticket` is durable.
    fn wait(&self, ticket: Ticket) -> Result<(), EngineError>;

    /// The highest ticket durable now (without waiting): a ticket at or
    /// below it needs no [`wait`](Self::wait).
    fn durable(&self) -> Ticket;

    /// Most writes one [`write`](Self::write) takes.
    fn max_writes(&self) -> usize;

    /// Longest key, longest value.
    fn max_key(&self) -> usize;
    fn max_value(&self) -> usize;

    /// True if [`scan`](Self::scan) delivers keys in ascending byte order
    /// (and takes [`Cursor::Key`]).
    fn ordered(&self) -> bool;

    /// Calls `f(key, value, expiry)` for about `limit` entries from `from`
    /// on and returns where the next scan resumes ([`Cursor::Done`] at the
    /// end). Entries written during a scan may or may not be seen; an entry
    /// present for the whole scan is delivered exactly once.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        from: &Cursor,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8], Option<UnixMs>),
    ) -> Result<Cursor, EngineError>;

    /// The number of keys (expired ones not yet removed included, as
    /// Redis counts them).
    fn len(&self) -> Result<u64, EngineError>;

    /// The number of keys with an expiry (expired ones not yet removed
    /// included): INFO keyspace's `expires`.
    fn expiring(&self) -> Result<u64, EngineError>;

    /// Removes every key; returns the ticket to wait for.
    fn clear(&self) -> Result<Ticket, EngineError>;

    /// Starts a background save (a snapshot file for the memory engine, an
    /// online backup for the B+tree) and returns without waiting for it.
    fn bgsave(&self) -> Result<(), EngineError>;

    /// Saves in the foreground and returns once the save is complete.
    fn save(&self) -> Result<(), EngineError>;

    /// The state of saves.
    fn save_status(&self) -> SaveStatus;

    /// The engine's counters for `INFO`'s `dbos` section, as
    /// `name:value` lines' parts.
    fn counters(&self, out: &mut Vec<(&'static str, u64)>);

    /// Makes everything durable for a clean shutdown (a checkpoint, or a
    /// final snapshot when `save` is true).
    fn shutdown(&self, save: bool) -> Result<(), EngineError>;
}
