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
//! On every device it also runs project-sync's serving core
//! ([`understudy_project_sync::core::Serving`]) against a modelled project
//! head and content store, with writers submitting changes (`project.rs`).
//!
//! Randomness comes only from `StdRng`s seeded from the run's seed (one for
//! the election side, one for project-sync, so each side's draws do not
//! shift the other's) and there is no wall clock and no thread, so a seed
//! replays exactly. Invariants are checked after every step (S1; S2 at every
//! head write and acknowledgement, `s2.rs`), at every takeover of a held
//! lease (no needless takeover) and after the faults end (L2, P1, B7); a
//! failure carries the seed, the step and the last events.

mod check;
mod head;
mod project;
mod s2;
mod schedule;
mod store;
mod world;

pub use project::Mutation;
pub use schedule::{Fault, Plan};
pub use world::{Failure, Report, client_heartbeat, run_mutated, run_plan, run_seed};

/// The largest clock-rate error the simulator gives a device, in parts per
/// million (±2 %). The election's drift allowance (5 %) must cover it.
pub const MAX_DRIFT_PPM: i64 = 20_000;
