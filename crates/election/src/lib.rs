//! The election service of understudy: who serves the project group.
//!
//! [`core`] is the decision logic as a sans-IO state machine: it is fed events
//! (peers seen and lost, lease observations, store replies, score and online
//! changes, operator triggers, the passing of time) and returns actions (claim,
//! renew or release the lease by compare-and-set, become server, step down,
//! publish an election event). It implements B3–B8 and the lease
//! rules that make S1 hold when the lease store is a compare-and-set register.
//! Its [`InputStage`] decides which peer heartbeats and failure-detector
//! verdicts reach the machine (dedup, live gating, stale verdicts).
//! The driver that turns those actions into JetStream KV calls lives beside it.

pub mod core;
#[cfg(feature = "driver")]
pub mod service;
#[cfg(feature = "driver")]
pub mod settings;

pub use crate::core::{
    Action, Candidate, ElectionConfig, Event, Expect, Ignored, Input, InputStage, Machine,
    MachineStatus, OpId, PeerStatus, StoreOutcome, UNHEARD_HOLDER_WAIT, deciding_rule, winner,
};
