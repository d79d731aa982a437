//! Timing bounds every service shares, in one place.
//!
//! A device's services (heartbeat, discovery, election, project-sync) run in
//! one process or apart and only hear each other over the bus. They agree on
//! when one of them is *gone* — the liveness window — and on which periods
//! an operator may configure. Each rule lives here once; the services import
//! it rather than restating the number.

use std::time::Duration;

/// A device's own election service reports its state four times a second;
/// silent for this long, it is taken as gone: project-sync stops serving,
/// the heartbeat service stops claiming a role, the other services follow
/// another election service with the same device id, and a peer-lost
/// notice this old on arrival waited for the bus and is ignored.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(1);

/// The shortest heartbeat or publish interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest heartbeat or publish interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
