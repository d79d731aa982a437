//! The failure detector: which peers are live, given the heartbeats heard and
//! the current time.
//!
//! Fast, fenced takeover rests failover on this verdict:
//! **three missed 100 ms heartbeats** mean a peer is gone, and its successor
//! takes over at once instead of waiting for the lease to expire (L1). B5 needs
//! the other verdicts too: a device that joins, restarts or leaves upsets the
//! status quo and triggers an election.
//!
//! The rules, in one place:
//!
//! - A peer's **deadline** is its last beat plus `misses` × *its own*
//!   advertised interval. [`Detector::poll`] declares every live peer whose
//!   deadline has come [`PeerChange::Lost`]. The interval is clamped to
//!   [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`], so a hostile value can neither
//!   disable detection nor make a peer lost before it could beat.
//! - A beat whose `seq` is not above the last one of the same instance is a
//!   duplicate or arrived out of order: it is ignored and does not extend the
//!   deadline, so stale messages cannot keep a dead peer alive.
//! - A beat from an instance never seen for that device is a
//!   [`PeerChange::Restarted`] (a [`PeerChange::Joined`] if the device was not
//!   live); a beat from an instance that was already replaced is ignored, so a
//!   device never flips back to its old process.
//! - A lost or departed peer that beats again (with a fresh `seq`) is
//!   [`PeerChange::Joined`] again.
//! - A beat that arrives after the deadline but before `poll` counts: the peer
//!   was heard, so it stays live.
//! - A goodbye ([`Detector::leave`]) from the live instance ends liveness at once.
//! - Beats from this device itself (the bus echoes them) are ignored.
//!
//! Everything is ordered by device id (`BTreeMap`), so two detectors fed the
//! same inputs report the same changes in the same order.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use understudy_protocol::messages::Heartbeat;
use understudy_protocol::timing::clamp_interval;
use understudy_protocol::{DeviceId, InstanceId};

/// How often a device beats unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// How often a device that is not the server beats unless configured
/// otherwise (the server beats every `HeartbeatConfig::interval`): 1 s.
/// Every beat reaches every device of the group, so this cadence sets a
/// large group's load (docs/BENCHMARKS.md, "Scale"); the server's loss is
/// still detected on its own, faster cadence. Made the default on
/// 2026-12-02, after a 200,000-seed soak of the simulator with it was green
/// (`CLIENT_HEARTBEAT` in crates/sim).
pub const DEFAULT_CLIENT_INTERVAL: Duration = Duration::from_secs(1);

pub use understudy_protocol::timing::{MAX_INTERVAL, MIN_INTERVAL};

/// How many replaced instances of one device are remembered, so that their
/// late beats are ignored. Bounded so that a sender inventing instance ids
/// cannot grow the detector without limit.
const RETIRED_KEPT: usize = 16;

/// Tuning of the [`Detector`].
///
/// The default — three misses of a peer's own interval (100 ms unless it
/// advertises another, see [`DEFAULT_INTERVAL`]) — is the design's "three missed
/// 100 ms heartbeats".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// A peer is lost after this many of *its own* advertised intervals pass
    /// without a beat. `0` counts as `1`.
    pub misses: u32,
}

impl DetectorConfig {
    /// The number of misses the design asks for.
    pub const DEFAULT_MISSES: u32 = 3;
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            misses: Self::DEFAULT_MISSES,
        }
    }
}

/// What the detector needs from one heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBeat {
    /// The sender.
    pub device: DeviceId,
    /// The sender's process instance.
    pub instance: InstanceId,
    /// Counts up by one per beat of this instance.
    pub seq: u64,
    /// How often the sender says it beats. [`Detector::observe`] clamps it to
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
    pub interval: Duration,
}

impl From<&Heartbeat> for PeerBeat {
    /// Takes what the detector needs; `interval_ms` is clamped to
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
    fn from(heartbeat: &Heartbeat) -> Self {
        Self {
            device: heartbeat.device.clone(),
            instance: heartbeat.instance,
            seq: heartbeat.seq,
            interval: clamp_interval(Duration::from_millis(u64::from(heartbeat.interval_ms))),
        }
    }
}

