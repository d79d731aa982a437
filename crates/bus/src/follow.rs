//! Which election service a device's other services follow.
//!
//! A device's services talk on its *local* subjects
//! (`understudy.<group>.local.<device>.…`), named by group and device only,
//! so that they can run in one process or apart. Two processes started with
//! the same device id (a configuration mistake that B2 reports as "Duplicate
//! device id") therefore hear each other's local messages. Taking them all
//! would merge the twins: a heartbeat service beating now as one, now as the
//! other, and — worse — a project-sync service serving because its twin's
//! election service won the lease.
//!
//! An [`ElectionFollower`] keeps each service on one election service:
//!
//! - when the election service runs in the same process, on exactly that
//!   instance ([`ElectionFollower::pinned`]);
//! - when the services run apart, on the first instance that reports, and on
//!   another only after the followed one has been silent for
//!   [`LIVENESS_WINDOW`] (its process restarted, say)
//!   ([`ElectionFollower::adopting`]): the window after which every service
//!   of a device takes its election service as gone.
//!
//! A [`LocalElection`] adds what every service checks before that: that the
//! report names this device and group; and what every service checks after:
//! whether the election service followed is still live (it reported less
//! than [`LIVENESS_WINDOW`] ago). It decides which reports are the device's;
//! the driver-side [`ElectionFeed`](crate::ElectionFeed) feeds it the bus.
//!
//! Both are pure: the caller passes the time.

use std::time::Instant;

use tracing::{debug, info};
use understudy_protocol::messages::ElectionState;
use understudy_protocol::timing::LIVENESS_WINDOW;
use understudy_protocol::{DeviceId, GroupName, InstanceId};

/// What [`ElectionFollower::follow`] made of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// From the instance followed: take it.
    Same,
    /// From a new instance, now followed (the first one, or a successor of a
    /// silent one): take it; `from` is the instance followed before, if any.
    Switched {
        /// The instance followed before.
        from: Option<InstanceId>,
    },
    /// From another instance while the followed one is alive (a second
    /// process with this device id): ignore it.
    Other {
        /// The instance followed.
        followed: InstanceId,
    },
}

impl Followed {
    /// Whether the report is to be taken.
    pub fn taken(self) -> bool {
        !matches!(self, Followed::Other { .. })
    }
}

/// Keeps a service on one election service (module docs).
#[derive(Debug, Clone)]
pub struct ElectionFollower {
    pinned: bool,
    followed: Option<(InstanceId, Instant)>,
}

impl ElectionFollower {
    /// Follows only `instance`: the election service of this process.
    pub fn pinned(instance: InstanceId) -> Self {
        Self {
            pinned: true,
            followed: Some((instance, Instant::now())),
        }
    }

    /// Follows the first election service that reports, and another only
    /// once that one has been silent for [`LIVENESS_WINDOW`].
    pub fn adopting() -> Self {
        Self {
            pinned: false,
            followed: None,
        }
    }

    /// Follows `instance` when given, else adopts (see the constructors).
    pub fn new(instance: Option<InstanceId>) -> Self {
        instance.map_or_else(Self::adopting, Self::pinned)
    }

    /// The instance followed, if any yet.
    pub fn followed(&self) -> Option<InstanceId> {
        self.followed.map(|(i, _)| i)
    }

    /// Judges a report from election service `instance`, received at `now`.
    pub fn follow(&mut self, instance: InstanceId, now: Instant) -> Followed {
        match self.followed {
            Some((current, _)) if current == instance => {
                self.followed = Some((instance, now));
                Followed::Same
            }
            Some((current, last))
                if self.pinned || now.saturating_duration_since(last) < LIVENESS_WINDOW =>
            {
                Followed::Other { followed: current }
            }
            before => {
                self.followed = Some((instance, now));
                Followed::Switched {
                    from: before.map(|(i, _)| i),
                }
            }
        }
    }
}

