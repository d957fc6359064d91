//! The Redis-protocol server: its command layer and the engines behind it,
//! sans-I/O (bytes in, bytes out; the process build serves it with
//! sockets in `net`, the guest will through the VMM's network queue).
//!
//! - [`engine`]: the [`KvEngine`] interface every
//!   engine implements.
//! - [`btree`]: the durable B+tree engine on [`crate::Store`].
//! - [`session`]: one connection's state machine and what connections
//!   share ([`Shared`]).
//! - [`table`]: the command table (names, arities, flags, keys).
//! - `commands`: the commands themselves; `db`: a command's view of the
//!   data (its writes collected into one atomic group); `locks`: striped
//!   key locks; `info`: the `INFO` reply.
//! - [`expire`]: active expiry, a sweep the host runs now and then.

pub mod btree;
mod commands;
mod db;
pub mod engine;
pub mod expire;
mod info;
mod locks;
pub mod session;
pub mod table;

pub use engine::KvEngine;
pub use session::{Config, Progress, Session, Shared};
