//! The NATS driver of the discovery service: plumbing between the bus and the
//! pure [`Discovery`] core (DESIGN.md §3, "Pure cores, thin drivers").
//!
//! It makes no decision of its own. It
//!
//! - feeds the core every heartbeat and goodbye of **every** group
//!   ([`HEARTBEATS_ALL`], [`LEAVES_ALL`]) and every presence announcement
//!   (`understudy.presence.*`), so the network-wide counts are true (B10);
//! - keeps this device's own state from its election service
//!   (`understudy.<group>.local.<device>.election`);
//! - tells the core every 100 ms whether the client holds a connection;
//! - publishes this device's colour and problems (B2) as a [`DeviceStatus`] on
//!   `…local.<device>.status` at once when they change, and every
//!   `publish_interval` otherwise — from the first election state on, since
//!   before it nobody knows whether the device is online;
//! - answers `understudy.<group>.roster` requests with a [`RosterReply`].
//!
//! The bus may be down at any moment: a publish that fails or cannot be
//! queued in time is logged at debug level and dropped, and the loop goes on.
//! Only failing to subscribe at start is an error.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Message};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use understudy_bus::{
    ElectionFollower, Followed, decoded, publish, publish_bytes, recv, stopped, ticker,
};
use understudy_protocol::messages::{
    DeviceStatus, ElectionState, Heartbeat, Leave, Presence, ProjectState,
};
use understudy_protocol::{DeviceId, GroupName, InstanceId, SCHEMA_VERSION, subjects};

use crate::core::Discovery;
use crate::core::roster::{MAX_INTERVAL, MIN_INTERVAL};
use crate::core::status::{SelfState, Status};
use crate::reply::RosterReply;

/// How often the status is published when it does not change, unless
/// configured otherwise.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How often the bus connection is checked (and stale entries dropped).
pub const BUS_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Every heartbeat of every group. Discovery listens network-wide because the
/// counts are network-wide too (B10).
// TODO(protocol): belongs in `understudy_protocol::subjects` beside `heartbeats`.
pub const HEARTBEATS_ALL: &str = "understudy.*.heartbeat.*";

/// Every goodbye of every group, for the same reason as [`HEARTBEATS_ALL`].
// TODO(protocol): belongs in `understudy_protocol::subjects` beside `leaves`.
pub const LEAVES_ALL: &str = "understudy.*.leave.*";

/// What the discovery service of one device needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The device's project group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// This process.
    pub instance: InstanceId,
    /// How often the status is published when it does not change;
    /// [`DEFAULT_PUBLISH_INTERVAL`] (1 s) by default. Must lie in
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
    pub publish_interval: Duration,
    /// The device's election service instance when it runs in this process:
    /// only its state is this device's. `None` (the services run apart): the
    /// first election service to report is followed, and another only once
    /// that one falls silent (`understudy_bus::follow`).
    pub election_instance: Option<InstanceId>,
}

impl DiscoveryConfig {
    /// The configuration of `device` with every default.
    pub fn new(group: GroupName, device: DeviceId, instance: InstanceId) -> Self {
        Self {
            group,
            device,
            instance,
            publish_interval: DEFAULT_PUBLISH_INTERVAL,
            election_instance: None,
        }
    }

    fn validate(&self) -> Result<(), ServiceError> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.publish_interval) {
            return Err(ServiceError::IntervalOutOfRange {
                what: "status publish interval",
                value: self.publish_interval,
                min: MIN_INTERVAL,
                max: MAX_INTERVAL,
            });
        }
        Ok(())
    }
}

/// Why the discovery service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A subscription could not be made at start (the client is closed or the
    /// subject was refused).
    #[error("cannot subscribe to the discovery service's subjects: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// An interval in [`DiscoveryConfig`] is out of range.
    #[error("{what} {value:?} is out of range {min:?}–{max:?}")]
    IntervalOutOfRange {
        /// Which interval.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest allowed.
        min: Duration,
        /// The longest allowed.
        max: Duration,
    },
}

