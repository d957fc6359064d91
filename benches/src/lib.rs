//! Shared code of the dbos benchmarks: workloads run side by side on the
//! same file and machine, so that their ratios mean something.

pub mod nvme;
