//! The in-process workload driver (being written).
