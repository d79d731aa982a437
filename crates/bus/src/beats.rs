//! One subscription to a group's heartbeats for every service of a process.
//!
//! A device process runs its heartbeat, election and discovery services side
//! by side, and each needs every heartbeat of the group. Subscribed one by
//! one, nats-server delivers each beat three times to the same connection
//! and the process decodes it three times: at N devices the group handles
//! 3 N² deliveries a second per beat cadence (docs/BENCHMARKS.md, "Scale").
//! [`SharedBeats`] subscribes once, decodes each beat once (bad ones are
//! dropped, as an [`Inbox`] does) and hands it to every service through an
//! in-process broadcast; each service holds a [`Beats`], which is either
//! that share or a subscription of its own (a service run alone, a test).
//!
//! A service that falls more than [`SHARED_BEATS_CAPACITY`] beats behind
//! loses the oldest (as a slow NATS subscriber would), with a warning that
//! says how many; its failure detector treats them as beats not heard.

use std::sync::Arc;

use async_nats::Client;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::warn;
use understudy_protocol::messages::Heartbeat;

use crate::inbox::{Inbox, SubscribeError};

/// How many beats a service may fall behind the shared subscription before
/// it loses the oldest: about 4 s of a 200-device group's beats at 1 s
/// client cadence (plus the server's 10 a second), far more than a live
/// service ever lags.
pub const SHARED_BEATS_CAPACITY: usize = 1024;

/// A group's heartbeats, subscribed once and shared by the services of one
/// process (module docs). Cloning shares the same subscription; the
/// subscription ends when the last clone and every [`Beats`] made from it
/// are dropped, or when the client closes.
#[derive(Debug, Clone)]
pub struct SharedBeats {
    subject: String,
    tx: broadcast::Sender<Arc<Heartbeat>>,
    _task: Arc<AbortOnDrop>,
}

/// Two shares are equal when they are the same subscription (so that the
/// services' configurations, which hold one, can still be compared).
impl PartialEq for SharedBeats {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self._task, &other._task)
    }
}

impl Eq for SharedBeats {}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SharedBeats {
    /// Subscribes to `subject` (a group's heartbeats,
    /// `understudy_protocol::subjects::heartbeats`) once for every
    /// [`Beats`] made with [`SharedBeats::beats`].
    pub async fn subscribe(
        client: &Client,
        subject: impl Into<String>,
    ) -> Result<Self, SubscribeError> {
        let subject = subject.into();
        let inbox = Inbox::<Heartbeat>::subscribe(client, subject.clone()).await?;
        Ok(Self::from_inbox(inbox))
    }