/// Runs the discovery service of `cfg.device` on `client` until `shutdown`
/// turns true (or its sender is dropped).
///
/// Fails only at start: on an interval out of range, or if a subscription is
/// refused. Bus failures later on are logged and ridden out.
pub async fn run(
    client: Client,
    cfg: DiscoveryConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceError> {
    cfg.validate()?;
    let start = Instant::now();
    let (group, device) = (&cfg.group, &cfg.device);
    let mut beats_sub = Some(client.subscribe(HEARTBEATS_ALL).await?);
    let mut leaves_sub = Some(client.subscribe(LEAVES_ALL).await?);
    let mut presence_sub = Some(client.subscribe(subjects::PRESENCE_ALL).await?);
    let mut election_sub = Some(
        client
            .subscribe(subjects::local_election(group, device))
            .await?,
    );
    let mut roster_sub = Some(client.subscribe(subjects::roster(group)).await?);
    let mut project_sub = Some(
        client
            .subscribe(subjects::local_project(group, device))
            .await?,
    );
    let mut conflicts = 0u32;
    info!(%group, %device, instance = %cfg.instance, "discovery service started");

    let mut identity = cfg.instance;
    // B2: a second process with this device id hears our local subjects and
    // we hear its; only one election service's state is this device's.
    let mut follower = ElectionFollower::new(cfg.election_instance);
    let mut core = Discovery::new(cfg.device.clone(), identity, Duration::ZERO);
    core.set_bus_connected(is_connected(&client), Duration::ZERO);
    let mut me: Option<SelfState> = None;
    let mut shown = Shown::default();
    let mut bus_tick = ticker(BUS_CHECK_INTERVAL);
    let mut publish_tick = ticker(cfg.publish_interval);

    loop {
        let wake = core
            .next_deadline(start.elapsed())
            .and_then(|d| start.checked_add(d));
        let mut periodic = false;
        // Order matters (biased): stopping first, then the timers and the
        // rare local messages, so a flood of heartbeats cannot starve them.
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            _ = bus_tick.tick() => {
                let now = start.elapsed();
                let connected = is_connected(&client);
                if connected != core.bus().connected {
                    info!(connected, "bus connection changed");
                }
                core.set_bus_connected(connected, now);
                core.poll(now);
            }
            _ = publish_tick.tick() => periodic = true,
            msg = recv(&mut roster_sub, "roster requests") => {
                answer_roster(&client, &core, group, &msg, start.elapsed()).await;
                continue;
            }
            msg = recv(&mut election_sub, "election state") => {
                if let Some(state) = decoded::<ElectionState>(&msg) {
                    if state.device == cfg.device
                        && state.group == cfg.group
                        && let Followed::Other { followed } =
                            follower.follow(state.instance, std::time::Instant::now())
                    {
                        debug!(instance = %state.instance, %followed, "election state of another process with this device id ignored");
                        continue;
                    }
                    // The device's identity is its election service's
                    // instance (it beats under it); when the services run as
                    // separate processes, adopt it so our own beats are not
                    // taken for a duplicate.
                    if state.device == cfg.device
                        && state.group == cfg.group
                        && state.instance != identity
                    {
                        identity = state.instance;
                        let now = start.elapsed();
                        core = Discovery::new(cfg.device.clone(), identity, now);
                        core.set_bus_connected(is_connected(&client), now);
                        core.set_project_conflicts(conflicts);
                    }
                    me = self_state(&cfg, &state).or(me);
                }
            }
            msg = recv(&mut project_sub, "project state") => {
                if let Some(state) = decoded::<ProjectState>(&msg)
                    && state.device == cfg.device
                    && state.instance.is_none_or(|i| follower.followed() == Some(i))
                {
                    conflicts = state.conflicts;
                    core.set_project_conflicts(conflicts);
                }
            }
            msg = recv(&mut leaves_sub, "leaves") => {
                if let Some(leave) = decoded::<Leave>(&msg) {
                    core.observe_leave(&leave, start.elapsed());
                }
            }
            msg = recv(&mut presence_sub, "presence") => {
                if let Some(presence) = decoded::<Presence>(&msg) {
                    core.observe_presence(&presence, start.elapsed());
                }
            }
            msg = recv(&mut beats_sub, "heartbeats") => {
                if let Some(beat) = decoded::<Heartbeat>(&msg) {
                    core.observe_heartbeat(&beat, start.elapsed());
                }
            }
            () = tokio::time::sleep_until(wake.unwrap_or(start)), if wake.is_some() => {
                core.poll(start.elapsed());
            }
        }

        let Some(me) = &me else { continue };
        let status = core.status(start.elapsed(), me);
        if shown.due(&status, periodic) {
            if !periodic {
                publish_tick.reset();
            }
            let message = device_status(&cfg, status, follower.followed());
            publish(&client, subjects::local_status(group, device), &message).await;
        }
    }

    info!(%group, %device, "discovery service stopped");
    Ok(())
}

