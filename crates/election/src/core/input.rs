//! The election input stage: which peer news reaches the [`Machine`].
//!
//! The election service hears two things about peers, both over the bus: the
//! group's heartbeats (what each peer says about itself: score, role, term)
//! and its own device's heartbeat service's verdicts ([`PeerNotice`]: a peer
//! joined, restarted, was lost or left). This stage turns them into the
//! machine's [`Event::PeerSeen`] and [`Event::PeerLost`]. The NATS driver and
//! the simulator both feed it, so the seeded simulation covers the very
//! filtering a device ships with.
//!
//! The rules, in one place:
//!
//! - **Dedup.** A heartbeat counts only if its `seq` is above the last one of
//!   the same instance, or it comes from another instance (the bus may repeat
//!   or reorder). Heartbeats of this device itself, or of another group, do
//!   not count.
//! - **Live gating.** Only a peer the failure detector declared live (by a
//!   `Joined` or `Restarted` notice naming that very instance) reaches the
//!   machine. The newest beat of any other peer is kept, not fed: so a late
//!   beat cannot bring back a peer declared lost, and when the detector
//!   declares a peer live, its newest beat is fed at once — if it was heard
//!   within [`LIVENESS_WINDOW`]; an older one (the notice waited for the
//!   bus) is not, and the instance's next beat is.
//! - **Lost and left.** A `Lost` or `Left` notice about the live instance
//!   ends its liveness and feeds [`Event::PeerLost`] (B5: a device that leaves
//!   upsets the status quo; L1: a lost server is replaced at once). A notice
//!   about another instance is old news and ignored.
//! - **Stale verdicts.** A `Lost` notice older than
//!   [`LIVENESS_WINDOW`] on arrival (by this device's own wall clock, which
//!   also stamped it) waited for the bus: the heartbeat service made it while
//!   this device was cut off from the bus, when every peer falls silent, and
//!   the client delivered it on reconnecting. The peer may well be back, or
//!   never have gone. It is ignored: only fresh news deposes a server. A peer
//!   that really is gone still loses its place, because its lease expires
//!   and the machine sees that through the lease watch; and a server that is
//!   really gone stops beating, so a fresh `Lost` follows.
//! - **Superseded verdicts.** A `Lost` notice made before this stage heard a
//!   beat of that very instance (both times on this device's own wall
//!   clock) is ignored: the peer beat after the silence the verdict
//!   describes. Back from a cut-off, a device may hear the peers' fresh
//!   beats before its own verdicts made while it was away (younger than the
//!   liveness window when the peers beat slowly); the detector, hearing
//!   the same beat, declares the peer live again.

use std::collections::BTreeMap;
use std::time::Duration;

use understudy_protocol::messages::{Heartbeat, PeerChangeKind, PeerNotice};
use understudy_protocol::timing::LIVENESS_WINDOW;
use understudy_protocol::{DeviceId, GroupName, InstanceId};

use super::types::{Event, PeerStatus};

/// What the input stage made of one bus message.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Feed this event to the machine.
    Feed(Event),
    /// Nothing for the machine; why, for the logs and the tests.
    Ignored(Ignored),
}

/// Why a message did not reach the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// About this device itself, or another group or observer.
    NotOurs,
    /// A heartbeat already heard, or older than one heard (same instance).
    Duplicate,
    /// A fresh heartbeat of a peer the detector does not hold live: kept,
    /// and fed once the detector declares that instance live.
    NotLive,
    /// A verdict about an instance that is not the live one.
    NotTheLiveInstance,
    /// A `Lost` verdict that waited longer than [`LIVENESS_WINDOW`].
    Stale {
        /// How old it was on arrival.
        age: Duration,
    },
    /// A `Lost` verdict made before a beat of that instance was heard.
    Superseded,
    /// A verdict that the peer is live whose newest beat is older than
    /// [`LIVENESS_WINDOW`]: the peer counts as live, its next beat is fed.
    StaleBeat,
}

/// The newest heartbeat of one device.
#[derive(Debug, Clone)]
struct Latest {
    seq: u64,
    status: PeerStatus,
    /// When it was heard, on this device's wall clock (Unix milliseconds).
    heard_ms: u64,
}

/// Beat dedup, live gating and the stale-verdict filter of one device's
/// election service (see the module docs for the rules).
#[derive(Debug, Clone)]
pub struct InputStage {
    group: GroupName,
    me: DeviceId,
    /// Peers the failure detector holds live, with their instance.
    live: BTreeMap<DeviceId, InstanceId>,
    /// The newest heartbeat of each peer, live or not.
    latest: BTreeMap<DeviceId, Latest>,
}

