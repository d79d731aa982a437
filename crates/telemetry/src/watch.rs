//! Who serves, over time, as one device sees it: the figures behind
//! `understudy_server_changes_total`, `understudy_without_server_seconds` and
//! `understudy_failover_seconds`.
//!
//! Pure: the election driver feeds it what it already hears (the server in
//! its machine's status, the current server's heartbeats, the failure
//! detector's verdicts) with the time, and records what comes back.
//!
//! - A **server change** is any new (device, term) pair seen serving, the
//!   first one included (as etcd's `leader_changes_seen_total`).
//! - **Time without a server** is each stretch during which the device knew
//!   no server, once it had known one; the start-up wait (grace) is not an
//!   outage and is not counted.
//! - A **failover** is a change of server after the old one was declared
//!   lost (not handed over): from the last heartbeat heard from the old
//!   server — about when it died — to the new one seen serving, so the
//!   detection time is included.

use std::time::Duration;

use understudy_protocol::{DeviceId, Term};

/// What an observation changed in the figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Another server (or another term of the same one) is serving.
    pub changed: bool,
    /// How long the group was without a server before it, if it was.
    pub without_server: Option<Duration>,
    /// How long from the lost server's last heartbeat to its successor
    /// serving, once the change is known to be a failover.
    pub failover: Option<Duration>,
}

/// A server that stopped serving, until it is known whether it was lost.
#[derive(Debug, Clone)]
struct Replaced {
    device: DeviceId,
    last_beat: Option<Duration>,
    /// When a successor was seen serving, if one was yet.
    successor_at: Option<Duration>,
}

/// One device's view of who serves (module docs).
///
/// The successor may be seen before the failure detector declares the old
/// server lost (another device claimed first): the change is then held as
/// [`Replaced`] until the verdict comes — `Lost` makes it a failover; a
/// goodbye or a new heartbeat of the old server (it handed over and lives
/// on as a client) makes it none.
#[derive(Debug, Clone, Default)]
pub struct ServerWatch {
    current: Option<(DeviceId, Term)>,
    current_beat: Option<Duration>,
    replaced: Option<Replaced>,
    leaderless_since: Option<Duration>,
    /// When the lost server was last heard, once declared lost before its
    /// successor was seen.
    lost_since: Option<Duration>,
}

impl ServerWatch {
    /// A view that has seen no server yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A heartbeat of `device` heard at `now`.
    pub fn beat(&mut self, device: &DeviceId, now: Duration) {
        if self.current.as_ref().is_some_and(|(d, _)| d == device) {
            self.current_beat = Some(now);
        }
        if self.replaced.as_ref().is_some_and(|r| &r.device == device) {
            // Alive after it stopped serving: a hand-over, not a loss.
            self.replaced = None;
        }
    }

    /// The failure detector declared `device` lost (silent) at `now`.
    pub fn lost(&mut self, device: &DeviceId, now: Duration) -> Seen {
        if self.current.as_ref().is_some_and(|(d, _)| d == device) {
            self.lost_since
                .get_or_insert(self.current_beat.unwrap_or(now));
            return Seen::default();
        }
        let Some(r) = self.replaced.take_if(|r| &r.device == device) else {
            return Seen::default();
        };
        let last = r.last_beat.unwrap_or(now);
        match r.successor_at {
            Some(at) => Seen {
                failover: Some(at.saturating_sub(last)),
                ..Seen::default()
            },
            None => {
                self.lost_since.get_or_insert(last);
                Seen::default()
            }
        }
    }

    /// When `device` was last heard, if it serves or just stopped serving.
    pub fn last_heard(&self, device: &DeviceId) -> Option<Duration> {
        if self.current.as_ref().is_some_and(|(d, _)| d == device) {
            return self.current_beat;
        }
        self.replaced
            .as_ref()
            .filter(|r| &r.device == device)
            .and_then(|r| r.last_beat)
    }

    /// `device` said goodbye: if it just stopped serving, it handed over.
    pub fn left(&mut self, device: &DeviceId) {
        self.replaced.take_if(|r| &r.device == device);
    }

