//! The NATS driver of the discovery service: plumbing between the bus and the
//! pure [`Discovery`] core, built from the `understudy_bus` driver skeleton.
//!
//! It makes no decision of its own. It
//!
//! - feeds the core the heartbeats of its own group
//!   (`understudy.<group>.heartbeat.*`), the goodbyes of every group
//!   (`subjects::ALL_LEAVES`, rare) and every presence announcement
//!   (`understudy.presence.*`): devices of other groups are counted from
//!   their presence, once a second, so the network-wide counts are true
//!   (B10) without every device hearing every beat of the network;
//! - keeps this device's own state from its election service
//!   (`understudy.<group>.local.<device>.election`, through an
//!   [`ElectionFeed`]: only the one election service followed counts, B2);
//! - tells the core every 100 ms whether the client holds a connection;
//! - publishes this device's colour and problems (B2) as a [`DeviceStatus`] on
//!   `…local.<device>.status` at once when they change, and every
//!   `publish_interval` otherwise — from the first election state on, since
//!   before it nobody knows whether the device is online;
//! - answers `understudy.<group>.roster` requests with a [`RosterReply`].
//!
//! The bus may be down at any moment: a publish that fails or cannot be
//! queued in time is logged at debug level and dropped, and the loop goes on.
//! Only a bad interval or failing to subscribe at start is an error.

use std::time::Duration;

use async_nats::{Client, Message};
use tokio::sync::watch;
use tokio::time::{Instant, Interval};
use tracing::{debug, info, warn};
use understudy_bus::{
    Beats, ElectionFeed, Inbox, SubscribeError, Subscription, connected, publish, publish_bytes,
    stopped, ticker,
};
use understudy_protocol::messages::{DeviceStatus, ElectionState, Leave, Presence, ProjectState};
use understudy_protocol::timing::check_interval;
use understudy_protocol::{DeviceId, GroupName, InstanceId, SCHEMA_VERSION, subjects};

use crate::core::Discovery;
use crate::core::status::{SelfState, Status};
use crate::reply::RosterReply;

/// How often the status is published when it does not change, unless
/// configured otherwise.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How often the bus connection is checked (and stale entries dropped).
pub const BUS_CHECK_INTERVAL: Duration = Duration::from_millis(100);

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
    /// `understudy_protocol::timing::MIN_INTERVAL..=MAX_INTERVAL`.
    pub publish_interval: Duration,
    /// The device's election service instance when it runs in this process:
    /// only its state is this device's. `None` (the services run apart): the
    /// first election service to report is followed, and another only once
    /// that one falls silent (`understudy_bus::follow`).
    pub election_instance: Option<InstanceId>,
    /// The group's heartbeats as the process's services share them (one
    /// subscription, decoded once: `understudy_bus::beats`). `None`: this
    /// service subscribes on its own.
    pub shared_beats: Option<understudy_bus::SharedBeats>,
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
            shared_beats: None,
        }
    }

    fn validate(&self) -> Result<(), ServiceError> {
        check_interval("status publish interval", self.publish_interval)?;
        Ok(())
    }
}

/// Why the service could not start (the shared [`understudy_bus::StartError`]: a
/// subscription refused, or an interval in [`DiscoveryConfig`] out of range).
pub use understudy_bus::StartError as ServiceError;

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
    let mut input = Inputs::subscribe(&client, &cfg).await?;
    info!(group = %cfg.group, device = %cfg.device, instance = %cfg.instance, "discovery service started");
    let mut bus_tick = ticker(BUS_CHECK_INTERVAL);
    let mut publish_tick = ticker(cfg.publish_interval);
    let mut d = Driver::new(client, cfg);

    loop {
        let wake = d.wake();
        let mut periodic = false;
        // Order matters (biased): stopping first, then the timers and the
        // rare local messages, so a flood of heartbeats cannot starve them.
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            _ = bus_tick.tick() => d.check_bus(),
            _ = publish_tick.tick() => periodic = true,
            msg = input.roster.next() => {
                d.answer_roster(&msg).await;
                continue;
            }
            state = input.election.next() => d.view.take_election(&state, d.now()),
            state = input.project.next() => {
                if state.device == d.view.cfg.device && input.election.is_followed(state.instance) {
                    d.view.core.set_project_conflicts(state.conflicts);
                }
            }
            leave = input.leaves.next() => {
                d.view.core.observe_leave(&leave, d.now());
            }
            presence = input.presence.next() => {
                d.view.core.observe_presence(&presence, d.now());
            }
            beat = input.beats.next() => {
                d.view.core.observe_heartbeat(&beat, d.now());
            }
            () = tokio::time::sleep_until(wake.unwrap_or(d.start)), if wake.is_some() => {
                d.view.core.poll(d.now());
            }
        }
        d.publish_status(periodic, &mut publish_tick, input.election.followed())
            .await;
    }

    info!(group = %d.view.cfg.group, device = %d.view.cfg.device, "discovery service stopped");
    Ok(())
}

/// Everything the discovery service listens to.
struct Inputs {
    beats: Beats,
    leaves: Inbox<Leave>,
    presence: Inbox<Presence>,
    election: ElectionFeed,
    project: Inbox<ProjectState>,
    /// Roster requests: their payload is ignored, so they stay raw.
    roster: Subscription,
}

impl Inputs {
    async fn subscribe(client: &Client, cfg: &DiscoveryConfig) -> Result<Self, SubscribeError> {
        let (group, device) = (&cfg.group, &cfg.device);
        Ok(Self {
            beats: Beats::subscribe(
                client,
                subjects::heartbeats(group),
                cfg.shared_beats.as_ref(),
            )
            .await?,
            leaves: Inbox::subscribe(client, subjects::ALL_LEAVES).await?,
            presence: Inbox::subscribe(client, subjects::PRESENCE_ALL).await?,
            election: ElectionFeed::subscribe(client, group, device, cfg.election_instance).await?,
            project: Inbox::subscribe(client, subjects::local_project(group, device)).await?,
            roster: Subscription::subscribe(client, subjects::roster(group)).await?,
        })
    }
}

