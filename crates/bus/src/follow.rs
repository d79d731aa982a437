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
//!   [`SWITCH_AFTER`] (its process restarted, say)
//!   ([`ElectionFollower::adopting`]).
//!
//! It is pure: the caller passes the time.

use std::time::{Duration, Instant};

use understudy_protocol::InstanceId;

/// How long the followed election service must have been silent before an
/// adopting follower takes another one. The election service reports four
/// times a second, and the other services treat a second of silence as its
/// loss, so a second is when it is gone.
pub const SWITCH_AFTER: Duration = Duration::from_secs(1);

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
    /// once that one has been silent for [`SWITCH_AFTER`].
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
                if self.pinned || now.saturating_duration_since(last) < SWITCH_AFTER =>
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!f.follow(new, t0 + SWITCH_AFTER - ms(1)).taken());
        assert_eq!(
            f.follow(new, t0 + SWITCH_AFTER),
            Followed::Switched { from: Some(old) }
        );
        assert!(
            !f.follow(old, t0 + SWITCH_AFTER + ms(10)).taken(),
            "the old one does not take it back while the new one reports"
        );
    }
}
