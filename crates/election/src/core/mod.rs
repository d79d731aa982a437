//! The pure election core: no tokio, no NATS, no clock. Time is a parameter.

mod config;
mod input;
mod machine;
mod ranking;
mod types;

pub use config::ElectionConfig;
pub use input::{Ignored, Input, InputStage};
pub use machine::{Machine, MachineStatus, UNHEARD_HOLDER_WAIT};
pub use ranking::{Candidate, deciding_rule, winner};
pub use types::{Action, Event, Expect, OpId, PeerStatus, StoreOutcome};
