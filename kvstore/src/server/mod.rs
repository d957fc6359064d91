//! The Redis-protocol server: its command layer and the engines behind it.
//!
//! - [`engine`]: the [`KvEngine`](engine::KvEngine) interface every
//!   engine implements.

pub mod engine;