impl InputStage {
    /// The input stage of device `me` in `group`, knowing no peer yet.
    pub fn new(group: GroupName, me: DeviceId) -> Self {
        Self {
            group,
            me,
            live: BTreeMap::new(),
            latest: BTreeMap::new(),
        }
    }

    /// A heartbeat from the group's subject, arriving when this device's
    /// wall clock reads `now_ms` (Unix milliseconds).
    pub fn heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> Input {
        if hb.device == self.me || hb.group != self.group {
            return Input::Ignored(Ignored::NotOurs);
        }
        let fresh = self
            .latest
            .get(&hb.device)
            .is_none_or(|l| l.status.instance != hb.instance || hb.seq > l.seq);
        if !fresh {
            return Input::Ignored(Ignored::Duplicate);
        }
        let status = peer_status(hb);
        self.latest.insert(
            hb.device.clone(),
            Latest {
                seq: hb.seq,
                status: status.clone(),
                heard_ms: now_ms,
            },
        );
        if self.live.get(&hb.device) == Some(&hb.instance) {
            Input::Feed(Event::PeerSeen(status))
        } else {
            Input::Ignored(Ignored::NotLive)
        }
    }

    /// A verdict of this device's heartbeat service, arriving when this
    /// device's wall clock reads `now_ms` (Unix milliseconds).
    pub fn notice(&mut self, notice: &PeerNotice, now_ms: u64) -> Input {
        if notice.observer != self.me || notice.group != self.group || notice.device == self.me {
            return Input::Ignored(Ignored::NotOurs);
        }
        match notice.change {
            PeerChangeKind::Joined | PeerChangeKind::Restarted => self.now_live(notice, now_ms),
            PeerChangeKind::Lost => match stale_age(notice, now_ms) {
                Some(age) => Input::Ignored(Ignored::Stale { age }),
                None if self.heard_since(notice) => Input::Ignored(Ignored::Superseded),
                None => self.gone(notice),
            },
            PeerChangeKind::Left => self.gone(notice),
        }
    }

    /// Whether the detector holds `device` live (as far as this stage heard).
    pub fn is_live(&self, device: &DeviceId) -> bool {
        self.live.contains_key(device)
    }

    /// Whether a beat of the instance `notice` is about was heard after the
    /// notice was made (a notice without a timestamp: no).
    fn heard_since(&self, notice: &PeerNotice) -> bool {
        let Some(made) = notice.sent_at_ms else {
            return false;
        };
        self.latest
            .get(&notice.device)
            .is_some_and(|l| l.status.instance == notice.instance && l.heard_ms > made)
    }

    fn now_live(&mut self, notice: &PeerNotice, now_ms: u64) -> Input {
        self.live.insert(notice.device.clone(), notice.instance);
        match self.latest.get(&notice.device) {
            // Only a beat heard lately: a verdict that waited for the bus
            // (made before a cut-off) may name an instance whose last beat
            // is seconds old — an older instance of a device that has
            // restarted since and now holds the lease (simulator seed
            // 161759 at 1 s client beats: fed, it made the holder look
            // replaced, and a needless takeover followed). Its next beat,
            // if it still beats, is fed.
            Some(l)
                if l.status.instance == notice.instance
                    && now_ms.saturating_sub(l.heard_ms) <= LIVENESS_WINDOW.as_millis() as u64 =>
            {
                Input::Feed(Event::PeerSeen(l.status.clone()))
            }
            Some(l) if l.status.instance == notice.instance => Input::Ignored(Ignored::StaleBeat),
            // Its beat reaches this service a moment later, and is fed then.
            _ => Input::Ignored(Ignored::NotLive),
        }
    }

    fn gone(&mut self, notice: &PeerNotice) -> Input {
        if self.live.get(&notice.device) != Some(&notice.instance) {
            return Input::Ignored(Ignored::NotTheLiveInstance);
        }
        self.live.remove(&notice.device);
        Input::Feed(Event::PeerLost {
            device: notice.device.clone(),
            instance: notice.instance,
        })
    }
}

/// How old a `Lost` verdict is on arrival, if older than [`LIVENESS_WINDOW`].
/// A notice without a timestamp (an older sender) counts as fresh.
fn stale_age(notice: &PeerNotice, now_ms: u64) -> Option<Duration> {
    let age = Duration::from_millis(now_ms.saturating_sub(notice.sent_at_ms?));
    (age > LIVENESS_WINDOW).then_some(age)
}

