//! Tests of the network (filled below).
