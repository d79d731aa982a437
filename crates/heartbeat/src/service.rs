//! The NATS driver of the heartbeat service: plumbing between the bus and the
//! pure [`Detector`] and [`peer_notice`].
//!
//! It makes no decision of its own. It
//!
//! - listens to this device's election service
//!   (`understudy.<group>.local.<device>.election`) and discovery service
//!   (`…local.<device>.status`) and keeps the latest of each;
//! - once the election state is known, beats every `interval` on
//!   `understudy.<group>.heartbeat.<device>`, and at once when the role, term,
//!   online flag, score or grace changes, so a new server is announced without
//!   waiting for the tick (L1);
//! - announces the device's presence every `presence_interval` on
//!   `understudy.presence.<instance>`, and at once with every beat sent at
//!   once (B10);
//! - feeds the group's heartbeats and goodbyes to the [`Detector`], polls it at
//!   its deadline and publishes each verdict as a
//!   [`PeerNotice`](understudy_protocol::messages::PeerNotice) on
//!   `…local.<device>.peers` (B5);
//! - says goodbye on `understudy.<group>.leave.<device>` when asked to stop.
//!
//! The bus may be down at any moment: a publish that fails or cannot be
//! queued in time is logged at debug level and dropped, and the loop goes on.
//! Only failing to subscribe at start is an error.

use std::time::{Duration, SystemTime};

use async_nats::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use understudy_bus::{
    Beats, Inbox, LocalElection, SubscribeError, connected, flush, publish, stopped, ticker,
    unix_ms,
};
use understudy_protocol::messages::{
    DeviceStatus, ElectionState, Heartbeat, InstanceKind, Leave, Presence,
};
use understudy_protocol::timing::{IntervalError, check_interval};
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, Problem, Role, SCHEMA_VERSION, StatusColour, subjects,
};

use understudy_telemetry::HeartbeatMetrics;

use crate::core::detector::{DEFAULT_INTERVAL, Detector, DetectorConfig, PeerBeat, PeerChange};
use crate::core::notice::peer_notice;

pub use crate::core::detector::DEFAULT_CLIENT_INTERVAL;

/// How often presence is announced unless configured otherwise (and at once
/// with every beat sent at once: a change of role, term, score, online
/// state or grace). Every device hears every
/// presence on the bus, whatever its group, so this sets a large network's
/// load as the client cadence does (docs/BENCHMARKS.md, "Scale"); devices of
/// other groups count a device from it (B10), and one that vanishes without
/// a goodbye leaves their counts after three of these.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(5);

/// How long to wait for the election service's first state before warning
/// that this device cannot beat yet.
pub const ELECTION_STATE_WAIT: Duration = Duration::from_secs(2);

/// What the heartbeat service of one device needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// The device's project group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// This process, as heartbeats, presence and the goodbye name it.
    pub instance: InstanceId,
    /// The device's MAC, sent in every heartbeat (the election tie-breaker, B4).
    pub mac: Mac,
    /// How often to beat while this device is the server;
    /// [`DEFAULT_INTERVAL`] (100 ms) by default: every device detects the
    /// server's loss within `misses` of these (L1). Must lie in
    /// [`MIN_INTERVAL`](crate::MIN_INTERVAL)`..=`[`MAX_INTERVAL`](crate::MAX_INTERVAL).
    pub interval: Duration,
    /// How often to beat while this device is not the server (a client, a
    /// candidate in grace, offline); [`DEFAULT_CLIENT_INTERVAL`] (1 s) by
    /// default. Every beat goes to every device of the group, so a group of
    /// N costs about N × N / `client_interval` deliveries a second; peers
    /// judge each beat by the interval it advertises. Changes that rank or
    /// fence this device are announced at once whatever the cadence. Must
    /// lie in [`MIN_INTERVAL`](crate::MIN_INTERVAL)`..=`[`MAX_INTERVAL`](crate::MAX_INTERVAL);
    /// a value below `interval` counts as `interval`.
    pub client_interval: Duration,
    /// A peer is lost after this many of its own intervals without a beat
    /// ([`DetectorConfig::DEFAULT_MISSES`], 3, by default).
    pub misses: u32,
    /// How often to announce presence; [`DEFAULT_PRESENCE_INTERVAL`] (5 s) by
    /// default. Must lie in
    /// [`MIN_INTERVAL`](crate::MIN_INTERVAL)`..=`[`MAX_INTERVAL`](crate::MAX_INTERVAL).
    pub presence_interval: Duration,
    /// The device's election service instance when it runs in this process:
    /// only its state is announced. `None` (the services run apart): the
    /// first election service to report is followed, and another only once
    /// that one falls silent (`understudy_bus::follow`).
    pub election_instance: Option<InstanceId>,
    /// The group's heartbeats as the process's services share them (one
    /// subscription, decoded once: `understudy_bus::beats`). `None`: this
    /// service subscribes on its own.
    pub shared_beats: Option<understudy_bus::SharedBeats>,
}

