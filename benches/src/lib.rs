//! Shared helpers for the dbos benchmarks (work in progress).
