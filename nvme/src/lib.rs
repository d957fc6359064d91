//! NVMe-style queue pairs (work in progress, see issue 4).
#![no_std]
