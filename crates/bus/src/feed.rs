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

use async_nats::Client;
use understudy_protocol::messages::ElectionState;
use understudy_protocol::{DeviceId, GroupName, InstanceId, subjects};

use crate::follow::LocalElection;
use crate::inbox::{Inbox, SubscribeError};

/// This device's election states, from the one election service followed.
#[derive(Debug)]
pub struct ElectionFeed {
    inbox: Inbox<ElectionState>,
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

    /// Whether a sibling service's local message tagged with `tag` belongs
    /// with this device (see [`LocalElection::is_followed`]).
    pub fn is_followed(&self, tag: Option<InstanceId>) -> bool {
        self.local.is_followed(tag)
    }
}