/// Which election states are this device's: those that name its group and
/// device and come from the election service followed (module docs). Logs
/// what it ignores at debug level and a switch to a new election service at
/// info level, so every service reports the same way.
#[derive(Debug, Clone)]
pub struct LocalElection {
    group: GroupName,
    device: DeviceId,
    follower: ElectionFollower,
    /// When the last state was accepted.
    heard_at: Option<Instant>,
}

impl LocalElection {
    /// Judges the reports of `device`'s election service in `group`;
    /// `pinned` is that service's instance when it runs in this process
    /// (see [`ElectionFollower::new`]).
    pub fn new(group: GroupName, device: DeviceId, pinned: Option<InstanceId>) -> Self {
        Self {
            group,
            device,
            follower: ElectionFollower::new(pinned),
            heard_at: None,
        }
    }

    /// Whether `state`, received at `now`, is this device's: for it, and
    /// from the election service followed (which it may now become).
    pub fn accept(&mut self, state: &ElectionState, now: Instant) -> bool {
        if state.device != self.device || state.group != self.group {
            debug!(device = %state.device, group = %state.group, "election state of another device ignored");
            return false;
        }
        match self.follower.follow(state.instance, now) {
            Followed::Same | Followed::Switched { from: None } => {}
            Followed::Switched { from: Some(from) } => {
                info!(%from, to = %state.instance, "following a new election service (the old one fell silent)");
            }
            Followed::Other { followed } => {
                debug!(instance = %state.instance, %followed, "election state of another process with this device id ignored");
                return false;
            }
        }
        self.heard_at = Some(now);
        true
    }

    /// When the last state was accepted, if any was.
    pub fn heard_at(&self) -> Option<Instant> {
        self.heard_at
    }

    /// Whether this device's election service is live at `now`: a state was
    /// accepted less than [`LIVENESS_WINDOW`] ago. Silent longer, it is gone
    /// (or this process was paused): the device must stop serving and stop
    /// claiming a role.
    pub fn is_live(&self, now: Instant) -> bool {
        self.heard_at
            .is_some_and(|at| now.saturating_duration_since(at) < LIVENESS_WINDOW)
    }

    /// The election service followed, if any has reported yet. Services tag
    /// what they publish on the device's local subjects with it.
    pub fn followed(&self) -> Option<InstanceId> {
        self.follower.followed()
    }