impl HeartbeatConfig {
    /// The configuration of `device` with every default.
    pub fn new(group: GroupName, device: DeviceId, instance: InstanceId, mac: Mac) -> Self {
        Self {
            group,
            device,
            instance,
            mac,
            interval: DEFAULT_INTERVAL,
            client_interval: DEFAULT_CLIENT_INTERVAL,
            misses: DetectorConfig::DEFAULT_MISSES,
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
            election_instance: None,
            shared_beats: None,
        }
    }

    /// Refuses intervals peers would clamp (and so misjudge) or that a timer
    /// cannot run.
    fn validate(&self) -> Result<(), IntervalError> {
        check_interval("heartbeat interval", self.interval)?;
        check_interval("client heartbeat interval", self.client_interval)?;
        check_interval("presence interval", self.presence_interval)?;
        Ok(())
    }
}

/// Why the service could not start (the shared [`understudy_bus::StartError`]: a
/// subscription refused, or an interval in [`HeartbeatConfig`] out of range).
pub use understudy_bus::StartError as ServiceError;

/// Runs the heartbeat service of `cfg.device` on `client` until `shutdown`
/// turns true (or its sender is dropped), then says goodbye and returns.
///
/// Fails only at start: on an interval out of range, or if a subscription is
/// refused. Bus failures later on are logged and ridden out.
pub async fn run(
    client: Client,
    cfg: HeartbeatConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceError> {
    cfg.validate()?;
    let subs = Subscriptions::open(&client, &cfg).await?;
    let (group, device) = (cfg.group.clone(), cfg.device.clone());
    info!(%group, %device, instance = %cfg.instance, "heartbeat service started");
    let mut service = Service::new(client, cfg);
    service.serve(subs, &mut shutdown).await;
    service.say_goodbye().await;
    info!(%group, %device, "heartbeat service stopped");
    Ok(())
}

/// The subjects the service listens to.
struct Subscriptions {
    /// This device's election state (judged by the [`Announcer`]).
    election: Inbox<ElectionState>,
    /// This device's status (discovery).
    status: Inbox<DeviceStatus>,
    /// The group's heartbeats.
    beats: Beats,
    /// The group's goodbyes.
    leaves: Inbox<Leave>,
}

impl Subscriptions {
    async fn open(client: &Client, cfg: &HeartbeatConfig) -> Result<Self, SubscribeError> {
        let (group, device) = (&cfg.group, &cfg.device);
        Ok(Self {
            election: Inbox::subscribe(client, subjects::local_election(group, device)).await?,
            status: Inbox::subscribe(client, subjects::local_status(group, device)).await?,
            beats: Beats::subscribe(
                client,
                subjects::heartbeats(group),
                cfg.shared_beats.as_ref(),
            )
            .await?,
            leaves: Inbox::subscribe(client, subjects::leaves(group)).await?,
        })
    }
}

/// The running service: the detector, what this device announces, and the
/// client both go through.
struct Service {
    client: Client,
    cfg: HeartbeatConfig,
    /// The origin of the detector's clock.
    start: Instant,
    detector: Detector,
    me: Announcer,
    /// Whether the missing election state was already warned about.
    warned: bool,
    /// This device's heartbeat figures for `/metrics`.
    metrics: HeartbeatMetrics,
}

impl Service {
    fn new(client: Client, cfg: HeartbeatConfig) -> Self {
        Self {
            detector: Detector::new(DetectorConfig { misses: cfg.misses }, cfg.device.clone()),
            me: Announcer::new(cfg.clone()),
            start: Instant::now(),
            warned: false,
            metrics: understudy_telemetry::metrics()
                .heartbeat(cfg.group.as_str(), cfg.device.as_str()),
            client,
            cfg,
        }
    }

    /// The loop: one message or timer at a time until `shutdown`.
    async fn serve(&mut self, mut subs: Subscriptions, shutdown: &mut watch::Receiver<bool>) {
        let mut cadence = self.me.cadence();
        let mut beat_tick = ticker(cadence);
        let mut presence_tick = ticker(self.cfg.presence_interval);
        let no_state_yet = tokio::time::sleep(ELECTION_STATE_WAIT);
        tokio::pin!(no_state_yet);
        loop {
            let wake = self
                .detector
                .next_deadline()
                .and_then(|d| self.start.checked_add(d));
            // Order matters (biased): stopping first; then our own beat, so a
            // flood of messages cannot silence this device; the detector's
            // deadline last, so beats already received count before it is polled.
            tokio::select! {
                biased;
                () = stopped(shutdown) => break,
                _ = beat_tick.tick() => self.beat().await,
                _ = presence_tick.tick() => self.announce_presence().await,
                () = &mut no_state_yet, if !self.warned && !self.me.knows_election() => {
                    self.warn_no_state();
                }
                state = subs.election.next() => {
                    if self.on_election(state) {
                        // Beat at once; the next one after the cadence of the
                        // new state (faster as server, slower otherwise).
                        self.beat().await;
                        // Presence too: other groups count roles and online
                        // devices from it.
                        self.announce_presence().await;
                        presence_tick.reset();
                        if self.me.cadence() != cadence {
                            cadence = self.me.cadence();
                            beat_tick = ticker(cadence);
                        }
                        beat_tick.reset();
                    }
                }
                status = subs.status.next() => self.me.take_status(status),
                leave = subs.leaves.next() => self.on_leave(&leave).await,
                beat = subs.beats.next() => self.on_beat(&beat).await,
                () = tokio::time::sleep_until(wake.unwrap_or(self.start)), if wake.is_some() => {
                    self.on_deadline().await;
                }
            }
        }
    }

    async fn beat(&mut self) {
        let beat = self.me.heartbeat(unix_ms(SystemTime::now()));
        if let Some(beat) = &beat {
            let subject = subjects::heartbeat(&beat.group, &beat.device);
            publish(&self.client, subject, beat).await;
            self.metrics.sent.inc();
        }
        if let Some((colour, problems)) = shown_status(beat.as_ref(), connected(&self.client)) {
            self.metrics.colour.set(colour_value(colour));
            self.metrics.problems(problems.iter().map(|p| p.code()));
        }
    }

    async fn announce_presence(&self) {
        if let Some(presence) = self.me.presence(unix_ms(SystemTime::now())) {
            let subject = subjects::presence(self.cfg.instance);
            publish(&self.client, subject, &presence).await;
        }
    }

    fn warn_no_state(&mut self) {
        self.warned = true;
        warn!(
            subject = %subjects::local_election(&self.cfg.group, &self.cfg.device),
            "no election state within {ELECTION_STATE_WAIT:?}: not beating until the election service reports"
        );
    }

    /// Takes this device's election state; returns whether to beat at once.
    fn on_election(&mut self, state: ElectionState) -> bool {
        let first = !self.me.knows_election();
        let urgent = self.me.take_election(state);
        if urgent && first && self.warned {
            info!(device = %self.cfg.device, "election state arrived: beating");
        }
        urgent
    }

    async fn on_leave(&mut self, leave: &Leave) {
        let now = self.start.elapsed();
        if let Some(change) = self.detector.leave(&leave.device, leave.instance, now) {
            publish_notice(&self.client, &self.cfg, &change).await;
            self.count_peers();
        }
    }

    async fn on_beat(&mut self, beat: &Heartbeat) {
        let now = self.start.elapsed();
        if beat.device != self.cfg.device {
            self.metrics.received.inc();
        }
        if let Some(change) = self.detector.observe(&PeerBeat::from(beat), now) {
            publish_notice(&self.client, &self.cfg, &change).await;
            self.count_peers();
        }
    }

    async fn on_deadline(&mut self) {
        for change in self.detector.poll(self.start.elapsed()) {
            publish_notice(&self.client, &self.cfg, &change).await;
        }
        self.count_peers();
    }

    fn count_peers(&self) {
        let c = self.detector.counts();
        self.metrics.peers(c.live, c.lost, c.gone);
    }

    async fn say_goodbye(&self) {
        let leave = self.me.leave("shutdown");
        let subject = subjects::leave(&self.cfg.group, &self.cfg.device);
        publish(&self.client, subject, &leave).await;
        flush(&self.client).await;
    }
}

/// What this device says about itself: the latest election state and status,
/// turned into heartbeats, presence and the goodbye.
#[derive(Debug)]
struct Announcer {
    cfg: HeartbeatConfig,
    /// Which election states are this device's (B2: a second process with
    /// this device id must not be merged into this one), and whether its
    /// election service is still live.
    local: LocalElection,
    election: Option<ElectionState>,
    status: Option<DeviceStatus>,
    /// The `seq` of the last heartbeat built.
    seq: u64,
}

impl Announcer {
    fn new(cfg: HeartbeatConfig) -> Self {
        Self {
            local: LocalElection::new(cfg.group.clone(), cfg.device.clone(), cfg.election_instance),
            cfg,
            election: None,
            status: None,
            seq: 0,
        }
    }

    fn knows_election(&self) -> bool {
        self.election.is_some()
    }

    /// How often this device beats now: every `interval` while it is the
    /// server (its loss must be detected fast, L1), every `client_interval`
    /// (never faster than `interval`) otherwise.
    fn cadence(&self) -> Duration {
        let serving = self
            .election
            .as_ref()
            .is_some_and(|s| s.role == Role::Server && s.online);
        if serving {
            self.cfg.interval
        } else {
            self.cfg.client_interval.max(self.cfg.interval)
        }
    }

    /// Keeps `state` if it is this device's. Returns whether peers must hear
    /// of it at once: it is the first, or it changes what ranks or fences
    /// this device (role, term, online, score, grace).
    fn take_election(&mut self, state: ElectionState) -> bool {
        if !self.local.accept(&state, std::time::Instant::now()) {
            return false;
        }
        let urgent = self.election.as_ref().is_none_or(|old| {
            (old.role, old.term, old.online, old.score, old.in_grace)
                != (
                    state.role,
                    state.term,
                    state.online,
                    state.score,
                    state.in_grace,
                )
        });
        self.election = Some(state);
        urgent
    }

    /// Whether the election service has gone quiet: silent longer than the
    /// shared liveness window (`protocol::timing::LIVENESS_WINDOW`; it reports
    /// four times a second). A device whose election service is dead must
    /// not keep announcing itself — least of all as server — so peers can
    /// detect it as lost.
    fn election_is_stale(&self) -> bool {
        self.local.heard_at().is_some() && !self.local.is_live(std::time::Instant::now())
    }

    /// Keeps `status` if it is this device's.
    fn take_status(&mut self, status: DeviceStatus) {
        if status.device != self.cfg.device || status.group != self.cfg.group {
            debug!(device = %status.device, group = %status.group, "status of another device ignored");
            return;
        }
        if !self.local.is_followed(status.instance) {
            debug!(instance = ?status.instance, "status from another process with this device id ignored");
            return;
        }
        self.status = Some(status);
    }

    /// The next heartbeat, or `None` until the election state is known.
    fn heartbeat(&mut self, sent_at_ms: u64) -> Option<Heartbeat> {
        if self.election_is_stale() {
            return None;
        }
        let state = self.election.as_ref()?;
        self.seq += 1;
        let (colour, problems) = match &self.status {
            Some(s) => (s.colour, s.problems.clone()),
            None => (StatusColour::Grey, Vec::new()),
        };
        Some(Heartbeat {
            schema: SCHEMA_VERSION,
            group: self.cfg.group.clone(),
            device: self.cfg.device.clone(),
            // The device's identity is its election service's instance (the
            // one named in the lease), also when the services run apart.
            instance: state.instance,
            mac: self.cfg.mac,
            score: state.score,
            online: state.online,
            role: state.role,
            term: state.term,
            in_grace: state.in_grace,
            colour,
            problems,
            seq: self.seq,
            interval_ms: millis_u32(self.cadence()),
            sent_at_ms,
        })
    }

    /// This device's presence, or `None` until the election state is known.
    fn presence(&self, sent_at_ms: u64) -> Option<Presence> {
        let state = self.election.as_ref()?;
        Some(Presence {
            schema: SCHEMA_VERSION,
            instance: self.cfg.instance,
            kind: InstanceKind::Device,
            device: Some(self.cfg.device.clone()),
            group: Some(self.cfg.group.clone()),
            online: state.online,
            role: Some(state.role),
            interval_ms: millis_u32(self.cfg.presence_interval),
            sent_at_ms,
        })
    }

    fn leave(&self, reason: &str) -> Leave {
        Leave {
            schema: SCHEMA_VERSION,
            group: self.cfg.group.clone(),
            device: self.cfg.device.clone(),
            instance: self.cfg.instance,
            reason: reason.to_owned(),
        }
    }
}

/// The colour and problems this device's metrics show after a beat:
/// those of the beat (discovery's status). Discovery's status reaches this
/// service over the bus, so while this process has lost the bus the last
/// one it heard is stale: B2 makes the device red then ("Cannot reach the
/// message bus"), whatever else it last heard. `None`: nothing to show.
fn shown_status(
    beat: Option<&Heartbeat>,
    bus_connected: bool,
) -> Option<(StatusColour, Vec<Problem>)> {
    if !bus_connected {
        return Some((StatusColour::Red, vec![Problem::BusUnreachable]));
    }
    beat.map(|b| (b.colour, b.problems.clone()))
}

/// `understudy_status_colour`: 0 grey, 1 blue, 2 red.
fn colour_value(colour: StatusColour) -> i64 {
    match colour {
        StatusColour::Grey => 0,
        StatusColour::Blue => 1,
        StatusColour::Red => 2,
    }
}

async fn publish_notice(client: &Client, cfg: &HeartbeatConfig, change: &PeerChange) {
    debug!(?change, "peer change");
    let notice = peer_notice(&cfg.group, &cfg.device, change, unix_ms(SystemTime::now()));
    publish(
        client,
        subjects::local_peers(&cfg.group, &cfg.device),
        &notice,
    )
    .await;
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use understudy_protocol::{Problem, Role, Score, Term};

    fn cfg() -> HeartbeatConfig {
        HeartbeatConfig::new(
            "g".parse().expect("valid group"),
            "me".parse().expect("valid device"),
            InstanceId::new(7),
            Mac::from_octets([0, 0, 0, 0, 0, 7]),
        )
    }

    fn state() -> ElectionState {
        let c = cfg();
        ElectionState {
            schema: SCHEMA_VERSION,
            group: c.group,
            device: c.device,
            instance: InstanceId::new(8),
            mac: c.mac,
            score: Score::new(10),
            online: true,
            role: Role::Client,
            term: Term::ZERO,
            in_grace: true,
            server: None,
        }
    }

    #[test]
    fn no_beat_or_presence_before_the_election_state() {
        let mut me = Announcer::new(cfg());
        assert_eq!(me.heartbeat(1), None);
        assert_eq!(me.presence(1), None);
        assert!(
            me.take_election(state()),
            "the first state is announced at once"
        );
        assert!(me.heartbeat(1).is_some());
        assert!(me.presence(1).is_some());
    }

    #[test]
    fn beats_count_up_and_carry_the_latest_state_and_status() {
        let mut me = Announcer::new(cfg());
        me.take_election(state());
        let first = me.heartbeat(1_000).expect("state known");
        assert_eq!(
            (first.seq, first.colour, first.problems.clone()),
            (1, StatusColour::Grey, vec![])
        );
        assert_eq!(
            first.interval_ms, 1_000,
            "a client beats at the client cadence"
        );
        assert_eq!(first.mac, cfg().mac);
        me.take_status(DeviceStatus {
            schema: SCHEMA_VERSION,
            group: cfg().group,
            device: cfg().device,
            colour: StatusColour::Red,
            problems: vec![Problem::NoServer],
            instance: None,
        });
        let second = me.heartbeat(1_100).expect("state known");
        assert_eq!(second.seq, 2);
        assert_eq!(second.colour, StatusColour::Red);
        assert_eq!(second.problems, vec![Problem::NoServer]);
        assert_eq!(second.sent_at_ms, 1_100);
    }

    #[test]
    fn only_ranking_and_fencing_changes_are_announced_at_once() {
        let mut me = Announcer::new(cfg());
        me.take_election(state());
        let mut same = state();
        same.server = Some("other".parse().expect("valid device"));
        assert!(!me.take_election(same), "who we think serves is not urgent");
        let mut serving = state();
        serving.role = Role::Server;
        serving.term = Term::from_revision(3);
        assert!(me.take_election(serving.clone()));
        assert!(!me.take_election(serving.clone()));
        serving.in_grace = false;
        assert!(me.take_election(serving));
        assert_eq!(me.heartbeat(0).map(|b| b.role), Some(Role::Server));
    }

    #[test]
    fn the_server_beats_fast_and_every_other_device_slowly() {
        let mut slow = cfg();
        slow.client_interval = Duration::from_secs(1);
        let mut me = Announcer::new(slow);
        me.take_election(state());
        assert_eq!(me.cadence(), Duration::from_secs(1));
        let mut serving = state();
        serving.role = Role::Server;
        serving.term = Term::from_revision(3);
        assert!(
            me.take_election(serving.clone()),
            "becoming server is announced at once"
        );
        assert_eq!(me.cadence(), DEFAULT_INTERVAL);
        assert_eq!(me.heartbeat(0).map(|b| b.interval_ms), Some(100));
        serving.online = false;
        assert!(me.take_election(serving));
        assert_eq!(me.cadence(), Duration::from_secs(1), "offline: not serving");
        assert_eq!(me.heartbeat(0).map(|b| b.interval_ms), Some(1_000));

        let mut fast = cfg();
        fast.client_interval = Duration::from_millis(20);
        let mut me = Announcer::new(fast);
        me.take_election(state());
        assert_eq!(
            me.cadence(),
            DEFAULT_INTERVAL,
            "never faster than the server's"
        );
    }

    #[test]
    fn state_of_another_device_is_ignored() {
        let mut me = Announcer::new(cfg());
        let mut other = state();
        other.device = "other".parse().expect("valid device");
        assert!(!me.take_election(other));
        assert!(!me.knows_election());
    }

    #[test]
    fn a_second_process_with_this_device_id_is_not_merged_in() {
        // The election service runs in this process as instance 8.
        let mut c = cfg();
        c.election_instance = Some(InstanceId::new(8));
        let mut me = Announcer::new(c);
        me.take_election(state());
        let mut twin = state();
        twin.instance = InstanceId::new(9);
        twin.score = Score::new(200);
        twin.role = Role::Server;
        assert!(!me.take_election(twin));
        let beat = me.heartbeat(1).expect("state known");
        assert_eq!(
            (beat.instance, beat.score),
            (InstanceId::new(8), Score::new(10))
        );
        // Nor is the twin's status taken for ours.
        let status = |instance, colour| DeviceStatus {
            schema: SCHEMA_VERSION,
            group: cfg().group,
            device: cfg().device,
            colour,
            problems: vec![],
            instance: Some(InstanceId::new(instance)),
        };
        me.take_status(status(9, StatusColour::Blue));
        assert_eq!(
            me.heartbeat(2).expect("state known").colour,
            StatusColour::Grey
        );
        me.take_status(status(8, StatusColour::Red));
        assert_eq!(
            me.heartbeat(3).expect("state known").colour,
            StatusColour::Red
        );
    }

    #[test]
    fn intervals_out_of_range_are_refused() {
        let mut c = cfg();
        assert!(c.validate().is_ok());
        c.interval = Duration::ZERO;
        let err = c.validate().expect_err("zero interval");
        assert!(
            err.to_string()
                .starts_with("heartbeat interval 0ns is out of range")
        );
        let mut c = cfg();
        c.presence_interval = Duration::from_secs(3_600);
        assert!(c.validate().is_err());
    }

    #[test]
    fn unix_ms_of_the_epoch_and_before() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn without_the_bus_the_metrics_show_red_whatever_the_last_status_said() {
        let mut me = Announcer::new(cfg());
        me.take_election(state());
        me.take_status(DeviceStatus {
            schema: SCHEMA_VERSION,
            group: cfg().group,
            device: cfg().device,
            colour: StatusColour::Blue,
            problems: vec![],
            instance: None,
        });
        let beat = me.heartbeat(1);
        assert_eq!(
            shown_status(beat.as_ref(), true),
            Some((StatusColour::Blue, vec![]))
        );
        assert_eq!(
            shown_status(beat.as_ref(), false),
            Some((StatusColour::Red, vec![Problem::BusUnreachable]))
        );
        assert_eq!(
            shown_status(None, false),
            Some((StatusColour::Red, vec![Problem::BusUnreachable]))
        );
        assert_eq!(shown_status(None, true), None);
    }
}