/// A verdict about a peer, for discovery and election to act on (B5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// The first beat of a device, or its first beat after it was lost or left.
    Joined {
        /// The device.
        device: DeviceId,
        /// The instance that beat.
        instance: InstanceId,
    },
    /// A beat from a new instance of a live device: its process restarted
    /// faster than the detector could notice.
    Restarted {
        /// The device.
        device: DeviceId,
        /// The instance that was live until now.
        old: InstanceId,
        /// The instance that beat.
        new: InstanceId,
    },
    /// No beat within `misses` × the device's interval.
    Lost {
        /// The device.
        device: DeviceId,
        /// The instance that fell silent.
        instance: InstanceId,
    },
    /// The live instance said goodbye.
    Left {
        /// The device.
        device: DeviceId,
        /// The instance that left.
        instance: InstanceId,
    },
}

impl PeerChange {
    /// The device the change is about.
    pub fn device(&self) -> &DeviceId {
        match self {
            Self::Joined { device, .. }
            | Self::Restarted { device, .. }
            | Self::Lost { device, .. }
            | Self::Left { device, .. } => device,
        }
    }
}

/// How many peers the detector holds in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Beating within their deadline.
    pub live: usize,
    /// Fell silent past their deadline.
    pub lost: usize,
    /// Said goodbye.
    pub gone: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Live,
    Lost,
    Left,
}

/// What the detector remembers of one device.
#[derive(Debug, Clone)]
struct Peer {
    /// The newest instance heard; live only if `liveness` says so.
    instance: InstanceId,
    /// The highest `seq` heard from `instance`.
    seq: u64,
    /// When a beat last counted (fresh `seq`).
    last_beat: Duration,
    /// The interval `instance` last advertised, clamped.
    interval: Duration,
    liveness: Liveness,
    /// Instances replaced by a newer one, oldest first; their beats are ignored.
    retired: VecDeque<InstanceId>,
}

impl Peer {
    fn new(beat: &PeerBeat, now: Duration) -> Self {
        Self {
            instance: beat.instance,
            seq: beat.seq,
            last_beat: now,
            interval: clamp_interval(beat.interval),
            liveness: Liveness::Live,
            retired: VecDeque::new(),
        }
    }

    fn deadline(&self, misses: u32) -> Duration {
        let window = self.interval.checked_mul(misses).unwrap_or(Duration::MAX);
        self.last_beat.saturating_add(window)
    }

    fn is_live(&self) -> bool {
        self.liveness == Liveness::Live
    }

    /// Records a beat that counts. Time never moves the deadline back, even if
    /// a caller's clock does.
    fn heard(&mut self, beat: &PeerBeat, now: Duration) {
        self.seq = beat.seq;
        self.last_beat = self.last_beat.max(now);
        self.interval = clamp_interval(beat.interval);
        self.liveness = Liveness::Live;
    }

    /// Another beat of the instance already known.
    fn beat_again(&mut self, beat: &PeerBeat, now: Duration) -> Option<PeerChange> {
        if beat.seq <= self.seq {
            return None;
        }
        let was_live = self.is_live();
        self.heard(beat, now);
        (!was_live).then(|| PeerChange::Joined {
            device: beat.device.clone(),
            instance: beat.instance,
        })
    }

    /// The first beat of an instance never seen for this device.
    fn replace_instance(&mut self, beat: &PeerBeat, now: Duration) -> PeerChange {
        let was_live = self.is_live();
        let old = std::mem::replace(&mut self.instance, beat.instance);
        if self.retired.len() >= RETIRED_KEPT {
            self.retired.pop_front();
        }
        self.retired.push_back(old);
        self.heard(beat, now);
        let device = beat.device.clone();
        if was_live {
            PeerChange::Restarted {
                device,
                old,
                new: beat.instance,
            }
        } else {
            PeerChange::Joined {
                device,
                instance: beat.instance,
            }
        }
    }
}

/// The failure detector of one device: feed it beats, goodbyes and the time;
/// it reports which peers joined, restarted, were lost or left.
///
/// The caller arms one timer at [`next_deadline`](Self::next_deadline) and
/// calls [`poll`](Self::poll) when it fires. Liveness as seen by
/// [`is_live`](Self::is_live) and [`live_peers`](Self::live_peers) changes only
/// on `observe`, `leave`, `poll` and `forget`: a peer past its deadline stays
/// live until the next `poll`.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    me: DeviceId,
    peers: BTreeMap<DeviceId, Peer>,
    /// When the caller should next have called us, as of the last call.
    expected_call: Option<Duration>,
}

