//! The sans-IO core of the heartbeat service: decisions only, time as a
//! parameter (DESIGN.md §3, "Pure cores, thin drivers").
//!
//! - [`detector`]: which peers are live, given the beats heard and the time.

pub mod detector;
