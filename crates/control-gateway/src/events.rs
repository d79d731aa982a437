//! A group's events for one subscriber, from the JetStream stream
//! `UNDERSTUDY_EVENTS` (docs/bus.md), with the stream sequence as the id.
//!
//! Resuming is exact because one ordered consumer reads the group's subjects
//! (`understudy.<g>.events.>`) in stream order from the right place: `after=N`
//! starts at sequence N+1, so a late subscriber gets precisely the events it
//! missed and then the live ones, without a gap or a duplicate. If the
//! consumer fails (the bus went away), it is made again from the sequence
//! after the last event delivered, so the subscriber still sees each event
//! once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::debug;
use understudy_protocol::{GroupName, subjects};

/// How many past events a subscriber gets when it says neither `after` nor
/// `last`.
pub const DEFAULT_LAST: u64 = 20;

/// How long to wait before trying again when the stream is not there yet or
/// the consumer failed.
const RETRY: Duration = Duration::from_secs(1);

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every event with an id (stream sequence) above this one, then live.
    After(u64),
    /// The last this-many events of the group, then live.
    Last(u64),
}

impl Start {
    /// From the request: `after` (or `Last-Event-ID`) wins over `last`.
    pub fn from_request(after: Option<u64>, last: Option<u64>) -> Start {
        match after {
            Some(n) => Start::After(n),
            None => Start::Last(last.unwrap_or(DEFAULT_LAST)),
        }
    }
}

/// One event as subscribers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// The JetStream stream sequence: increasing, the resume point.
    pub id: u64,
    /// `election` or `project` (the last token of the subject).
    pub kind: String,
    /// The bus message, as published.
    pub event: Value,
}

impl FeedEvent {
    /// `{"id":N,"type":…,"event":{…}}`, a WebSocket frame or a TCP event.
    pub fn frame(&self) -> Value {
        json!({ "id": self.id, "type": self.kind, "event": self.event })
    }
}

/// Starts reading `group`'s events from `start`; they arrive on the returned
/// channel until it is dropped or `shutdown` turns true.
pub fn subscribe(
    js: jetstream::Context,
    group: GroupName,
    start: Start,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<FeedEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(feed(js, group, start, tx, shutdown));
    rx
}

/// One client following an event stream, for
/// `understudy_gateway_event_subscribers`, while it lives.
struct Following;

impl Following {
    fn new() -> Self {
        understudy_telemetry::metrics().gateway_subscribers().inc();
        Following
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        understudy_telemetry::metrics().gateway_subscribers().dec();
    }
}

async fn feed(
    js: jetstream::Context,
    group: GroupName,
    mut start: Start,
    tx: mpsc::Sender<FeedEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _following = Following::new();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = understudy_bus::stopped(&mut shutdown) => return,
            _ = follow(&js, &group, &mut start, &tx) => {}
        }
        // The stream is not there yet, or the consumer failed: try again
        // from where we are.
        tokio::select! {
            _ = tx.closed() => return,
            _ = understudy_bus::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Reads events into `tx` until something fails; `start` is moved past every
/// event delivered.
async fn follow(
    js: &jetstream::Context,
    group: &GroupName,
    start: &mut Start,
    tx: &mpsc::Sender<FeedEvent>,
) {
    let stream = match js.get_stream(subjects::EVENTS_STREAM).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%group, error = %e, "no event stream yet");
            return;
        }
    };
    let (deliver_policy, skip_while_pending) = match *start {
        Start::After(n) => (
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: n.saturating_add(1),
            },
            None,
        ),
        Start::Last(0) => (consumer::DeliverPolicy::New, None),
        // The last K: read the group's events from the first and skip while
        // K or more are still to come.
        Start::Last(k) => (consumer::DeliverPolicy::All, Some(k)),
    };
    let consumer = match stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::group_events(group),
            deliver_policy,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => {
            debug!(%group, error = %e, "cannot create an events consumer");
            return;
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            debug!(%group, error = %e, "cannot read the events stream");
            return;
        }
    };
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                debug!(%group, error = %e, "reading the events stream failed");
                return;
            }
        };
        let Ok(info) = msg.info() else {
            continue;
        };
        let id = info.stream_sequence;
        if skip_while_pending.is_some_and(|k| info.pending >= k) {
            continue;
        }
        *start = Start::After(id);
        let kind = subjects::event_type(msg.subject.as_str())
            .unwrap_or_default()
            .to_owned();
        let event = match serde_json::from_slice::<Value>(&msg.payload) {
            Ok(v) => v,
            Err(e) => {
                debug!(%group, id, error = %e, "skipping an event that is not JSON");
                continue;
            }
        };
        if tx.send(FeedEvent { id, kind, event }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_wins_over_last() {
        assert_eq!(Start::from_request(Some(7), Some(3)), Start::After(7));
        assert_eq!(Start::from_request(None, Some(3)), Start::Last(3));
        assert_eq!(Start::from_request(None, None), Start::Last(DEFAULT_LAST));
    }

    #[test]
    fn a_frame_carries_id_type_and_event() {
        let e = FeedEvent {
            id: 4,
            kind: "election".into(),
            event: json!({"type": "server_elected"}),
        };
        assert_eq!(
            e.frame(),
            json!({"id": 4, "type": "election", "event": {"type": "server_elected"}})
        );
    }
}