impl Detector {
    /// A detector for device `me`; beats from `me` (the bus's echo of our own
    /// heartbeat) are ignored.
    pub fn new(config: DetectorConfig, me: DeviceId) -> Self {
        Self {
            config,
            me,
            peers: BTreeMap::new(),
            expected_call: None,
        }
    }

    /// Our own stall is not our peers' silence. If this call comes more than
    /// one interval after the deadline the caller was told to poll at, this
    /// process was stopped (SIGSTOP, a long GC-like pause, an overloaded
    /// host): beats may be waiting unread in the socket. Every live peer then
    /// gets one more interval from now before it can be declared lost, so a
    /// device that wakes up does not depose a healthy server on stale silence.
    fn catch_up(&mut self, now: Duration) {
        let Some(expected) = self.expected_call else {
            return;
        };
        let slack = self
            .peers
            .values()
            .filter(|p| p.is_live())
            .map(|p| p.interval)
            .min()
            .unwrap_or(MAX_INTERVAL);
        if now <= expected.saturating_add(slack) {
            return;
        }
        let misses = self.misses();
        for peer in self.peers.values_mut().filter(|p| p.is_live()) {
            let window = peer.interval.saturating_mul(misses - 1);
            peer.last_beat = peer.last_beat.max(now.saturating_sub(window));
        }
    }

    fn called(&mut self) {
        self.expected_call = self.next_deadline();
    }

    /// The tuning this detector runs with.
    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    fn misses(&self) -> u32 {
        self.config.misses.max(1)
    }

    /// Takes in one heartbeat heard at `now`.
    ///
    /// Returns [`PeerChange::Joined`] or [`PeerChange::Restarted`] when the beat
    /// changes what is known of the device, `None` when it only keeps it live
    /// or is ignored (own echo, stale `seq`, replaced instance).
    pub fn observe(&mut self, beat: &PeerBeat, now: Duration) -> Option<PeerChange> {
        self.catch_up(now);
        let change = self.observe_beat(beat, now);
        self.called();
        change
    }

    fn observe_beat(&mut self, beat: &PeerBeat, now: Duration) -> Option<PeerChange> {
        if beat.device == self.me {
            return None;
        }
        let Some(peer) = self.peers.get_mut(&beat.device) else {
            self.peers.insert(beat.device.clone(), Peer::new(beat, now));
            return Some(PeerChange::Joined {
                device: beat.device.clone(),
                instance: beat.instance,
            });
        };
        if beat.instance == peer.instance {
            peer.beat_again(beat, now)
        } else if peer.retired.contains(&beat.instance) {
            None
        } else {
            Some(peer.replace_instance(beat, now))
        }
    }

    /// Takes in a clean goodbye from `instance` of `device`.
    ///
    /// Returns [`PeerChange::Left`] if that instance is the live one, `None`
    /// otherwise (unknown device, not live, an old or unknown instance). A
    /// goodbye ends liveness at once, whatever the time; `now` is taken for
    /// symmetry with the other inputs.
    pub fn leave(
        &mut self,
        device: &DeviceId,
        instance: InstanceId,
        _now: Duration,
    ) -> Option<PeerChange> {
        let peer = self.peers.get_mut(device)?;
        if !peer.is_live() || peer.instance != instance {
            return None;
        }
        peer.liveness = Liveness::Left;
        self.called();
        Some(PeerChange::Left {
            device: device.clone(),
            instance,
        })
    }

    /// Declares lost every live peer whose deadline is at or before `now`,
    /// reported in order of device id. Each loss is reported once.
    ///
    /// Call it at [`next_deadline`](Self::next_deadline): a call that comes
    /// more than one interval late is taken as this process having been
    /// stopped, and peers get one more interval instead of being declared
    /// lost on silence nobody listened to.
    pub fn poll(&mut self, now: Duration) -> Vec<PeerChange> {
        self.catch_up(now);
        let lost = self.expire(now);
        self.called();
        lost
    }

    fn expire(&mut self, now: Duration) -> Vec<PeerChange> {
        let misses = self.misses();
        let mut lost = Vec::new();
        for (device, peer) in &mut self.peers {
            if peer.is_live() && peer.deadline(misses) <= now {
                peer.liveness = Liveness::Lost;
                lost.push(PeerChange::Lost {
                    device: device.clone(),
                    instance: peer.instance,
                });
            }
        }
        lost
    }

