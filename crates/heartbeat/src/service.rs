//! The NATS driver of the heartbeat service: plumbing between the bus and the
//! pure [`Detector`] (DESIGN.md §3, "Pure cores, thin drivers").
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
//!   `understudy.presence.<instance>` (B10);
//! - feeds the group's heartbeats and goodbyes to the [`Detector`], polls it at
//!   its deadline and publishes each verdict as a [`PeerNotice`] on
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
    ElectionFollower, Followed, decoded, publish, recv, stopped, ticker, unix_ms,
};
use understudy_protocol::messages::{
    DeviceStatus, ElectionState, Heartbeat, InstanceKind, Leave, PeerChangeKind, PeerNotice,
    Presence,
};
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, SCHEMA_VERSION, StatusColour, subjects,
};

use crate::core::detector::{
    DEFAULT_INTERVAL, Detector, DetectorConfig, MAX_INTERVAL, MIN_INTERVAL, PeerBeat, PeerChange,
};

/// How often presence is announced unless configured otherwise.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait for the election service's first state before warning
/// that this device cannot beat yet.
pub const ELECTION_STATE_WAIT: Duration = Duration::from_secs(2);

/// After this long without an election state the device stops beating: its
/// election service is gone, and peers must be able to tell.
pub const ELECTION_STATE_STALE: Duration = Duration::from_secs(1);

/// The longest the goodbye may take to reach the server on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// How often to beat; [`DEFAULT_INTERVAL`] (100 ms) by default. Must lie in
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
    pub interval: Duration,
    /// A peer is lost after this many of its own intervals without a beat
    /// ([`DetectorConfig::DEFAULT_MISSES`], 3, by default).
    pub misses: u32,
    /// How often to announce presence; [`DEFAULT_PRESENCE_INTERVAL`] (1 s) by
    /// default. Must lie in [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
    pub presence_interval: Duration,
    /// The device's election service instance when it runs in this process:
    /// only its state is announced. `None` (the services run apart): the
    /// first election service to report is followed, and another only once
    /// that one falls silent (`understudy_bus::follow`).
    pub election_instance: Option<InstanceId>,
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
            misses: DetectorConfig::DEFAULT_MISSES,
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
            election_instance: None,
        }
    }

    /// Refuses intervals peers would clamp (and so misjudge) or that a timer
    /// cannot run.
    fn validate(&self) -> Result<(), ServiceError> {
        for (what, value) in [
            ("heartbeat interval", self.interval),
            ("presence interval", self.presence_interval),
        ] {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
                return Err(ServiceError::IntervalOutOfRange {
                    what,
                    value,
                    min: MIN_INTERVAL,
                    max: MAX_INTERVAL,
                });
            }
        }
        Ok(())
    }
}

/// Why the heartbeat service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A subscription could not be made at start (the client is closed or the
    /// subject was refused).
    #[error("cannot subscribe to the heartbeat service's subjects: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// An interval in [`HeartbeatConfig`] is out of range.
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
    let start = Instant::now();
    let (group, device) = (&cfg.group, &cfg.device);
    let mut election_sub = Some(
        client
            .subscribe(subjects::local_election(group, device))
            .await?,
    );
    let mut status_sub = Some(
        client
            .subscribe(subjects::local_status(group, device))
            .await?,
    );
    let mut beats_sub = Some(client.subscribe(subjects::heartbeats(group)).await?);
    let mut leaves_sub = Some(client.subscribe(subjects::leaves(group)).await?);
    info!(%group, %device, instance = %cfg.instance, "heartbeat service started");

    let mut detector = Detector::new(DetectorConfig { misses: cfg.misses }, cfg.device.clone());
    let mut beat_tick = ticker(cfg.interval);
    let mut presence_tick = ticker(cfg.presence_interval);
    let no_state_yet = tokio::time::sleep(ELECTION_STATE_WAIT);
    tokio::pin!(no_state_yet);
    let mut warned = false;
    let mut me = Announcer::new(cfg.clone());

    loop {
        let wake = detector.next_deadline().and_then(|d| start.checked_add(d));
        // Order matters (biased): stopping first; then our own beat, so a
        // flood of messages cannot silence this device; the detector's
        // deadline last, so beats already received count before it is polled.
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            _ = beat_tick.tick() => publish_beat(&client, &mut me).await,
            _ = presence_tick.tick() => {
                if let Some(presence) = me.presence(unix_ms(SystemTime::now())) {
                    let subject = subjects::presence(cfg.instance);
                    publish(&client, subject, &presence).await;
                }
            }
            () = &mut no_state_yet, if !warned && !me.knows_election() => {
                warned = true;
                warn!(
                    subject = %subjects::local_election(group, device),
                    "no election state within {ELECTION_STATE_WAIT:?}: not beating until the election service reports"
                );
            }
            msg = recv(&mut election_sub, "election state") => {
                let Some(state) = decoded::<ElectionState>(&msg) else { continue };
                let first = !me.knows_election();
                if me.take_election(state) {
                    if first && warned {
                        info!(%device, "election state arrived: beating");
                    }
                    beat_tick.reset();
                    publish_beat(&client, &mut me).await;
                }
            }
            msg = recv(&mut status_sub, "device status") => {
                if let Some(status) = decoded::<DeviceStatus>(&msg) {
                    me.take_status(status);
                }
            }
            msg = recv(&mut leaves_sub, "leaves") => {
                let Some(leave) = decoded::<Leave>(&msg) else { continue };
                if let Some(change) = detector.leave(&leave.device, leave.instance, start.elapsed()) {
                    publish_notice(&client, &cfg, &change).await;
                }
            }
            msg = recv(&mut beats_sub, "heartbeats") => {
                let Some(beat) = decoded::<Heartbeat>(&msg) else { continue };
                if let Some(change) = detector.observe(&PeerBeat::from(&beat), start.elapsed()) {
                    publish_notice(&client, &cfg, &change).await;
                }
            }
            () = tokio::time::sleep_until(wake.unwrap_or(start)), if wake.is_some() => {
                for change in detector.poll(start.elapsed()) {
                    publish_notice(&client, &cfg, &change).await;
                }
            }
        }
    }

    let leave = me.leave("shutdown");
    publish(&client, subjects::leave(group, device), &leave).await;
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "flush after goodbye failed"),
        Err(_) => debug!("flush after goodbye timed out"),
    }
    info!(%group, %device, "heartbeat service stopped");
    Ok(())
}