    /// Shares the beats of `inbox` (how it is tested without a server).
    pub fn from_inbox<S>(mut inbox: Inbox<Heartbeat, S>) -> Self
    where
        S: futures::Stream<Item = async_nats::Message> + Unpin + Send + 'static,
    {
        let subject = inbox.subject().to_owned();
        let (tx, _) = broadcast::channel(SHARED_BEATS_CAPACITY);
        let sender = tx.clone();
        let task = tokio::spawn(async move {
            loop {
                let beat = inbox.next().await;
                // No receiver yet (the services are still subscribing) or
                // none left: the beat is for nobody, and that is fine.
                let _ = sender.send(Arc::new(beat));
            }
        });
        Self {
            subject,
            tx,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// A new reader of the shared beats: it gets every beat that arrives
    /// from now on.
    pub fn beats(&self) -> Beats {
        Beats {
            subject: self.subject.clone(),
            source: Source::Shared {
                rx: self.tx.subscribe(),
                _keep: self.clone(),
            },
        }
    }
}

/// The heartbeats a service reads: its own subscription or a reader of a
/// [`SharedBeats`]. Never ends, like an [`Inbox`]; cancel-safe.
#[derive(Debug)]
pub struct Beats {
    subject: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Own(Inbox<Heartbeat>),
    Shared {
        rx: broadcast::Receiver<Arc<Heartbeat>>,
        _keep: SharedBeats,
    },
}

impl Beats {
    /// Reads `shared` if given, else subscribes to `subject` itself.
    pub async fn subscribe(
        client: &Client,
        subject: impl Into<String>,
        shared: Option<&SharedBeats>,
    ) -> Result<Self, SubscribeError> {
        match shared {
            Some(shared) => Ok(shared.beats()),
            None => {
                let subject = subject.into();
                Ok(Self {
                    source: Source::Own(Inbox::subscribe(client, subject.clone()).await?),
                    subject,
                })
            }
        }
    }

    /// The subject the beats come from.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next heartbeat. If the shared subscription is gone (it cannot
    /// be while this reader holds it), waits forever.
    pub async fn next(&mut self) -> Arc<Heartbeat> {
        match &mut self.source {
            Source::Own(inbox) => Arc::new(inbox.next().await),
            Source::Shared { rx, .. } => loop {
                match rx.recv().await {
                    Ok(beat) => return beat,
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        warn!(subject = %self.subject, lost, "fell behind the group's heartbeats; the oldest were dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use understudy_protocol::messages;
    use understudy_protocol::{InstanceId, Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term};

    use super::*;

    fn beat(device: &str) -> Heartbeat {
        Heartbeat {
            schema: SCHEMA_VERSION,
            group: "stage".parse().expect("group"),
            device: device.parse().expect("device id"),
            instance: InstanceId::new(1),
            mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
            score: Score::new(10),
            online: true,
            role: Role::Client,
            term: Term::ZERO,
            in_grace: false,
            colour: StatusColour::Blue,
            problems: Vec::new(),
            seq: 1,
            interval_ms: 1000,
            sent_at_ms: 1_700_000_000_000,
        }
    }

    fn message(payload: Vec<u8>) -> async_nats::Message {
        crate::inbox::test_message("understudy.stage.heartbeat.x", payload, None)
    }

    type Feed = futures::channel::mpsc::UnboundedSender<async_nats::Message>;

    fn shared(subject: &str) -> (Feed, SharedBeats) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, SharedBeats::from_inbox(Inbox::from_stream(subject, rx)))
    }

    #[tokio::test]
    async fn every_reader_gets_every_good_beat_once_and_bad_ones_are_dropped() {
        let (tx, shared) = shared("understudy.stage.heartbeat.*");
        let mut a = shared.beats();
        let mut b = shared.beats();
        for m in [
            message(messages::encode(&beat("dev-1"))),
            message(b"not json".to_vec()),
            message(messages::encode(&beat("dev-2"))),
        ] {
            tx.unbounded_send(m).expect("send");
        }
        for reader in [&mut a, &mut b] {
            assert_eq!(reader.next().await.device.as_str(), "dev-1");
            assert_eq!(reader.next().await.device.as_str(), "dev-2");
            assert!(reader.next().now_or_never().is_none(), "nothing more");
        }
        assert_eq!(a.subject(), "understudy.stage.heartbeat.*");
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_loses_the_oldest_and_goes_on() {
        let (tx, shared) = shared("s");
        let mut slow = shared.beats();
        let mut marker = shared.beats();
        let total = SHARED_BEATS_CAPACITY + 10;
        for i in 0..total {
            tx.unbounded_send(message(messages::encode(&beat(&format!("dev-{i}")))))
                .expect("send");
        }
        // Once another reader has seen the last beat, all were forwarded.
        let last = format!("dev-{}", total - 1);
        while marker.next().await.device.as_str() != last {}
        // The slow reader lost the 10 oldest and reads on from there.
        assert_eq!(slow.next().await.device.as_str(), "dev-10");
        assert_eq!(slow.next().await.device.as_str(), "dev-11");
    }

    #[tokio::test]
    async fn the_subscription_lives_as_long_as_a_reader_does() {
        let (tx, shared) = shared("s");
        let mut reader = shared.beats();
        drop(shared);
        tx.unbounded_send(message(messages::encode(&beat("dev-1"))))
            .expect("the forwarder still reads");
        assert_eq!(reader.next().await.device.as_str(), "dev-1");
    }
}