/// The driver's I/O side: the client and the clock, around the [`View`].
struct Driver {
    client: Client,
    start: Instant,
    view: View,
}

impl Driver {
    fn new(client: Client, cfg: DiscoveryConfig) -> Self {
        let view = View::new(cfg, connected(&client));
        Self {
            client,
            start: Instant::now(),
            view,
        }
    }

    /// The core's time: since the driver started.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// When the core next needs a poll, if ever.
    fn wake(&self) -> Option<Instant> {
        let deadline = self.view.core.next_deadline(self.now())?;
        self.start.checked_add(deadline)
    }

    /// Tells the core whether the client holds a connection, and polls it.
    fn check_bus(&mut self) {
        let now = self.now();
        let connected = connected(&self.client);
        if connected != self.view.core.bus().connected {
            info!(connected, "bus connection changed");
        }
        self.view.core.set_bus_connected(connected, now);
        self.view.core.poll(now);
    }

    /// Publishes this device's status if it changed or `periodic` says it is
    /// time; a change also restarts the periodic timer. Tagged with the
    /// election service `followed`.
    async fn publish_status(
        &mut self,
        periodic: bool,
        tick: &mut Interval,
        followed: Option<InstanceId>,
    ) {
        let Some(status) = self.view.status_due(self.now(), periodic) else {
            return;
        };
        if !periodic {
            tick.reset();
        }
        let cfg = &self.view.cfg;
        let message = device_status(cfg, status, followed);
        publish(
            &self.client,
            subjects::local_status(&cfg.group, &cfg.device),
            &message,
        )
        .await;
    }

    /// Replies to a roster request; the request's payload is ignored.
    async fn answer_roster(&self, msg: &Message) {
        let Some(reply_to) = msg.reply.clone() else {
            debug!("roster request without a reply subject ignored");
            return;
        };
        let reply = RosterReply::build(&self.view.core, &self.view.cfg.group, self.now());
        let payload = match serde_json::to_vec(&reply) {
            Ok(payload) => payload,
            Err(e) => {
                warn!(error = %e, "cannot encode the roster reply");
                return;
            }
        };
        publish_bytes(&self.client, reply_to.to_string(), payload).await;
    }
}

/// What the driver keeps between messages, without I/O: the core, this
/// device's own state and the status last published.
struct View {
    cfg: DiscoveryConfig,
    core: Discovery,
    /// This device's own state, once its election service has reported.
    me: Option<SelfState>,
    shown: Shown,
}

impl View {
    fn new(cfg: DiscoveryConfig, connected: bool) -> Self {
        let mut core = Discovery::new(cfg.device.clone(), cfg.instance, Duration::ZERO);
        core.set_bus_connected(connected, Duration::ZERO);
        Self {
            cfg,
            core,
            me: None,
            shown: Shown::default(),
        }
    }

    /// Takes a state of this device's followed election service, received
    /// at `now`: its instance is the device's identity.
    fn take_election(&mut self, state: &ElectionState, now: Duration) {
        if self.core.adopt_identity(state.instance, now) {
            debug!(instance = %state.instance, "beating under the election service's instance");
        }
        self.me = Some(self_state(&self.cfg.group, state));
    }

    /// The status to publish now, if any: none before this device's own
    /// state is known, else as [`Shown::due`] says.
    fn status_due(&mut self, now: Duration, periodic: bool) -> Option<Status> {
        let status = self.core.status(now, self.me.as_ref()?);
        self.shown.due(&status, periodic).then_some(status)
    }
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

/// This device's state for the core, from its election service's report.
fn self_state(group: &GroupName, state: &ElectionState) -> SelfState {
    SelfState {
        group: group.clone(),
        online: state.online,
        role: state.role,
        term: state.term,
        score: state.score,
        mac: state.mac,
        in_grace: state.in_grace,
    }
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
    fn own_state_comes_from_the_election_state() {
        let me = self_state(&cfg().group, &election_state());
        assert_eq!(me.role, Role::Server);
        assert_eq!(me.term, Term::from_revision(3));
        assert_eq!(me.score, Score::new(5));
        assert!(me.online);
    }

    #[test]
    fn no_status_is_published_before_the_election_service_reports() {
        let mut view = View::new(cfg(), true);
        assert_eq!(view.status_due(Duration::ZERO, true), None);
        view.take_election(&election_state(), Duration::ZERO);
        let status = view
            .status_due(Duration::ZERO, false)
            .expect("first status");
        assert_eq!(status.colour, StatusColour::Blue, "a live server: blue");
        assert_eq!(view.status_due(Duration::ZERO, false), None, "unchanged");
    }

    #[test]
    fn the_device_beats_under_its_election_services_instance() {
        let mut view = View::new(cfg(), true);
        assert_eq!(view.core.identity(), InstanceId::new(1));
        view.take_election(&election_state(), Duration::from_millis(5));
        assert_eq!(view.core.identity(), InstanceId::new(2), "adopted");
    }

    #[test]
    fn publish_interval_out_of_range_is_refused() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.publish_interval = Duration::ZERO;
        let err = c.validate().expect_err("zero interval");
        assert!(matches!(err, ServiceError::Interval(_)));
        assert_eq!(
            err.to_string(),
            "status publish interval 0ns is out of range 10ms–60s"
        );
    }
}