/// What the machine needs of a heartbeat.
fn peer_status(hb: &Heartbeat) -> PeerStatus {
    PeerStatus {
        device: hb.device.clone(),
        instance: hb.instance,
        mac: hb.mac,
        score: hb.score,
        online: hb.online,
        role: hb.role,
        term: hb.term,
        in_grace: hb.in_grace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::{Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term};

    const NOW: u64 = 1_000_000;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("valid device id")
    }

    fn stage() -> InputStage {
        InputStage::new("g".parse().expect("valid group"), id("me"))
    }

    fn beat(device: &str, instance: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            schema: SCHEMA_VERSION,
            group: "g".parse().expect("valid group"),
            device: id(device),
            instance: InstanceId::new(instance),
            mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
            score: Score::new(100),
            online: true,
            role: Role::Client,
            term: Term::ZERO,
            in_grace: false,
            colour: StatusColour::Blue,
            problems: vec![],
            seq,
            interval_ms: 100,
            sent_at_ms: NOW,
        }
    }

    fn notice(change: PeerChangeKind, device: &str, instance: u64, sent: u64) -> PeerNotice {
        PeerNotice {
            schema: SCHEMA_VERSION,
            group: "g".parse().expect("valid group"),
            observer: id("me"),
            change,
            device: id(device),
            instance: InstanceId::new(instance),
            sent_at_ms: Some(sent),
        }
    }

    /// The machine's event for instance 1 of `p` being gone.
    fn lost_p() -> Event {
        Event::PeerLost {
            device: id("p"),
            instance: InstanceId::new(1),
        }
    }

    fn fed(input: Input) -> Event {
        match input {
            Input::Feed(e) => e,
            Input::Ignored(why) => panic!("expected an event, got {why:?}"),
        }
    }

    /// When `with_live_peer`'s beat was heard: well before `NOW`.
    const HEARD: u64 = NOW - 5_000;

    /// A stage where `p` (instance 1) is live and its beat 1 was heard.
    fn with_live_peer() -> InputStage {
        let mut s = stage();
        s.heartbeat(&beat("p", 1, 1), HEARD);
        s.notice(&notice(PeerChangeKind::Joined, "p", 1, HEARD), HEARD);
        s
    }

    #[test]
    fn a_lost_verdict_made_before_a_beat_heard_since_is_ignored() {
        // Back from a cut-off: the peer's fresh beat arrives before this
        // device's own verdict made while away (seed 7975 of the soak).
        let mut s = with_live_peer();
        assert!(matches!(s.heartbeat(&beat("p", 1, 2), NOW), Input::Feed(_)));
        assert_eq!(
            s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW - 600), NOW + 5),
            Input::Ignored(Ignored::Superseded)
        );
        assert!(s.is_live(&id("p")), "the peer stays live");
        // A verdict made after the last beat heard counts.
        let later = s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW + 300), NOW + 305);
        assert_eq!(fed(later), lost_p());
        // A beat of another instance does not supersede a verdict on this one.
        let mut s = with_live_peer();
        s.heartbeat(&beat("p", 2, 1), NOW);
        assert_eq!(
            fed(s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW - 600), NOW + 5)),
            lost_p()
        );
    }

    #[test]
    fn a_live_verdict_that_waited_for_the_bus_does_not_feed_a_beat_seconds_old() {
        // Simulator seed 161759 at 1 s client beats: a device back from a
        // cut-off gets its detector's "joined" verdict about an instance of
        // a peer that has restarted since; feeding that instance's old beat
        // made the peer's new, serving instance look replaced.
        let mut s = stage();
        s.heartbeat(&beat("p", 1, 1), NOW - 3_000);
        let late = s.notice(&notice(PeerChangeKind::Joined, "p", 1, NOW - 3_000), NOW);
        assert_eq!(late, Input::Ignored(Ignored::StaleBeat));
        assert!(s.is_live(&id("p")), "the verdict still counts");
        assert!(
            matches!(
                fed(s.heartbeat(&beat("p", 1, 2), NOW + 10)),
                Event::PeerSeen(_)
            ),
            "its next beat is fed"
        );
    }

    #[test]
    fn a_beat_reaches_the_machine_only_once_the_detector_declares_the_peer_live() {
        let mut s = stage();
        assert_eq!(
            s.heartbeat(&beat("p", 1, 1), NOW),
            Input::Ignored(Ignored::NotLive)
        );
        let joined = s.notice(&notice(PeerChangeKind::Joined, "p", 1, NOW), NOW);
        assert!(matches!(fed(joined), Event::PeerSeen(st) if st.device == id("p")));
        assert!(matches!(
            fed(s.heartbeat(&beat("p", 1, 2), NOW)),
            Event::PeerSeen(_)
        ));
    }

    #[test]
    fn a_join_before_any_beat_waits_for_the_beat() {
        let mut s = stage();
        assert_eq!(
            s.notice(&notice(PeerChangeKind::Joined, "p", 1, NOW), NOW),
            Input::Ignored(Ignored::NotLive)
        );
        assert!(matches!(
            fed(s.heartbeat(&beat("p", 1, 1), NOW)),
            Event::PeerSeen(_)
        ));
    }

    #[test]
    fn a_repeated_or_older_beat_is_dropped() {
        let mut s = with_live_peer();
        assert!(matches!(
            fed(s.heartbeat(&beat("p", 1, 5), NOW)),
            Event::PeerSeen(_)
        ));
        assert_eq!(
            s.heartbeat(&beat("p", 1, 5), NOW),
            Input::Ignored(Ignored::Duplicate)
        );
        assert_eq!(
            s.heartbeat(&beat("p", 1, 4), NOW),
            Input::Ignored(Ignored::Duplicate)
        );
    }

    #[test]
    fn own_beats_and_other_groups_are_not_ours() {
        let mut s = stage();
        assert_eq!(
            s.heartbeat(&beat("me", 1, 1), NOW),
            Input::Ignored(Ignored::NotOurs)
        );
        let mut other = beat("p", 1, 1);
        other.group = "h".parse().expect("valid group");
        assert_eq!(s.heartbeat(&other, NOW), Input::Ignored(Ignored::NotOurs));
        let mut theirs = notice(PeerChangeKind::Joined, "p", 1, NOW);
        theirs.observer = id("q");
        assert_eq!(s.notice(&theirs, NOW), Input::Ignored(Ignored::NotOurs));
    }

    #[test]
    fn a_lost_peer_is_lost_once_and_a_late_beat_cannot_bring_it_back() {
        let mut s = with_live_peer();
        let lost = s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW), NOW);
        assert_eq!(fed(lost), lost_p());
        assert!(!s.is_live(&id("p")));
        assert_eq!(
            s.heartbeat(&beat("p", 1, 2), NOW),
            Input::Ignored(Ignored::NotLive),
            "a late beat must not resurrect a lost peer"
        );
        assert_eq!(
            s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW), NOW),
            Input::Ignored(Ignored::NotTheLiveInstance)
        );
        // The detector hears it again: its newest beat is fed at once.
        let back = s.notice(&notice(PeerChangeKind::Joined, "p", 1, NOW), NOW);
        assert!(matches!(fed(back), Event::PeerSeen(_)));
    }

    #[test]
    fn a_goodbye_ends_liveness_at_once() {
        let mut s = with_live_peer();
        let left = s.notice(&notice(PeerChangeKind::Left, "p", 1, NOW), NOW);
        assert_eq!(fed(left), lost_p());
    }

    #[test]
    fn a_verdict_about_a_replaced_instance_is_ignored() {
        let mut s = with_live_peer();
        s.heartbeat(&beat("p", 2, 1), NOW);
        let restarted = s.notice(&notice(PeerChangeKind::Restarted, "p", 2, NOW), NOW);
        assert!(matches!(fed(restarted), Event::PeerSeen(st) if st.instance == InstanceId::new(2)));
        assert_eq!(
            s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW), NOW),
            Input::Ignored(Ignored::NotTheLiveInstance)
        );
        assert_eq!(
            s.heartbeat(&beat("p", 1, 9), NOW),
            Input::Ignored(Ignored::NotLive),
            "the old process's beats do not reach the machine"
        );
        assert!(s.is_live(&id("p")));
    }

    #[test]
    fn a_lost_verdict_that_waited_longer_than_the_liveness_window_is_ignored() {
        let mut s = with_live_peer();
        let window = LIVENESS_WINDOW.as_millis() as u64;
        let sent = NOW - window - 1;
        assert_eq!(
            s.notice(&notice(PeerChangeKind::Lost, "p", 1, sent), NOW),
            Input::Ignored(Ignored::Stale {
                age: LIVENESS_WINDOW + Duration::from_millis(1)
            })
        );
        assert!(s.is_live(&id("p")), "a stale verdict leaves the peer live");
        // Exactly the window old still counts.
        let fresh = s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW - window), NOW);
        assert_eq!(fed(fresh), lost_p());
    }

    #[test]
    fn an_old_goodbye_still_counts() {
        // A goodbye is the peer's own word, not a guess from silence.
        let mut s = with_live_peer();
        let left = s.notice(&notice(PeerChangeKind::Left, "p", 1, NOW - 60_000), NOW);
        assert_eq!(fed(left), lost_p());
    }

    #[test]
    fn a_lost_verdict_without_a_timestamp_counts_as_fresh() {
        let mut s = with_live_peer();
        let mut old_sender = notice(PeerChangeKind::Lost, "p", 1, 0);
        old_sender.sent_at_ms = None;
        assert_eq!(fed(s.notice(&old_sender, NOW)), lost_p());
    }

    #[test]
    fn a_clock_that_went_back_does_not_make_a_verdict_stale() {
        let mut s = with_live_peer();
        let lost = s.notice(&notice(PeerChangeKind::Lost, "p", 1, NOW + 5_000), NOW);
        assert_eq!(fed(lost), lost_p());
    }
}