    /// The server as the device sees it at `now` (`None`: no server).
    pub fn server(&mut self, server: Option<(&DeviceId, Term)>, now: Duration) -> Seen {
        let Some((device, term)) = server else {
            if let Some((old, _)) = self.current.take() {
                self.replaced = Some(Replaced {
                    device: old,
                    last_beat: self.current_beat.take(),
                    successor_at: None,
                });
                self.leaderless_since = Some(now);
            }
            return Seen::default();
        };
        if self
            .current
            .as_ref()
            .is_some_and(|(d, t)| d == device && *t == term)
        {
            return Seen::default();
        }
        if let Some((old, _)) = self.current.take()
            && &old != device
        {
            self.replaced = Some(Replaced {
                device: old,
                last_beat: self.current_beat,
                successor_at: None,
            });
        }
        let failover = self.lost_since.take().map(|t| now.saturating_sub(t));
        if failover.is_some() {
            self.replaced = None;
        } else if let Some(r) = self.replaced.as_mut() {
            r.successor_at.get_or_insert(now);
        }
        if self.current.is_none() || self.current.as_ref().is_some_and(|(d, _)| d != device) {
            self.current_beat = None;
        }
        self.current = Some((device.clone(), term));
        Seen {
            changed: true,
            without_server: self.leaderless_since.take().map(|t| now.saturating_sub(t)),
            failover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("valid device id")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn term(n: u64) -> Term {
        Term::from_revision(n)
    }

    #[test]
    fn the_first_server_is_a_change_but_the_start_up_wait_is_no_outage() {
        let mut w = ServerWatch::new();
        assert_eq!(w.server(None, ms(0)), Seen::default());
        let seen = w.server(Some((&id("a"), term(1))), ms(2000));
        assert_eq!(
            seen,
            Seen {
                changed: true,
                without_server: None,
                failover: None
            }
        );
        assert_eq!(
            w.server(Some((&id("a"), term(1))), ms(2100)),
            Seen::default(),
            "the same server again is no change"
        );
    }

    #[test]
    fn a_failover_counts_from_the_lost_servers_last_beat() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        w.beat(&id("a"), ms(1000));
        w.beat(&id("b"), ms(1050));
        // Killed at ~1000 ms; declared lost three misses later.
        assert_eq!(w.lost(&id("a"), ms(1300)), Seen::default());
        w.server(None, ms(1300));
        let seen = w.server(Some((&id("b"), term(3))), ms(1320));
        assert!(seen.changed);
        assert_eq!(seen.without_server, Some(ms(20)));
        assert_eq!(seen.failover, Some(ms(320)));
    }

    #[test]
    fn a_loss_noticed_after_the_lease_emptied_is_still_a_failover() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        w.beat(&id("a"), ms(900));
        w.server(None, ms(1000));
        w.lost(&id("a"), ms(1200));
        let seen = w.server(Some((&id("b"), term(2))), ms(1250));
        assert_eq!(seen.failover, Some(ms(350)));
        assert_eq!(seen.without_server, Some(ms(250)));
    }

    #[test]
    fn a_successor_seen_before_the_loss_is_a_failover_once_the_loss_comes() {
        // Another device detected the loss first and claimed; this one's
        // detector says so a moment later.
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        w.beat(&id("a"), ms(1000));
        let seen = w.server(Some((&id("b"), term(2))), ms(1310));
        assert!(seen.changed);
        assert_eq!(seen.failover, None, "not known yet");
        let seen = w.lost(&id("a"), ms(1330));
        assert_eq!(seen.failover, Some(ms(310)));
        assert!(!seen.changed);
        assert_eq!(w.lost(&id("a"), ms(1400)), Seen::default(), "counted once");
    }

    #[test]
    fn the_last_beat_of_the_server_is_known_until_the_change_is_settled() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        assert_eq!(w.last_heard(&id("a")), None);
        w.beat(&id("a"), ms(700));
        assert_eq!(w.last_heard(&id("a")), Some(ms(700)));
        w.server(Some((&id("b"), term(2))), ms(1000));
        assert_eq!(w.last_heard(&id("a")), Some(ms(700)), "just replaced");
        assert_eq!(w.last_heard(&id("c")), None);
    }

    #[test]
    fn a_hand_over_is_a_change_without_a_failover() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        w.beat(&id("a"), ms(500));
        w.server(None, ms(510));
        let seen = w.server(Some((&id("b"), term(2))), ms(520));
        assert!(seen.changed);
        assert_eq!(seen.without_server, Some(ms(10)));
        assert_eq!(seen.failover, None);
        // It leaves (SIGTERM): no failover, even if a verdict followed.
        w.left(&id("a"));
        assert_eq!(w.lost(&id("a"), ms(900)), Seen::default());
    }

    #[test]
    fn an_old_server_that_beats_on_as_a_client_was_not_lost() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        w.server(Some((&id("b"), term(2))), ms(500));
        w.beat(&id("a"), ms(550));
        assert_eq!(w.lost(&id("a"), ms(5000)), Seen::default());
    }

    #[test]
    fn losing_a_device_that_does_not_serve_is_no_failover() {
        let mut w = ServerWatch::new();
        w.server(Some((&id("a"), term(1))), ms(0));
        assert_eq!(w.lost(&id("c"), ms(300)), Seen::default());
        let seen = w.server(Some((&id("a"), term(4))), ms(400));
        assert!(seen.changed, "a new term is a change");
        assert_eq!(seen.failover, None);
    }
}
