//! A deterministic simulator of a project group.
//!
//! It runs the code a device ships between the bus and its decisions — the
//! heartbeat side's [`understudy_heartbeat::Detector`] and
//! [`understudy_heartbeat::peer_notice`], the election side's
//! [`understudy_election::InputStage`] and [`understudy_election::Machine`] —
//! for 3–25 devices over a simulated bus (delay, reordering, loss, devices
//! cut off from it whose messages wait in their client) and a simulated
//! compare-and-set lease store with expiry (the model of JetStream KV), while
//! a seeded schedule crashes, restarts, pauses and cuts off devices, drifts
//! their clocks, changes scores, takes devices offline and triggers elections.
//!
//! One `StdRng` seeded from the run is the only source of randomness and there
//! is no wall clock and no thread, so a seed replays exactly. Invariants are
//! checked after every step (S1), at every takeover of a held lease (no
//! needless takeover) and after the faults end (L2, P1, B7); a failure
//! carries the seed, the step and the last events.

mod check;
mod schedule;
mod store;
mod world;

pub use schedule::{Fault, Plan};
pub use world::{Failure, Report, run_plan, run_seed};

/// The largest clock-rate error the simulator gives a device, in parts per
/// million (±2 %). The election's drift allowance (5 %) must cover it.
pub const MAX_DRIFT_PPM: i64 = 20_000;
