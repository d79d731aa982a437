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
//! subject.

use std::marker::PhantomData;

use async_nats::{Client, Message, Subject, Subscriber};
use futures::StreamExt;
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
pub struct Subscription {
    subject: String,
    sub: Option<Subscriber>,
}

impl Subscription {
    /// Subscribes to `subject` (wildcards allowed).
    pub async fn subscribe(
        client: &Client,
        subject: impl Into<String>,
    ) -> Result<Self, SubscribeError> {
        let subject = subject.into();
        match client.subscribe(subject.clone()).await {
            Ok(sub) => Ok(Self {
                subject,
                sub: Some(sub),
            }),
            Err(source) => Err(SubscribeError { subject, source }),
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
pub struct Inbox<M> {
    raw: Subscription,
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
