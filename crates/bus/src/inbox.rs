//! Subscriptions that a driver's loop can wait on forever.
//!
//! A driver waits on several subjects at once in one `select!` and must go
//! on until it is told to stop. So a subscription here never ends the loop:
//!
//! - [`Subscription`] yields raw messages; when the client is closed and the
//!   subscription ends, it warns once, naming the subject, and then waits
//!   forever, so the loop's other branches (the shutdown first) still run;
//! - [`Inbox`] decodes each message as one bus message type; a bad one is
//!   logged at debug level and dropped, never returned (network input must
//!   not stop a service).
//!
//! Both `next` methods are cancel-safe: a message is lost only if it was bad.
//! Only subscribing can fail, at start, with a [`SubscribeError`] naming the
//! subject. Both also wrap any stream of messages ([`Subscription::from_stream`],
//! [`Inbox::from_stream`]), which is how they are tested without a server.

use std::marker::PhantomData;

use async_nats::{Client, Message, Subject, Subscriber};
use futures::{Stream, StreamExt};
use tracing::warn;
use understudy_protocol::messages::BusMessage;

use crate::decoded;

/// A subscription could not be made (the client is closed, or the server
/// refused the subject).
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to {subject}: {source}")]
pub struct SubscribeError {
    /// The subject refused.
    pub subject: String,
    /// Why.
    #[source]
    pub source: async_nats::SubscribeError,
}

/// Raw messages of one subject; never ends (module docs).
#[derive(Debug)]
pub struct Subscription<S = Subscriber> {
    subject: String,
    sub: Option<S>,
}

impl Subscription {
    /// Subscribes to `subject` (wildcards allowed).
    pub async fn subscribe(
        client: &Client,
        subject: impl Into<String>,
    ) -> Result<Self, SubscribeError> {
        let subject = subject.into();
        match client.subscribe(subject.clone()).await {
            Ok(sub) => Ok(Self::from_stream(subject, sub)),
            Err(source) => Err(SubscribeError { subject, source }),
        }
    }

    /// Subscribes to `subject` in the NATS queue group `queue`: each message
    /// goes to one member of the group only.
    pub async fn queue_subscribe(
        client: &Client,
        subject: impl Into<String>,
        queue: impl Into<String>,
    ) -> Result<Self, SubscribeError> {
        let subject = subject.into();
        match client.queue_subscribe(subject.clone(), queue.into()).await {
            Ok(sub) => Ok(Self::from_stream(subject, sub)),
            Err(source) => Err(SubscribeError { subject, source }),
        }
    }
}

impl<S: Stream<Item = Message> + Unpin> Subscription<S> {
    /// Reads `stream` as the messages of `subject`.
    pub fn from_stream(subject: impl Into<String>, stream: S) -> Self {
        Self {
            subject: subject.into(),
            sub: Some(stream),
        }
    }

    /// The subject subscribed to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message. If the subscription ends (the client was closed),
    /// warns once and waits forever.
    pub async fn next(&mut self) -> Message {
        if let Some(sub) = &mut self.sub {
            if let Some(msg) = sub.next().await {
                return msg;
            }
            warn!(subject = %self.subject, "subscription ended (the client was closed)");
            self.sub = None;
        }
        std::future::pending().await
    }
}

/// Messages of type `M` on one subject, decoded; bad ones are dropped and
/// the inbox never ends (module docs).
#[derive(Debug)]
pub struct Inbox<M, S = Subscriber> {
    raw: Subscription<S>,
    kind: PhantomData<fn() -> M>,
}

/// A decoded request and where to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<M> {
    /// The request.
    pub message: M,
    /// The subject to reply on; `None` if the sender expects no answer.
    pub reply: Option<Subject>,
}

impl<M: BusMessage> Inbox<M> {
    /// Subscribes to `subject` (wildcards allowed) for messages of type `M`.
    pub async fn subscribe(
        client: &Client,
        subject: impl Into<String>,
    ) -> Result<Self, SubscribeError> {
        Ok(Self {
            raw: Subscription::subscribe(client, subject).await?,
            kind: PhantomData,
        })
    }
}

impl<M: BusMessage, S: Stream<Item = Message> + Unpin> Inbox<M, S> {
    /// Reads `stream` as the messages of `subject`.
    pub fn from_stream(subject: impl Into<String>, stream: S) -> Self {
        Self {
            raw: Subscription::from_stream(subject, stream),
            kind: PhantomData,
        }
    }

    /// The subject subscribed to.
    pub fn subject(&self) -> &str {
        self.raw.subject()
    }

    /// The next message that decodes as an `M`.
    pub async fn next(&mut self) -> M {
        self.next_request().await.message
    }

    /// The next message that decodes as an `M`, with its reply subject.
    pub async fn next_request(&mut self) -> Request<M> {
        loop {
            let msg = self.raw.next().await;
            if let Some(message) = decoded::<M>(&msg) {
                return Request {
                    message,
                    reply: msg.reply,
                };
            }
        }
    }
}

/// A message as the client would yield it, for the crate's tests.
#[cfg(test)]
pub(crate) fn test_message(subject: &str, payload: Vec<u8>, reply: Option<&str>) -> Message {
    Message {
        subject: subject.into(),
        reply: reply.map(Subject::from),
        length: payload.len(),
        payload: payload.into(),
        headers: None,
        status: None,
        description: None,
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, stream};
    use understudy_protocol::messages::{self, Trigger};

    use super::*;

    fn message(payload: Vec<u8>, reply: Option<&str>) -> Message {
        test_message("understudy.g.trigger", payload, reply)
    }

    fn trigger(by: &str) -> Trigger {
        Trigger {
            schema: understudy_protocol::SCHEMA_VERSION,
            by: Some(by.to_owned()),
            force: false,
        }
    }

    #[tokio::test]
    async fn an_inbox_drops_bad_messages_and_returns_the_next_good_one() {
        let sent = vec![
            message(b"not json".to_vec(), None),
            message(br#"{"schema":1,"by":7}"#.to_vec(), None),
            message(br#"{"schema":999}"#.to_vec(), None),
            message(messages::encode(&trigger("rig")), Some("_INBOX.1")),
        ];
        let mut inbox: Inbox<Trigger, _> = Inbox::from_stream("t", stream::iter(sent));
        let request = inbox.next_request().await;
        assert_eq!(request.message, trigger("rig"));
        assert_eq!(request.reply, Some(Subject::from("_INBOX.1")));
    }

    #[tokio::test]
    async fn an_ended_subscription_waits_instead_of_ending_the_loop() {
        let mut sub = Subscription::from_stream("t", stream::iter(vec![message(vec![], None)]));
        assert_eq!(sub.subject(), "t");
        sub.next().await;
        assert!(
            sub.next().now_or_never().is_none(),
            "nothing more, and no end either"
        );
        assert!(sub.next().now_or_never().is_none(), "still waiting");
    }
}