/// What this device says about itself: the latest election state and status,
/// turned into heartbeats, presence and the goodbye.
#[derive(Debug)]
struct Announcer {
    cfg: HeartbeatConfig,
    /// Which election service's state is this device's (B2: a second
    /// process with this device id must not be merged into this one).
    follower: ElectionFollower,
    election: Option<ElectionState>,
    /// When the latest election state arrived.
    election_at: Option<std::time::Instant>,
    status: Option<DeviceStatus>,
    /// The `seq` of the last heartbeat built.
    seq: u64,
}

impl Announcer {
    fn new(cfg: HeartbeatConfig) -> Self {
        Self {
            follower: ElectionFollower::new(cfg.election_instance),
            cfg,
            election: None,
            election_at: None,
            status: None,
            seq: 0,
        }
    }

    fn knows_election(&self) -> bool {
        self.election.is_some()
    }

    /// Keeps `state` if it is this device's. Returns whether peers must hear
    /// of it at once: it is the first, or it changes what ranks or fences
    /// this device (role, term, online, score, grace).
    fn take_election(&mut self, state: ElectionState) -> bool {
        if state.device != self.cfg.device || state.group != self.cfg.group {
            debug!(device = %state.device, group = %state.group, "election state of another device ignored");
            return false;
        }
        match self
            .follower
            .follow(state.instance, std::time::Instant::now())
        {
            Followed::Same => {}
            Followed::Switched { from: None } => {}
            Followed::Switched { from: Some(from) } => {
                info!(%from, to = %state.instance, "following a new election service (the old one fell silent)");
            }
            Followed::Other { followed } => {
                debug!(instance = %state.instance, %followed, "election state of another process with this device id ignored");
                return false;
            }
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
        self.election_at = Some(std::time::Instant::now());
        urgent
    }

    /// Whether the election service has gone quiet (it reports four times a
    /// second).
    /// A device whose election service is dead must not keep announcing
    /// itself — least of all as server — so peers can detect it as lost.
    fn election_is_stale(&self) -> bool {
        self.election_at
            .is_some_and(|at| at.elapsed() > ELECTION_STATE_STALE)
    }

    /// Keeps `status` if it is this device's.
    fn take_status(&mut self, status: DeviceStatus) {
        if status.device != self.cfg.device || status.group != self.cfg.group {
            debug!(device = %status.device, group = %status.group, "status of another device ignored");
            return;
        }
        if let Some(from) = status.instance
            && self.follower.followed() != Some(from)
        {
            debug!(instance = %from, "status from another process with this device id ignored");
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
            interval_ms: millis_u32(self.cfg.interval),
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

/// The detector's verdict as the bus message for this device's services.
fn peer_notice(
    group: &GroupName,
    observer: &DeviceId,
    change: &PeerChange,
    sent_at_ms: u64,
) -> PeerNotice {
    let (kind, device, instance) = match change {
        PeerChange::Joined { device, instance } => (PeerChangeKind::Joined, device, *instance),
        PeerChange::Restarted { device, new, .. } => (PeerChangeKind::Restarted, device, *new),
        PeerChange::Lost { device, instance } => (PeerChangeKind::Lost, device, *instance),
        PeerChange::Left { device, instance } => (PeerChangeKind::Left, device, *instance),
    };
    PeerNotice {
        schema: SCHEMA_VERSION,
        group: group.clone(),
        observer: observer.clone(),
        change: kind,
        device: device.clone(),
        instance,
        sent_at_ms: Some(sent_at_ms),
    }
}

async fn publish_beat(client: &Client, me: &mut Announcer) {
    if let Some(beat) = me.heartbeat(unix_ms(SystemTime::now())) {
        let subject = subjects::heartbeat(&beat.group, &beat.device);
        publish(client, subject, &beat).await;
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
        assert_eq!(first.interval_ms, 100);
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
    fn peer_changes_become_notices_naming_the_live_instance() {
        let c = cfg();
        let peer: DeviceId = "p".parse().expect("valid device");
        let restarted = PeerChange::Restarted {
            device: peer.clone(),
            old: InstanceId::new(1),
            new: InstanceId::new(2),
        };
        let notice = peer_notice(&c.group, &c.device, &restarted, 1);
        assert_eq!(notice.change, PeerChangeKind::Restarted);
        assert_eq!(notice.instance, InstanceId::new(2));
        assert_eq!(
            (notice.observer, notice.device),
            (c.device.clone(), peer.clone())
        );
        let lost = PeerChange::Lost {
            device: peer,
            instance: InstanceId::new(2),
        };
        assert_eq!(
            peer_notice(&c.group, &c.device, &lost, 1).change,
            PeerChangeKind::Lost
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
}
