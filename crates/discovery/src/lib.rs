//! The discovery service of understudy: who is on the bus, and how this device
//! is doing.
//!
//! [`core`] is the decision logic, sans-IO (no clock, no bus): it is fed the
//! heartbeats, presence announcements and goodbyes heard on the bus, the state
//! of the bus connection and the current time, and answers
//!
//! - the **roster** of a project group — every device, live or missing, with
//!   what it reports about itself (B1, B2), duplicate ids flagged;
//! - the **server** a group's devices report;
//! - this device's **status colour and problems** (B2);
//! - the **counts** for the status bar, per group and network-wide (B10).
//!
//! Every answer is deterministic: the same inputs give the same output, in the
//! same order.
//!
//! [`reply`] fills in the answer to a roster request (`understudy status
//! --json`) from the core; the reply's type and JSON contract are the
//! protocol's ([`understudy_protocol::roster::RosterReply`]). With the `driver` feature (on
//! by default), `service` is the NATS driver around the core: `service::run`
//! feeds it the bus, publishes this device's status and answers roster
//! requests.

pub mod core;
pub mod reply;
#[cfg(feature = "driver")]
pub mod service;

pub use crate::core::counts::Counts;
pub use crate::core::roster::{DeviceEntry, PeerTally, Roster, SessionEntry};
pub use crate::core::status::{Findings, SelfState, Status, assess};
pub use crate::core::{BusLink, Discovery};