/// The status last published, to publish again only on a change or a tick.
#[derive(Debug, Default)]
struct Shown {
    last: Option<Status>,
}

impl Shown {
    /// Whether `status` must be published now: it differs from the last one
    /// published, or `periodic` says it is time anyway. Remembers it if so.
    fn due(&mut self, status: &Status, periodic: bool) -> bool {
        if !periodic && self.last.as_ref() == Some(status) {
            return false;
        }
        if self.last.as_ref() != Some(status) {
            debug!(colour = %status.colour, problems = ?status.problems, "status changed");
        }
        self.last = Some(status.clone());
        true
    }
}

/// This device's state for the core, from its election service's report;
/// `None` if the report is about another device or group.
fn self_state(cfg: &DiscoveryConfig, state: &ElectionState) -> Option<SelfState> {
    if state.device != cfg.device || state.group != cfg.group {
        debug!(device = %state.device, group = %state.group, "election state of another device ignored");
        return None;
    }
    Some(SelfState {
        group: cfg.group.clone(),
        online: state.online,
        role: state.role,
        term: state.term,
        score: state.score,
        mac: state.mac,
        in_grace: state.in_grace,
    })
}

fn device_status(
    cfg: &DiscoveryConfig,
    status: Status,
    instance: Option<InstanceId>,
) -> DeviceStatus {
    DeviceStatus {
        schema: SCHEMA_VERSION,
        group: cfg.group.clone(),
        device: cfg.device.clone(),
        colour: status.colour,
        problems: status.problems,
        instance,
    }
}

/// Replies to a roster request; the request's payload is ignored.
async fn answer_roster(
    client: &Client,
    core: &Discovery,
    group: &GroupName,
    msg: &Message,
    now: Duration,
) {
    let Some(reply_to) = msg.reply.clone() else {
        debug!("roster request without a reply subject ignored");
        return;
    };
    let reply = RosterReply::build(core, group, now);
    let payload = match serde_json::to_vec(&reply) {
        Ok(payload) => payload,
        Err(e) => {
            warn!(error = %e, "cannot encode the roster reply");
            return;
        }
    };
    publish_bytes(client, reply_to.to_string(), payload).await;
}

fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::{Mac, Problem, Role, Score, StatusColour, Term};

    fn cfg() -> DiscoveryConfig {
        DiscoveryConfig::new(
            "g".parse().expect("valid group"),
            "me".parse().expect("valid device"),
            InstanceId::new(1),
        )
    }

    fn election_state() -> ElectionState {
        ElectionState {
            schema: SCHEMA_VERSION,
            group: cfg().group,
            device: cfg().device,
            instance: InstanceId::new(2),
            mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
            score: Score::new(5),
            online: true,
            role: Role::Server,
            term: Term::from_revision(3),
            in_grace: false,
            server: None,
        }
    }

    #[test]
    fn status_is_published_on_change_or_tick_only() {
        let mut shown = Shown::default();
        let red = Status::online(vec![Problem::NoServer]);
        let blue = Status::online(vec![]);
        assert!(shown.due(&red, false), "the first status goes out at once");
        assert!(!shown.due(&red, false));
        assert!(shown.due(&red, true), "a tick repeats it");
        assert!(shown.due(&blue, false), "a change goes out at once");
        assert!(!shown.due(&blue, false));
        assert_eq!(
            shown.last.map(|s| s.colour),
            Some(StatusColour::Blue),
            "remembers what it published"
        );
    }

    #[test]
    fn self_state_comes_from_this_devices_election_state_only() {
        let me = self_state(&cfg(), &election_state()).expect("our own state");
        assert_eq!(me.role, Role::Server);
        assert_eq!(me.term, Term::from_revision(3));
        assert!(me.online);
        let mut other = election_state();
        other.device = "other".parse().expect("valid device");
        assert_eq!(self_state(&cfg(), &other), None);
    }

    #[test]
    fn publish_interval_out_of_range_is_refused() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.publish_interval = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
