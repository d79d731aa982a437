//! The heartbeat service of understudy: publishing this device's heartbeat and
//! detecting lost peers.
//!
//! Every device beats on `understudy.<group>.heartbeat.<device>` at its own
//! interval (100 ms by default) and says goodbye on
//! `understudy.<group>.leave.<device>` when it leaves cleanly. The heartbeat
//! service turns the beats it hears into *peer changes* — a device joined,
//! restarted, was lost or left — which discovery (roster, counts, problems) and
//! election (B5: "an election is held whenever the status quo is upset") act on.
//! A server that stops beating is declared lost after three missed heartbeats,
//! and the failover (L1) starts from that verdict.
//!
//! This crate holds the pure failure detector ([`Detector`]) and the
//! conversion of its verdicts into bus messages ([`peer_notice`]): no clock,
//! no sockets and no async runtime. The caller feeds it heartbeats, goodbyes and
//! the current time (a [`Duration`](std::time::Duration) since any origin it
//! likes) and arms one timer at [`Detector::next_deadline`]. That is what lets
//! the simulator run the real detector under seeded fault schedules.
//!
//! With the `driver` feature (on by default), `service` is the NATS driver
//! around it: `service::run` beats, announces presence, feeds the detector
//! from the bus and publishes its verdicts.

pub mod core;
#[cfg(feature = "driver")]
pub mod service;

pub use crate::core::detector::{
    DEFAULT_CLIENT_INTERVAL, DEFAULT_INTERVAL, Detector, DetectorConfig, PeerBeat, PeerChange,
};
pub use crate::core::notice::peer_notice;
pub use understudy_protocol::timing::{MAX_INTERVAL, MIN_INTERVAL};