    /// The earliest deadline of a live peer: when to call [`poll`](Self::poll)
    /// next. `None` when no peer is live.
    pub fn next_deadline(&self) -> Option<Duration> {
        let misses = self.misses();
        self.peers
            .values()
            .filter(|peer| peer.is_live())
            .map(|peer| peer.deadline(misses))
            .min()
    }

    /// Whether `device` is live (as of the last `poll`).
    pub fn is_live(&self, device: &DeviceId) -> bool {
        self.peers.get(device).is_some_and(Peer::is_live)
    }

    /// The live peers, sorted by device id.
    pub fn live_peers(&self) -> impl Iterator<Item = &DeviceId> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.is_live())
            .map(|(device, _)| device)
    }

    /// How many peers are live, lost (fell silent) and gone (said goodbye),
    /// as of the last call.
    pub fn counts(&self) -> PeerCounts {
        let mut c = PeerCounts::default();
        for peer in self.peers.values() {
            match peer.liveness {
                Liveness::Live => c.live += 1,
                Liveness::Lost => c.lost += 1,
                Liveness::Left => c.gone += 1,
            }
        }
        c
    }

    /// When a beat of `device` last counted, whether it is live, lost or left;
    /// `None` if it was never heard (or forgotten).
    pub fn last_seen(&self, device: &DeviceId) -> Option<Duration> {
        self.peers.get(device).map(|peer| peer.last_beat)
    }

    /// Drops all state of `device`, including which of its instances were
    /// replaced: its next beat, from any instance, is a [`PeerChange::Joined`].
    pub fn forget(&mut self, device: &DeviceId) {
        self.peers.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::{GroupName, Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term};

    fn dev(name: &str) -> DeviceId {
        name.parse().expect("test device ids are valid")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn beat(device: &str, instance: u64, seq: u64, interval_ms: u64) -> PeerBeat {
        PeerBeat {
            device: dev(device),
            instance: InstanceId::new(instance),
            seq,
            interval: ms(interval_ms),
        }
    }

    fn detector() -> Detector {
        Detector::new(DetectorConfig::default(), dev("me"))
    }

    fn joined(device: &str, instance: u64) -> Option<PeerChange> {
        Some(PeerChange::Joined {
            device: dev(device),
            instance: InstanceId::new(instance),
        })
    }

    fn lost(device: &str, instance: u64) -> PeerChange {
        PeerChange::Lost {
            device: dev(device),
            instance: InstanceId::new(instance),
        }
    }

    fn heartbeat(interval_ms: u32) -> Heartbeat {
        Heartbeat {
            schema: SCHEMA_VERSION,
            group: "main".parse::<GroupName>().expect("valid group"),
            device: dev("desk"),
            instance: InstanceId::new(7),
            mac: Mac::from_octets([2, 0, 0, 0, 0, 1]),
            score: Score::new(100),
            online: true,
            role: Role::Client,
            term: Term::from_revision(1),
            in_grace: false,
            colour: StatusColour::Blue,
            problems: Vec::new(),
            seq: 42,
            interval_ms,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn default_is_three_misses_of_a_hundred_milliseconds() {
        assert_eq!(DetectorConfig::default().misses, 3);
        assert_eq!(DEFAULT_INTERVAL, ms(100));
    }

    #[test]
    fn first_beat_is_a_join() {
        let mut d = detector();
        assert_eq!(d.observe(&beat("a", 1, 0, 100), ms(0)), joined("a", 1));
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.last_seen(&dev("a")), Some(ms(0)));
        assert_eq!(d.next_deadline(), Some(ms(300)));
    }

    #[test]
    fn silent_peer_is_lost_after_three_intervals() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(1000));
        assert_eq!(d.poll(ms(1299)), vec![]);
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.poll(ms(1300)), vec![lost("a", 1)]);
        assert!(!d.is_live(&dev("a")));
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn regular_beats_keep_a_peer_live() {
        let mut d = detector();
        for seq in 0..20 {
            let now = ms(seq * 100);
            d.observe(&beat("a", 1, seq, 100), now);
            assert_eq!(d.poll(now), vec![]);
        }
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.next_deadline(), Some(ms(1900 + 300)));
    }

    #[test]
    fn a_loss_is_reported_once() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert_eq!(d.poll(ms(300)), vec![lost("a", 1)]);
        assert_eq!(d.poll(ms(600)), vec![]);
        assert_eq!(d.poll(ms(10_000)), vec![]);
    }

    #[test]
    fn stale_sequence_does_not_extend_the_deadline() {
        let mut d = detector();
        d.observe(&beat("a", 1, 5, 100), ms(0));
        assert_eq!(d.observe(&beat("a", 1, 5, 100), ms(200)), None);
        assert_eq!(d.observe(&beat("a", 1, 3, 100), ms(250)), None);
        assert_eq!(d.last_seen(&dev("a")), Some(ms(0)));
        assert_eq!(d.next_deadline(), Some(ms(300)));
        assert_eq!(d.poll(ms(300)), vec![lost("a", 1)]);
    }

    #[test]
    fn stale_beat_does_not_revive_a_lost_peer() {
        let mut d = detector();
        d.observe(&beat("a", 1, 5, 100), ms(0));
        d.poll(ms(300));
        assert_eq!(d.observe(&beat("a", 1, 4, 100), ms(350)), None);
        assert!(!d.is_live(&dev("a")));
    }

    #[test]
    fn lost_peer_that_beats_again_rejoins() {
        let mut d = detector();
        d.observe(&beat("a", 1, 5, 100), ms(0));
        d.poll(ms(300));
        assert_eq!(d.observe(&beat("a", 1, 9, 100), ms(900)), joined("a", 1));
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.next_deadline(), Some(ms(1200)));
    }

    #[test]
    fn late_beat_before_poll_still_counts() {
        let mut d = detector();
        d.observe(&beat("a", 1, 1, 100), ms(0));
        // Past the deadline (300 ms), but nobody polled: the beat arrived.
        assert_eq!(d.observe(&beat("a", 1, 2, 100), ms(350)), None);
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.poll(ms(350)), vec![]);
        assert_eq!(d.next_deadline(), Some(ms(650)));
    }

    #[test]
    fn new_instance_is_a_restart() {
        let mut d = detector();
        d.observe(&beat("a", 1, 50, 100), ms(0));
        assert_eq!(
            d.observe(&beat("a", 2, 0, 100), ms(100)),
            Some(PeerChange::Restarted {
                device: dev("a"),
                old: InstanceId::new(1),
                new: InstanceId::new(2),
            })
        );
        // The new instance's seq starts again; its next beat counts.
        assert_eq!(d.observe(&beat("a", 2, 1, 100), ms(200)), None);
        assert_eq!(d.last_seen(&dev("a")), Some(ms(200)));
    }

    #[test]
    fn old_instance_never_comes_back() {
        let mut d = detector();
        d.observe(&beat("a", 1, 50, 100), ms(0));
        d.observe(&beat("a", 2, 0, 100), ms(100));
        assert_eq!(d.observe(&beat("a", 1, 51, 100), ms(150)), None);
        assert_eq!(d.last_seen(&dev("a")), Some(ms(100)));
        // Not even once the new instance is lost.
        assert_eq!(d.poll(ms(400)), vec![lost("a", 2)]);
        assert_eq!(d.observe(&beat("a", 1, 52, 100), ms(500)), None);
        assert!(!d.is_live(&dev("a")));
        assert_eq!(d.leave(&dev("a"), InstanceId::new(1), ms(500)), None);
    }

    #[test]
    fn new_instance_after_a_loss_is_a_join() {
        let mut d = detector();
        d.observe(&beat("a", 1, 50, 100), ms(0));
        d.poll(ms(300));
        assert_eq!(d.observe(&beat("a", 2, 0, 100), ms(400)), joined("a", 2));
    }

    #[test]
    fn own_stall_is_not_blamed_on_peers() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert!(d.poll(ms(100)).is_empty());
        // We were stopped from 100 ms to 2 s: a's beats wait unread.
        assert!(
            d.poll(ms(2000)).is_empty(),
            "silence nobody heard is not a loss"
        );
        assert!(d.is_live(&dev("a")));
        assert_eq!(d.observe(&beat("a", 1, 1, 100), ms(2000)), None);
        // A peer that is really gone is lost one interval later than usual.
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert!(d.poll(ms(2000)).is_empty());
        assert_eq!(d.next_deadline(), Some(ms(2100)));
        assert_eq!(d.poll(ms(2100)).len(), 1);
    }

    #[test]
    fn a_punctual_caller_detects_on_time() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert_eq!(d.next_deadline(), Some(ms(300)));
        assert_eq!(
            d.poll(ms(350)).len(),
            1,
            "a timer 50 ms late is not a stall"
        );
    }

    #[test]
    fn leave_is_immediate() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert_eq!(
            d.leave(&dev("a"), InstanceId::new(1), ms(10)),
            Some(PeerChange::Left {
                device: dev("a"),
                instance: InstanceId::new(1),
            })
        );
        assert!(!d.is_live(&dev("a")));
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.poll(ms(1000)), vec![]);
        assert_eq!(d.last_seen(&dev("a")), Some(ms(0)));
    }

    #[test]
    fn leave_from_anyone_but_the_live_instance_is_ignored() {
        let mut d = detector();
        assert_eq!(d.leave(&dev("a"), InstanceId::new(1), ms(0)), None);
        d.observe(&beat("a", 1, 0, 100), ms(0));
        d.observe(&beat("a", 2, 0, 100), ms(10));
        assert_eq!(d.leave(&dev("a"), InstanceId::new(1), ms(20)), None);
        assert_eq!(d.leave(&dev("a"), InstanceId::new(3), ms(20)), None);
        assert!(d.is_live(&dev("a")));
        assert!(d.leave(&dev("a"), InstanceId::new(2), ms(30)).is_some());
        assert_eq!(d.leave(&dev("a"), InstanceId::new(2), ms(40)), None);
    }

    #[test]
    fn left_peer_that_beats_again_rejoins() {
        let mut d = detector();
        d.observe(&beat("a", 1, 3, 100), ms(0));
        d.leave(&dev("a"), InstanceId::new(1), ms(10));
        assert_eq!(d.observe(&beat("a", 1, 3, 100), ms(20)), None);
        assert_eq!(d.observe(&beat("a", 1, 4, 100), ms(500)), joined("a", 1));
    }

    #[test]
    fn peers_are_counted_by_state() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        d.observe(&beat("b", 1, 0, 100), ms(0));
        d.observe(&beat("c", 1, 0, 1000), ms(0));
        d.leave(&dev("b"), InstanceId::new(1), ms(10));
        d.poll(ms(300));
        assert_eq!(
            d.counts(),
            PeerCounts {
                live: 1,
                lost: 1,
                gone: 1
            }
        );
    }

    #[test]
    fn own_beats_are_ignored() {
        let mut d = detector();
        assert_eq!(d.observe(&beat("me", 1, 0, 100), ms(0)), None);
        assert_eq!(d.observe(&beat("me", 2, 0, 100), ms(0)), None);
        assert!(!d.is_live(&dev("me")));
        assert_eq!(d.live_peers().count(), 0);
        assert_eq!(d.last_seen(&dev("me")), None);
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.leave(&dev("me"), InstanceId::new(1), ms(0)), None);
    }

    #[test]
    fn peer_uses_its_own_advertised_interval() {
        let mut d = detector();
        d.observe(&beat("fast", 1, 0, 100), ms(0));
        d.observe(&beat("slow", 1, 0, 1000), ms(0));
        assert_eq!(d.next_deadline(), Some(ms(300)));
        assert_eq!(d.poll(ms(300)), vec![lost("fast", 1)]);
        assert_eq!(d.next_deadline(), Some(ms(3000)));
        assert_eq!(d.poll(ms(2999)), vec![]);
        assert_eq!(d.poll(ms(3000)), vec![lost("slow", 1)]);
    }

    #[test]
    fn a_changed_interval_applies_from_that_beat() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(0));
        d.observe(&beat("a", 1, 1, 500), ms(100));
        assert_eq!(d.next_deadline(), Some(ms(1600)));
    }

    #[test]
    fn hostile_interval_is_clamped() {
        assert_eq!(PeerBeat::from(&heartbeat(0)).interval, MIN_INTERVAL);
        assert_eq!(PeerBeat::from(&heartbeat(u32::MAX)).interval, MAX_INTERVAL);

        // Built by hand rather than from a heartbeat: observe clamps too.
        let mut d = detector();
        let mut huge = beat("a", 1, 0, 0);
        huge.interval = Duration::MAX;
        d.observe(&huge, ms(5));
        assert_eq!(d.next_deadline(), Some(ms(5) + 3 * MAX_INTERVAL));
        d.observe(&beat("b", 1, 0, 0), ms(5));
        assert_eq!(d.next_deadline(), Some(ms(5) + 3 * MIN_INTERVAL));
    }

    #[test]
    fn heartbeat_gives_device_instance_seq_and_interval() {
        assert_eq!(
            PeerBeat::from(&heartbeat(250)),
            PeerBeat {
                device: dev("desk"),
                instance: InstanceId::new(7),
                seq: 42,
                interval: ms(250),
            }
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let mut d = Detector::new(DetectorConfig { misses: u32::MAX }, dev("me"));
        let mut huge = beat("a", 1, 0, 0);
        huge.interval = Duration::MAX;
        d.observe(&huge, Duration::MAX);
        assert_eq!(d.next_deadline(), Some(Duration::MAX));
        assert_eq!(d.poll(Duration::MAX), vec![lost("a", 1)]);
    }

    #[test]
    fn a_clock_going_backwards_does_not_move_a_deadline_back() {
        let mut d = detector();
        d.observe(&beat("a", 1, 0, 100), ms(1000));
        d.observe(&beat("a", 1, 1, 100), ms(500));
        assert_eq!(d.last_seen(&dev("a")), Some(ms(1000)));
        assert_eq!(d.next_deadline(), Some(ms(1300)));
    }

    #[test]
    fn zero_misses_counts_as_one() {
        let mut d = Detector::new(DetectorConfig { misses: 0 }, dev("me"));
        d.observe(&beat("a", 1, 0, 100), ms(0));
        assert_eq!(d.poll(ms(0)), vec![]);
        assert_eq!(d.poll(ms(100)), vec![lost("a", 1)]);
    }

    #[test]
    fn losses_are_reported_in_device_order() {
        let mut d = detector();
        for name in ["c", "a", "b"] {
            d.observe(&beat(name, 1, 0, 100), ms(0));
        }
        assert_eq!(
            d.poll(ms(300)),
            vec![lost("a", 1), lost("b", 1), lost("c", 1)]
        );
    }

    #[test]
    fn live_peers_are_sorted_by_id() {
        let mut d = detector();
        for name in ["delta", "alpha", "charlie", "bravo"] {
            d.observe(&beat(name, 1, 0, 100), ms(0));
        }
        d.leave(&dev("charlie"), InstanceId::new(1), ms(0));
        let live: Vec<_> = d.live_peers().map(DeviceId::as_str).collect();
        assert_eq!(live, ["alpha", "bravo", "delta"]);
    }

    #[test]
    fn next_deadline_is_the_earliest_live_deadline() {
        let mut d = detector();
        assert_eq!(d.next_deadline(), None);
        d.observe(&beat("a", 1, 0, 100), ms(50));
        d.observe(&beat("b", 1, 0, 100), ms(0));
        assert_eq!(d.next_deadline(), Some(ms(300)));
        d.leave(&dev("b"), InstanceId::new(1), ms(60));
        assert_eq!(d.next_deadline(), Some(ms(350)));
    }

    #[test]
    fn forget_drops_all_state() {
        let mut d = detector();
        d.observe(&beat("a", 1, 9, 100), ms(0));
        d.observe(&beat("a", 2, 0, 100), ms(10));
        d.forget(&dev("a"));
        assert!(!d.is_live(&dev("a")));
        assert_eq!(d.last_seen(&dev("a")), None);
        assert_eq!(d.next_deadline(), None);
        // Even the replaced instance is forgotten.
        assert_eq!(d.observe(&beat("a", 1, 0, 100), ms(20)), joined("a", 1));
    }

    #[test]
    fn memory_of_replaced_instances_is_bounded() {
        let mut d = detector();
        for instance in 0..1000 {
            d.observe(&beat("a", instance, 0, 100), ms(instance));
        }
        let retired = d.peers.get(&dev("a")).map(|peer| peer.retired.len());
        assert_eq!(retired, Some(RETIRED_KEPT));
        // The most recently replaced instance is still ignored.
        assert_eq!(d.observe(&beat("a", 998, 1, 100), ms(1000)), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const DEVICES: [&str; 4] = ["me", "a", "b", "c"];

        #[derive(Debug, Clone)]
        enum Op {
            Beat {
                device: usize,
                instance: u64,
                seq: u64,
                interval_ms: u64,
            },
            Leave {
                device: usize,
                instance: u64,
            },
            Poll,
            Forget {
                device: usize,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            let device = 0..DEVICES.len();
            let interval_ms = prop_oneof![
                Just(0u64),
                Just(100),
                Just(250),
                Just(u64::from(u32::MAX)),
                0u64..2000,
            ];
            prop_oneof![
                6 => (device.clone(), 0u64..3, 0u64..8, interval_ms).prop_map(
                    |(device, instance, seq, interval_ms)| Op::Beat {
                        device,
                        instance,
                        seq,
                        interval_ms,
                    }
                ),
                1 => (device.clone(), 0u64..3)
                    .prop_map(|(device, instance)| Op::Leave { device, instance }),
                3 => Just(Op::Poll),
                1 => device.prop_map(|device| Op::Forget { device }),
            ]
        }

        /// Applies one reported change to the model of who is live, failing on
        /// a change that does not follow from the model.
        fn apply(
            live: &mut BTreeMap<DeviceId, bool>,
            change: &PeerChange,
        ) -> Result<(), TestCaseError> {
            let was_live = live.get(change.device()).copied().unwrap_or(false);
            let now_live = match change {
                PeerChange::Joined { .. } => {
                    prop_assert!(!was_live, "joined while live: {change:?}");
                    true
                }
                PeerChange::Restarted { old, new, .. } => {
                    prop_assert!(was_live, "restarted while not live: {change:?}");
                    prop_assert_ne!(old, new);
                    true
                }
                PeerChange::Lost { .. } | PeerChange::Left { .. } => {
                    prop_assert!(was_live, "lost or left while not live: {change:?}");
                    false
                }
            };
            live.insert(change.device().clone(), now_live);
            Ok(())
        }

        proptest! {
            /// Lost at most once between two Joined, liveness as reported
            /// matches `is_live`, and the next deadline is never before the
            /// last beat of a live peer (nor, right after a poll, before now).
            #[test]
            fn verdicts_follow_one_another_and_deadlines_stay_ahead(
                steps in prop::collection::vec((0u64..400, op()), 1..80),
            ) {
                let mut d = detector();
                let mut live: BTreeMap<DeviceId, bool> = BTreeMap::new();
                let mut now = Duration::ZERO;
                for (advance, op) in steps {
                    now += ms(advance);
                    let mut changes = Vec::new();
                    let mut polled = false;
                    match op {
                        Op::Beat { device, instance, seq, interval_ms } => {
                            let b = beat(DEVICES[device], instance, seq, interval_ms);
                            changes.extend(d.observe(&b, now));
                        }
                        Op::Leave { device, instance } => {
                            changes.extend(d.leave(
                                &dev(DEVICES[device]),
                                InstanceId::new(instance),
                                now,
                            ));
                        }
                        Op::Poll => {
                            changes = d.poll(now);
                            polled = true;
                        }
                        Op::Forget { device } => {
                            d.forget(&dev(DEVICES[device]));
                            live.insert(dev(DEVICES[device]), false);
                        }
                    }
                    for change in &changes {
                        prop_assert_ne!(change.device(), &dev("me"));
                        if matches!(change, PeerChange::Lost { .. }) {
                            let seen = d.last_seen(change.device());
                            prop_assert!(
                                seen.is_some_and(|t| now >= t + 3 * MIN_INTERVAL),
                                "lost too early: {change:?} at {now:?}, last seen {seen:?}"
                            );
                        }
                        apply(&mut live, change)?;
                    }

                    let expected: Vec<DeviceId> = live
                        .iter()
                        .filter(|(_, is_live)| **is_live)
                        .map(|(device, _)| device.clone())
                        .collect();
                    let actual: Vec<DeviceId> = d.live_peers().cloned().collect();
                    prop_assert_eq!(&actual, &expected);

                    let earliest_beat = expected
                        .iter()
                        .filter_map(|device| d.last_seen(device))
                        .min();
                    match (d.next_deadline(), earliest_beat) {
                        (None, None) => {}
                        (Some(deadline), Some(beat)) => {
                            prop_assert!(deadline > beat, "deadline {deadline:?} <= beat {beat:?}");
                            if polled {
                                prop_assert!(deadline > now, "deadline {deadline:?} <= now {now:?} after poll");
                                for device in &expected {
                                    let seen = d.last_seen(device);
                                    prop_assert!(seen.is_some_and(|t| t < deadline));
                                }
                            }
                        }
                        (deadline, beat) => {
                            prop_assert!(false, "deadline {deadline:?} but earliest live beat {beat:?}");
                        }
                    }
                }
            }
        }
    }
}
