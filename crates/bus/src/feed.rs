//! The local election feed: this device's election state, as every other
//! service of the device hears it.
//!
//! A device's election service publishes its state on
//! `understudy.<group>.local.<device>.election` four times a second and on
//! every change. Heartbeat, discovery and project-sync all need it, and all
//! need the same care with it: keep only this device's state, and only that
//! of the one election service they follow (a second process with this
//! device id hears the same subject, B2). An [`ElectionFeed`] is that
//! subscription and that care, once: [`ElectionFeed::next`] yields only the
//! states that [`LocalElection`] accepts.

use std::time::Instant;

use async_nats::{Client, Message, Subscriber};
use futures::Stream;
use understudy_protocol::messages::ElectionState;
use understudy_protocol::{DeviceId, GroupName, InstanceId, subjects};

use crate::follow::LocalElection;
use crate::inbox::{Inbox, SubscribeError};

/// This device's election states, from the one election service followed.
#[derive(Debug)]
pub struct ElectionFeed<S = Subscriber> {
    inbox: Inbox<ElectionState, S>,
    local: LocalElection,
}

impl ElectionFeed {
    /// Subscribes to the election state of `device` in `group`. `pinned` is
    /// the device's election service instance when it runs in this process:
    /// only its state is taken. `None` (the services run apart): the first
    /// election service to report is followed, and another only once that one
    /// falls silent (see [`ElectionFollower`](crate::ElectionFollower)).
    pub async fn subscribe(
        client: &Client,
        group: &GroupName,
        device: &DeviceId,
        pinned: Option<InstanceId>,
    ) -> Result<Self, SubscribeError> {
        Ok(Self {
            inbox: Inbox::subscribe(client, subjects::local_election(group, device)).await?,
            local: LocalElection::new(group.clone(), device.clone(), pinned),
        })
    }
}

impl<S: Stream<Item = Message> + Unpin> ElectionFeed<S> {
    /// Reads `stream` as the election states of `device` in `group` (see
    /// [`ElectionFeed::subscribe`]).
    pub fn from_stream(
        stream: S,
        group: &GroupName,
        device: &DeviceId,
        pinned: Option<InstanceId>,
    ) -> Self {
        Self {
            inbox: Inbox::from_stream(subjects::local_election(group, device), stream),
            local: LocalElection::new(group.clone(), device.clone(), pinned),
        }
    }

    /// The next state of this device's followed election service. Never
    /// ends; cancel-safe.
    pub async fn next(&mut self) -> ElectionState {
        loop {
            let state = self.inbox.next().await;
            if self.local.accept(&state, Instant::now()) {
                return state;
            }
        }
    }

    /// The election service followed, if any has reported yet (see
    /// [`LocalElection::followed`]).
    pub fn followed(&self) -> Option<InstanceId> {
        self.local.followed()
    }

    /// Whether this device's election service is live at `now` (see
    /// [`LocalElection::is_live`]).
    pub fn is_live(&self, now: Instant) -> bool {
        self.local.is_live(now)
    }

    /// When the last state was yielded, if any was.
    pub fn heard_at(&self) -> Option<Instant> {
        self.local.heard_at()
    }

    /// Whether a sibling service's local message tagged with `tag` belongs
    /// with this device (see [`LocalElection::is_followed`]).
    pub fn is_followed(&self, tag: Option<InstanceId>) -> bool {
        self.local.is_followed(tag)
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, stream};
    use understudy_protocol::messages::encode;
    use understudy_protocol::{Mac, Role, SCHEMA_VERSION, Score, Term};

    use super::*;

    fn state(device: &str, instance: u64, score: u8) -> Message {
        let payload = encode(&ElectionState {
            schema: SCHEMA_VERSION,
            group: "g".parse().expect("valid group"),
            device: device.parse().expect("valid device"),
            instance: InstanceId::new(instance),
            mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
            score: Score::new(score),
            online: true,
            role: Role::Client,
            term: Term::ZERO,
            in_grace: false,
            server: None,
        });
        crate::inbox::test_message("understudy.g.local.me.election", payload, None)
    }

    #[tokio::test]
    async fn the_feed_yields_only_the_followed_election_service_of_this_device() {
        let heard = vec![
            state("other", 5, 1),
            state("me", 1, 10),
            state("me", 2, 200), // a twin process with this device id
            state("me", 1, 11),
        ];
        let (group, device) = ("g".parse().expect("valid"), "me".parse().expect("valid"));
        let mut feed = ElectionFeed::from_stream(stream::iter(heard), &group, &device, None);
        assert_eq!(feed.followed(), None);
        let first = feed.next().await;
        assert_eq!(
            (first.instance, first.score),
            (InstanceId::new(1), Score::new(10))
        );
        assert_eq!(feed.followed(), Some(InstanceId::new(1)));
        assert_eq!(
            feed.next().await.score,
            Score::new(11),
            "the twin is skipped"
        );
        assert!(feed.is_followed(Some(InstanceId::new(1))));
        assert!(!feed.is_followed(Some(InstanceId::new(2))));
        assert!(feed.next().now_or_never().is_none(), "waits for more");
    }
}
