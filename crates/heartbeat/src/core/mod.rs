//! The sans-IO core of the heartbeat service: decisions only, time as a
//! parameter ("pure cores, thin drivers").
//!
//! - [`detector`]: which peers are live, given the beats heard and the time.
//! - [`notice`]: the detector's verdicts as the bus messages the driver
//!   publishes.

pub mod detector;
pub mod notice;