    /// Whether a message another service of this device published on a
    /// local subject, tagged with the election service *it* follows, belongs
    /// with this one: untagged (an older sender), or tagged with the same
    /// election service. A twin process's status or project state is not.
    pub fn is_followed(&self, tag: Option<InstanceId>) -> bool {
        tag.is_none_or(|i| self.followed() == Some(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_pinned_follower_takes_only_its_instance() {
        let t0 = Instant::now();
        let (mine, twin) = (InstanceId::new(1), InstanceId::new(2));
        let mut f = ElectionFollower::pinned(mine);
        assert_eq!(f.follow(mine, t0), Followed::Same);
        assert!(!f.follow(twin, t0 + ms(10)).taken());
        // Not even after a long silence: the election service of this process
        // is the device's, whatever else reports.
        assert!(!f.follow(twin, t0 + ms(60_000)).taken());
        assert_eq!(f.followed(), Some(mine));
    }

    #[test]
    fn an_adopting_follower_sticks_to_the_first_while_it_reports() {
        let t0 = Instant::now();
        let (first, twin) = (InstanceId::new(1), InstanceId::new(2));
        let mut f = ElectionFollower::adopting();
        assert_eq!(f.followed(), None);
        assert_eq!(f.follow(first, t0), Followed::Switched { from: None });
        for k in 1..20 {
            assert_eq!(
                f.follow(twin, t0 + ms(k * 250 + 10)),
                Followed::Other { followed: first }
            );
            assert_eq!(f.follow(first, t0 + ms(k * 250)), Followed::Same);
        }
        assert_eq!(f.followed(), Some(first));
    }

    #[test]
    fn an_adopting_follower_moves_on_once_the_followed_is_silent() {
        let t0 = Instant::now();
        let (old, new) = (InstanceId::new(1), InstanceId::new(2));
        let mut f = ElectionFollower::adopting();
        f.follow(old, t0);
        assert!(!f.follow(new, t0 + LIVENESS_WINDOW - ms(1)).taken());
        assert_eq!(
            f.follow(new, t0 + LIVENESS_WINDOW),
            Followed::Switched { from: Some(old) }
        );
        assert!(
            !f.follow(old, t0 + LIVENESS_WINDOW + ms(10)).taken(),
            "the old one does not take it back while the new one reports"
        );
    }
    fn state(device: &str, instance: u64) -> ElectionState {
        ElectionState {
            schema: understudy_protocol::SCHEMA_VERSION,
            group: "g".parse().expect("valid group"),
            device: device.parse().expect("valid device"),
            instance: InstanceId::new(instance),
            mac: understudy_protocol::Mac::from_octets([0, 0, 0, 0, 0, 1]),
            score: understudy_protocol::Score::new(5),
            online: true,
            role: understudy_protocol::Role::Client,
            term: understudy_protocol::Term::ZERO,
            in_grace: false,
            server: None,
        }
    }

    fn local(pinned: Option<u64>) -> LocalElection {
        LocalElection::new(
            "g".parse().expect("valid group"),
            "me".parse().expect("valid device"),
            pinned.map(InstanceId::new),
        )
    }

    #[test]
    fn a_local_election_takes_only_this_devices_and_groups_state() {
        let t0 = Instant::now();
        let mut l = local(None);
        assert!(!l.accept(&state("other", 1), t0));
        let mut elsewhere = state("me", 1);
        elsewhere.group = "h".parse().expect("valid group");
        assert!(!l.accept(&elsewhere, t0));
        assert_eq!(l.followed(), None, "nothing foreign is followed");
        assert!(l.accept(&state("me", 1), t0));
        assert_eq!(l.followed(), Some(InstanceId::new(1)));
    }

    #[test]
    fn a_local_election_follows_one_election_service_of_the_device() {
        let t0 = Instant::now();
        let mut l = local(Some(2));
        assert!(!l.accept(&state("me", 1), t0), "a twin is not this device");
        assert!(l.accept(&state("me", 2), t0));
        let mut l = local(None);
        assert!(l.accept(&state("me", 1), t0));
        assert!(!l.accept(&state("me", 2), t0 + ms(10)));
        assert!(
            l.accept(&state("me", 2), t0 + LIVENESS_WINDOW),
            "a silent one is replaced"
        );
    }

    #[test]
    fn the_election_service_is_live_for_one_window_after_its_last_state() {
        let t0 = Instant::now();
        let mut l = local(Some(1));
        assert!(!l.is_live(t0), "not before it reports");
        l.accept(&state("me", 1), t0);
        assert_eq!(l.heard_at(), Some(t0));
        assert!(l.is_live(t0 + LIVENESS_WINDOW - ms(1)));
        assert!(!l.is_live(t0 + LIVENESS_WINDOW), "silent a window: gone");
        l.accept(&state("me", 2), t0 + LIVENESS_WINDOW);
        assert!(
            !l.is_live(t0 + LIVENESS_WINDOW),
            "a twin does not revive it"
        );
    }

    #[test]
    fn sibling_messages_are_taken_untagged_or_tagged_with_the_followed_service() {
        let mut l = local(None);
        assert!(l.is_followed(None));
        assert!(
            !l.is_followed(Some(InstanceId::new(1))),
            "none followed yet"
        );
        l.accept(&state("me", 1), Instant::now());
        assert!(l.is_followed(Some(InstanceId::new(1))));
        assert!(!l.is_followed(Some(InstanceId::new(2))));
        assert!(l.is_followed(None));
    }
}
